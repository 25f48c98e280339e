"""The cost model of SACVIT.md section 6, counted on the real modules.

FLOPs are counted with torch.utils.flop_counter on the model's own forward functions at
batch 1 and reported in the ViT literature's convention (DeiT-S = 4.6 "GFLOPs"), which counts
a multiply-accumulate once: GFLOPs here = flop_counter's count / 2 / 1e9.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import SACViT, VisionTransformer, attention_impl


def _count(module: torch.nn.Module, fn, *args) -> float:
    with torch.no_grad(), attention_impl("explicit", module), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2 / 1e9


def deit_gflops(model: VisionTransformer) -> float:
    cfg = model.cfg
    return _count(model, model.__class__.forward if not isinstance(model, SACViT) else VisionTransformer.forward,
                  model, torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size))


def ee_gflops(model: SACViT) -> float:
    cfg = model.cfg
    return _count(model, model.forward_ee, torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size))


def sac_gflops(model: SACViT, k: int) -> float:
    """FLOPs of the SAC stage for one image with k target tokens."""
    cfg = model.cfg
    n, d = cfg.num_coarse, cfg.embed_dim
    order = torch.arange(n).unsqueeze(0)
    patches = torch.zeros(1, 4 * k, cfg.in_chans * cfg.patch_size**2)
    return _count(model, model.forward_sac, patches, order[:, :k], order[:, k:], torch.zeros(1, n, d), torch.zeros(1, n, d))


class CostModel:
    """Expected FLOPs per image = F_ee + (1 - exit_rate) * E[F_sac(k)]."""

    def __init__(self, model: VisionTransformer) -> None:
        self.model = model
        self.is_sac = isinstance(model, SACViT)
        self.full = deit_gflops(model)  # the same backbone at full resolution, no stages
        self.ee = ee_gflops(model) if self.is_sac else self.full
        self._sac = lru_cache(maxsize=None)(lambda k: sac_gflops(model, int(k)))

    def sac(self, k: int) -> float:
        return self._sac(int(k))

    def expected(self, exited: Sequence[bool] | np.ndarray, counts: Sequence[int] | np.ndarray) -> float:
        """Mean GFLOPs per image given per-image exit flags and target counts."""
        if not self.is_sac:
            return self.full
        exited = np.asarray(exited, bool)
        counts = np.asarray(counts)
        sac = [self.sac(k) for k in counts[~exited]]
        return self.ee + float(np.sum(sac)) / max(len(exited), 1)
