"""Export directories: ee.onnx + sac.onnx + model.pt + manifest.json, written atomically.

The manifest is the contract between the exporter and every runtime: it says what the
engines accept (batch range, target-count range), how to feed them (input size,
normalisation), how to select targets (the model config) and what they were made from
(checkpoint fingerprint, torch/onnx versions, file hashes, so a corrupted or swapped engine
is refused before it runs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from sacvit_edge.checkpoint import Checkpoint, load_checkpoint
from sacvit_edge.config import ModelConfig
from sacvit_edge.errors import ConfigError, ExportError

from .torch2onnx import EE_INPUTS, EE_OUTPUTS, SAC_INPUTS, SAC_OUTPUTS, Exporter, export_stages

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sacvit-edge-export"
MANIFEST_VERSION = 2  # 2: SAC engine takes target patches and keep masks
ENGINE_FILES = ("ee.onnx", "sac.onnx")


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.json."""

    directory: Path
    data: dict[str, Any]

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.data["model_config"])

    @property
    def class_names(self) -> list[str]:
        return list(self.data["class_names"])

    @property
    def fingerprint(self) -> str:
        return self.data["checkpoint_fingerprint"]

    @property
    def size(self) -> int:
        return int(self.data["input"]["size"])

    @property
    def mean(self) -> list[float]:
        return list(self.data["input"]["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.data["input"]["std"])

    @property
    def eta(self) -> float:
        return float(self.data["eta"])

    @property
    def k_range(self) -> tuple[int, int]:
        lo, hi = self.data["engines"]["sac"]["k_range"]
        return int(lo), int(hi)

    @property
    def batch_range(self) -> tuple[int, int]:
        lo, hi = self.data["engines"]["ee"]["batch_range"]
        return int(lo), int(hi)

    def path(self, name: str) -> Path:
        return self.directory / name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def token_range(cfg: ModelConfig) -> tuple[int, int]:
    """The target counts the SAC engine must accept for the config's selection rule."""
    if cfg.selection == "sac":
        return cfg.k_min, cfg.k_max
    if cfg.selection == "topalpha":
        import math

        k = math.ceil(cfg.alpha * cfg.num_coarse)
        return k, k
    return cfg.window**2, cfg.window**2


def export_checkpoint(checkpoint: str | Path | Checkpoint, out_dir: str | Path, *, opset: int = 17,
                      batch_max: int = 64, k_min: int | None = None, k_max: int | None = None,
                      exporter: Exporter = "torchscript", overwrite: bool = True) -> Manifest:
    """Export model.pt into an engine directory; returns its manifest.

    The directory is assembled in a temporary sibling and renamed into place, so an
    interrupted export never leaves a directory that loads.

    Args:
        checkpoint: path of model.pt, or a loaded Checkpoint.
        out_dir: directory to create (replaced if it exists and overwrite is True).
        opset: ONNX opset (17 by default; see torch2onnx for why).
        batch_max: largest batch the engines are declared (and, for TensorRT, built) for.
        k_min, k_max: override the checkpoint's clamp of the target count.
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
    try:
        meta = {"sacvit_edge.checkpoint_fingerprint": ckpt.fingerprint,
                "sacvit_edge.manifest_version": str(MANIFEST_VERSION)}
        export_stages(model, tmp, opset=opset, exporter=exporter, metadata=meta)
        shutil.copyfile(ckpt.path, tmp / "model.pt")  # the PyTorch reference backend runs from it
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
            "files": {name: _sha256(tmp / name) for name in (*ENGINE_FILES, "model.pt")},
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


def read_manifest(directory: str | Path, verify_files: bool = True) -> Manifest:
    """Parse and validate DIR/manifest.json.

    Raises:
        ExportError: missing or incomplete directory, unreadable manifest, another format or a
            newer version, or engine files whose hashes differ from the manifest's.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ExportError(f"{directory}: not an export directory (run `sacvit-edge export model.pt -o {directory}`)")
    if not path.is_file():
        raise ExportError(f"{directory}: incomplete export, {MANIFEST} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: corrupt manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path}: not a sacvit-edge export manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version != MANIFEST_VERSION:
        age = "a newer" if isinstance(version, int) and version > MANIFEST_VERSION else "an older"
        raise ExportError(f"{path}: format version {version!r} was written by {age} sacvit-edge; this one reads "
                          f"version {MANIFEST_VERSION}. Re-export the checkpoint with this version")
    for key in ("checkpoint_fingerprint", "class_names", "input", "eta", "model_config", "engines", "files"):
        if key not in data:
            raise ExportError(f"{path}: manifest lacks {key!r}")
    try:
        ModelConfig.from_dict(data["model_config"])
    except (ConfigError, TypeError) as exc:
        raise ExportError(f"{path}: invalid model_config: {exc}") from exc
    if verify_files:
        for name, digest in data["files"].items():
            file = directory / name
            if not file.is_file():
                raise ExportError(f"{directory}: incomplete export, {name} is missing")
            if _sha256(file) != digest:
                raise ExportError(f"{file}: contents do not match the manifest (corrupted or replaced engine); re-export")
    return Manifest(directory=directory, data=data)
