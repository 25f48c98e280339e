"""PyTorch eager backend (CPU or CUDA): the numerical reference for the other backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sacvit_edge.errors import BackendError

from .base import BackendBase, EEResult, cpu_name


class TorchBackend(BackendBase):
    name = "pytorch"

    def __init__(self, checkpoint: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        from sacvit_edge.checkpoint import load_checkpoint
        from sacvit_edge.model import SACViT

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("backend 'pytorch' on cuda: no CUDA GPU is visible to PyTorch")
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads or torch.get_num_threads()
        self.model = load_checkpoint(checkpoint).model.to(device).eval()
        if not isinstance(self.model, SACViT):
            raise BackendError(f"{checkpoint} is a {self.model.cfg.arch} model, not SAC-ViT")
        self._device = torch.device(device)

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self._device)

    @torch.inference_mode()
    def run_ee(self, image: np.ndarray) -> EEResult:
        out = self.model.forward_ee(self._t(image))
        return EEResult(*(t.float().cpu().numpy() for t in (out.logits, out.gca, out.final, out.hidden)))

    @torch.inference_mode()
    def run_sac(self, patches, target_idx, nontarget_idx, final, hidden, target_keep, nontarget_keep) -> np.ndarray:
        out = self.model.forward_sac(self._t(patches), self._t(target_idx), self._t(nontarget_idx),
                                     self._t(final), self._t(hidden), self._t(target_keep), self._t(nontarget_keep))
        return out.float().cpu().numpy()

    def device(self) -> str:
        return torch.cuda.get_device_name(self._device) if self._device.type == "cuda" else cpu_name()

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device(), "threads": self.threads, "torch": torch.__version__}
