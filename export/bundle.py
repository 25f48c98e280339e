"""Export directories: ee.onnx + sac.onnx (+ model.pt) + manifest.json, written atomically.

The manifest (sacvit_edge.manifest, torch-free) is the contract between this exporter and
every runtime: what the engines accept (batch range, target-count range), how to feed them
(input size, normalisation), how to select targets (the model config) and what they were made
from (checkpoint fingerprint, torch/onnx versions, file hashes, so a corrupted or swapped
engine is refused before it runs).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sacvit_edge.extras import require_extra

require_extra("export", "exporting a checkpoint")

import onnx  # noqa: E402
import torch  # noqa: E402

from sacvit_edge.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from sacvit_edge.config import ModelConfig  # noqa: E402
from sacvit_edge.errors import ConfigError, ExportError  # noqa: E402
from sacvit_edge.manifest import (CHECKPOINT_FILE, ENGINE_FILES, MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION,  # noqa: E402
                                  Manifest, read_manifest, sha256_file)

from .torch2onnx import EE_INPUTS, EE_OUTPUTS, SAC_INPUTS, SAC_OUTPUTS, Exporter, export_stages  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["export_checkpoint", "token_range", "Manifest", "read_manifest"]


def token_range(cfg: ModelConfig) -> tuple[int, int]:
    """The target counts the SAC engine must accept for the config's selection rule."""
    if cfg.selection == "sac":
        return cfg.k_min, cfg.k_max
    if cfg.selection == "topalpha":
        import math

        k = math.ceil(cfg.alpha * cfg.num_coarse)
        return k, k
    return cfg.window**2, cfg.window**2


def _cost_section(model, k_lo: int, k_hi: int) -> dict:
    """GFLOPs the runtime reports without torch: EE, SAC at every k the engine accepts, full ViT."""
    from sacvit_edge.flops import CostModel

    cost = CostModel(model)
    return {"gflops_ee": cost.ee, "gflops_sac": {str(k): cost.sac(k) for k in range(k_lo, k_hi + 1)},
            "gflops_full_resolution": cost.full}


def export_checkpoint(checkpoint: str | Path | Checkpoint, out_dir: str | Path, *, opset: int = 17,
                      batch_max: int = 64, k_min: int | None = None, k_max: int | None = None,
                      exporter: Exporter = "torchscript", overwrite: bool = True,
                      include_checkpoint: bool = True) -> Manifest:
    """Export model.pt into an engine directory; returns its manifest.

    The directory is assembled in a temporary sibling and renamed into place, so an
    interrupted export never leaves a directory that loads.

    Args:
        checkpoint: path of model.pt, or a loaded Checkpoint.
        out_dir: directory to create (replaced if it exists and overwrite is True).
        opset: ONNX opset (17 by default; see torch2onnx for why).
        batch_max: largest batch the engines are declared (and, for TensorRT, built) for.
        k_min, k_max: override the checkpoint's clamp of the target count.
        include_checkpoint: copy model.pt into the directory (the PyTorch reference backend runs
            from it); without it the directory holds only what ONNX Runtime / TensorRT need.
    Raises:
        ExportError, CheckpointError, ConfigError.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if ckpt.path is None:
        raise ExportError("export needs a checkpoint loaded from a file (its fingerprint identifies the engines)")
    if batch_max < 1:
        raise ConfigError(f"batch_max={batch_max} must be >= 1")
    if opset < 17:
        raise ConfigError(f"opset={opset} is too old: LayerNormalization needs opset >= 17")
    cfg = ckpt.config
    model = ckpt.model
    if k_min is not None or k_max is not None:
        cfg = cfg.replace(k_min=k_min if k_min is not None else cfg.k_min, k_max=k_max if k_max is not None else cfg.k_max)
        model = copy.copy(model)  # same weights, new config; the caller's Checkpoint is left as it was
        model.cfg = cfg
    lo, hi = token_range(cfg) if cfg.arch == "sacvit" else (0, 0)
    if cfg.arch == "sacvit" and hi >= cfg.num_coarse:
        raise ConfigError(f"k_max={hi} leaves no non-target token ({cfg.num_coarse} coarse tokens); use k_max < {cfg.num_coarse}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} exists; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an export directory is meant to be shared and copied
    try:
        meta = {"sacvit_edge.checkpoint_fingerprint": ckpt.fingerprint,
                "sacvit_edge.manifest_version": str(MANIFEST_VERSION)}
        export_stages(model, tmp, opset=opset, exporter=exporter, metadata=meta)
        if include_checkpoint:
            shutil.copyfile(ckpt.path, tmp / CHECKPOINT_FILE)  # the PyTorch reference backend runs from it
        d = cfg.embed_dim
        n = cfg.num_coarse
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "checkpoint_fingerprint": ckpt.fingerprint,
            "class_names": ckpt.class_names,
            "input": {"size": ckpt.size, "mean": list(ckpt.mean), "std": list(ckpt.std), "layout": "NCHW float32 RGB"},
            "eta": ckpt.eta,
            "model_config": cfg.to_dict(),
            "clustering": {"selection": cfg.selection, "k_min": cfg.k_min, "k_max": cfg.k_max, "alpha": cfg.alpha,
                           "window": cfg.window, "attention": cfg.attention, "reuse_layer": cfg.reuse_layer},
            "engines": {
                "ee": {"file": "ee.onnx", "inputs": EE_INPUTS, "outputs": EE_OUTPUTS, "batch_range": [1, batch_max],
                       "shapes": {"ee_final": [None, n, d], "gca": [None, n]}},
                "sac": {"file": "sac.onnx", "inputs": SAC_INPUTS, "outputs": SAC_OUTPUTS, "batch_range": [1, batch_max],
                        "k_range": [lo, hi]},
            },
            "files": {name: sha256_file(tmp / name)
                      for name in (*ENGINE_FILES, *((CHECKPOINT_FILE,) if include_checkpoint else ()))},
            "cost": _cost_section(model, lo, hi) if cfg.arch == "sacvit" else None,
            "opset": opset,
            "exporter": exporter,
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s -> %s (k in [%d, %d])", ckpt.path, out_dir, lo, hi)
    return read_manifest(out_dir)
