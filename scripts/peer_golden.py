"""Make the golden fixture of an official peer (CF-ViT or LF-ViT) for tests/test_peer_golden.py.

Runs the OFFICIAL model code once, on a small model with random non-trivial weights, and saves
the weights, the input and the official outputs. The official code is not part of this project
and is not committed: point --source at a checkout of it (two files are needed:
deit/models_deit.py and utils.py), e.g. from the mirrors the project's tools fetch:

    git --git-dir=<mirror of ChenMnZ/CF-ViT> show HEAD:deit/models_deit.py > src/deit/models_deit.py
    git --git-dir=<mirror of ChenMnZ/CF-ViT> show HEAD:utils.py > src/utils.py
    .venv/bin/python scripts/peer_golden.py cf --source src --commit <sha> -o tests/fixtures/cfvit_golden.npz

The official files import a few timm helpers that play no part in inference (an init function,
a model registry, a DropPath that is the identity at rate 0) and call .cuda(); this script
provides those helpers and runs on the CPU. Everything the models compute is the official code.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GEOMETRY = dict(img=224, patch=16, embed_dim=64, depth=6, num_heads=2, num_classes=10, images=3)


def _install_timm_helpers() -> None:
    """Minimal stand-ins for the timm names the official model files import (not used in inference)."""
    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")

    class DropPath(nn.Identity):  # only built for drop_path > 0, which this script never uses
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = lambda t, std=1.0, **kw: nn.init.trunc_normal_(t, std=std)
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    for name, mod in (("timm", timm), ("timm.data", data), ("timm.models", models), ("timm.models.layers", layers),
                      ("timm.models.registry", registry)):
        sys.modules[name] = mod


def _cpu_only() -> None:
    """The official forward calls .cuda() / .to('cuda') on small index tensors; keep them on the CPU."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple(a for a in args if not (isinstance(a, torch.device) and a.type == "cuda") and a != "cuda")
        kwargs.pop("device", None) if str(kwargs.get("device", "")).startswith("cuda") else None
        return original_to(self, *args, **kwargs) if args or kwargs else self

    torch.Tensor.to = to  # type: ignore[method-assign]


def nontrivial_weights(model: nn.Module, seed: int) -> None:
    """Random weights far from init: LayerNorm scales away from 1, peaky attention, non-zero
    biases, so that the top-k selection is not decided by rounding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("reuse_block.0"):
                p.copy_((torch.rand(p.shape, generator=g) + 0.5) if name.endswith("weight")
                        else torch.randn(p.shape, generator=g) * 0.1)
            elif "qkv.weight" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.35)  # peaky attention
            elif "pos_embed" in name or "cls_token" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1]) ** 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=["cf", "lf"])
    ap.add_argument("--source", type=Path, required=True, help="folder with deit/models_deit.py and utils.py")
    ap.add_argument("--commit", default="unknown", help="the official repository's commit, recorded in the fixture")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    _install_timm_helpers()
    _cpu_only()
    sys.path.insert(0, str(args.source))
    import deit.models_deit as official  # noqa: E402  (the official file)

    g = GEOMETRY
    cls = official.CFVisionTransformer if args.method == "cf" else official.LFVisionTransformer
    model = cls(img_size_list=[g["img"] // 2, g["img"]], patch_size=g["patch"], num_classes=g["num_classes"],
                embed_dim=g["embed_dim"], depth=g["depth"], num_heads=g["num_heads"], mlp_ratio=4, qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6))
    nontrivial_weights(model, args.seed)
    model.eval()
    model.informative_selection = True
    rng = np.random.default_rng(args.seed)
    # float16-representable values: the fixture stores them exactly at half the size
    image = rng.standard_normal((g["images"], 3, g["img"], g["img"])).astype(np.float16).astype(np.float32)
    x = torch.from_numpy(image)
    coarse_input = F.interpolate(x, (g["img"] // 2, g["img"] // 2), mode="bilinear", align_corners=True)  # engine_deit.py
    with torch.no_grad():
        coarse_logits, fine_logits = model([coarse_input, x])
    fine_idx = model.important_index.numpy()  # (B, 4k) fine-grid indices of the selected regions
    fine_grid, coarse_grid = g["img"] // g["patch"], g["img"] // g["patch"] // 2
    coarse_idx = (fine_idx // fine_grid // 2) * coarse_grid + (fine_idx % fine_grid) // 2
    selected = np.stack([np.unique(row) for row in coarse_idx])
    state = {f"w/{k}": v.numpy() for k, v in model.state_dict().items()}
    meta = {"method": args.method, "official_commit": args.commit, "geometry": g, "seed": args.seed,
            "torch": torch.__version__, "made_by": "scripts/peer_golden.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, image=image.astype(np.float16), coarse_logits=coarse_logits.numpy(), fine_logits=fine_logits.numpy(),
                        selected=selected, meta=np.array(json.dumps(meta)), **state)
    print(f"wrote {args.out}: {len(state)} tensors, selected {selected.shape[1]} of {coarse_grid**2} per image")


if __name__ == "__main__":
    main()
