"""Export directories: ee.onnx + sac.onnx (+ ee.attention.onnx + sac.attention.onnx +
sac.unpadded.attention.onnx + frame.attention.onnx) (+ model.pt)
+ manifest.json, written atomically.

The manifest (sacvit_edge.manifest, torch-free) is the contract between this exporter and
every runtime: what the engines accept (batch range, target-count range), how to feed them
(input size, normalisation), how to select targets (the model config) and what they were made
from (checkpoint fingerprint, torch/onnx versions, file hashes, so a corrupted or swapped
engine is refused before it runs).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import math
import shutil
from pathlib import Path
from typing import Callable

from sacvit_edge.extras import require_extra

require_extra("export", "exporting a checkpoint")

import onnx  # noqa: E402
import torch  # noqa: E402

from sacvit_edge.checkpoint import Checkpoint, first_nonfinite, load_checkpoint  # noqa: E402
from sacvit_edge.errors import ConfigError, ExportError  # noqa: E402
from sacvit_edge.atomic import DirectoryLock, check_replaceable, publish_export, remove_temporary, staging_dir  # noqa: E402
from sacvit_edge.manifest import (ATTENTION_GRAPH_FILES, FRAME_FILE, UNPADDED_SAC_FILE, CHECKPOINT_FILE, ENGINE_FILES, FINGERPRINT_KEY, MANIFEST_DIGEST_KEY,  # noqa: E402
                                  MANIFEST_VERSION, STAGE_KEY, CostTable, Manifest, content_digest, manifest_content,
                                  read_manifest, sha256_file)

from .frame import compose_frame_graph, has_frame_graph  # noqa: E402
from .torch2onnx import Exporter, export_stages  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["export_checkpoint", "Manifest", "read_manifest"]


def _check_finite(ckpt: Checkpoint) -> None:
    """Refuse weights or normalisation that would make every answer NaN (checked at load too)."""
    bad = first_nonfinite(ckpt.model.state_dict())
    if bad:
        raise ExportError(f"{ckpt.path}: weight {bad!r} holds NaN or inf values; refusing to export it")
    if not all(math.isfinite(x) for x in (*ckpt.mean, *ckpt.std)) or min(ckpt.std) <= 0:
        raise ExportError(f"{ckpt.path}: input normalisation mean={ckpt.mean} std={ckpt.std} is not finite and positive")


def _cost_table(model, k_lo: int, k_hi: int) -> CostTable:
    """GFLOPs the runtime reports without torch: EE, SAC at every k the engine accepts, full ViT."""
    from sacvit_edge.flops import CostModel

    cost = CostModel(model)
    return CostTable(ee=cost.ee, sac={k: cost.sac(k) for k in range(k_lo, k_hi + 1)}, full=cost.full)


def export_checkpoint(checkpoint: str | Path | Checkpoint, out_dir: str | Path, *, opset: int = 17,
                      batch_max: int = 64, k_min: int | None = None, k_max: int | None = None,
                      exporter: Exporter = "torchscript", overwrite: bool = True, force: bool = False,
                      include_checkpoint: bool = True, on_wait: Callable[[str], None] | None = None,
                      locked: bool = False, attention_graphs: bool = True) -> Manifest:
    """Export model.pt into an engine directory; returns its manifest.

    The directory is assembled in a temporary sibling and renamed into place, so an
    interrupted export never leaves a directory that loads.

    Args:
        checkpoint: path of model.pt, or a loaded Checkpoint.
        out_dir: directory to create. An existing one is replaced (if overwrite is True) only when
            it is empty or an export directory this project wrote (atomic.check_replaceable);
            files a user put into it are kept.
        force: also replace a damaged export (a directory of nothing but this project's files).
        opset: ONNX opset (17 by default; see torch2onnx for why).
        batch_max: largest batch the engines are declared (and, for TensorRT, built) for.
        k_min, k_max: override the checkpoint's clamp of the target count.
        include_checkpoint: copy model.pt into the directory (the PyTorch reference backend runs
            from it); without it the directory holds only what ONNX Runtime / TensorRT need.
        on_wait: told when another process is writing out_dir and this one waits for it.
        locked: the caller already holds out_dir's DirectoryLock (calibrate --apply-k-range
            re-exports into the directory it is calibrating).
        attention_graphs: also write ee.attention.onnx / sac.attention.onnx (and the SAC stage without
            keep masks, sac.unpadded.attention.onnx, and the batch-1 frame graph composed from them,
            frame.attention.onnx: export/frame.py), the stages with the
            ONNX Attention operator (opset 23) that ONNX Runtime runs (torch2onnx); skipped with a
            warning where the dynamo exporter's onnxscript is not installed.
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
    lo, hi = cfg.target_range() if cfg.arch == "sacvit" else (0, 0)
    if cfg.arch == "sacvit" and hi >= cfg.num_coarse:
        raise ConfigError(f"k_max={hi} leaves no non-target token ({cfg.num_coarse} coarse tokens); use k_max < {cfg.num_coarse}")
    _check_finite(ckpt)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} exists; pass overwrite=True to replace it")
    check_replaceable(out_dir, sources=(ckpt.path,), force=force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a name too long
        raise ExportError(f"{out_dir}: cannot create the export's parent directory ({exc.strerror or exc})") from exc
    with contextlib.nullcontext() if locked else DirectoryLock(out_dir, on_wait):
        return _export(ckpt, model, cfg, out_dir, opset=opset, batch_max=batch_max, exporter=exporter, force=force,
                       include_checkpoint=include_checkpoint,
                       attention_graphs=attention_graphs and cfg.arch == "sacvit" and attention_op_exportable())


def attention_op_exportable() -> bool:
    """Whether this torch can write the ONNX Attention graphs (torch >= 2.8 and onnxscript)."""
    if importlib.util.find_spec("onnxscript") is None or not hasattr(torch.onnx, "ops"):
        log.warning("ee.attention.onnx / sac.attention.onnx not written: the ONNX Attention graphs need torch >= 2.8 "
                    "and onnxscript (pip install onnxscript); ONNX Runtime runs the opset-17 graphs instead")
        return False
    return True


def _export(ckpt: Checkpoint, model, cfg, out_dir: Path, *, opset: int, batch_max: int, exporter: Exporter,
            force: bool, include_checkpoint: bool, attention_graphs: bool) -> Manifest:
    lo, hi = cfg.target_range() if cfg.arch == "sacvit" else (0, 0)
    frame_graph = attention_graphs and has_frame_graph(cfg)
    cfg = cfg.replace(eta=ckpt.eta)  # the checkpoint's threshold, stored once: in model_config
    manifest = manifest_content(fingerprint=ckpt.fingerprint, class_names=ckpt.class_names, mean=ckpt.mean,
                                std=ckpt.std, config=cfg, batch_max=batch_max,
                                cost=_cost_table(model, lo, hi) if cfg.arch == "sacvit" else None, opset=opset,
                                exporter=exporter, versions={"torch": torch.__version__, "onnx": onnx.__version__},
                                attention_graphs=attention_graphs, frame_graph=frame_graph)
    tmp = staging_dir(out_dir)
    try:
        # the engines carry the checkpoint fingerprint and the digest of the manifest's content, so an
        # edited manifest or an engine from another export is refused at load (manifest.engine_problems)
        meta = {FINGERPRINT_KEY: ckpt.fingerprint, MANIFEST_DIGEST_KEY: content_digest(manifest),
                "sacvit_edge.manifest_version": str(MANIFEST_VERSION)}
        export_stages(model, tmp, opset=opset, exporter=exporter, metadata=meta)
        if attention_graphs:
            export_stages(model, tmp, attention="onnx", metadata=meta)
        if frame_graph:
            compose_frame_graph(tmp / ATTENTION_GRAPH_FILES[0], tmp / UNPADDED_SAC_FILE, cfg, tmp / FRAME_FILE,
                                metadata={STAGE_KEY: "frame", **meta})
        if include_checkpoint:
            shutil.copyfile(ckpt.path, tmp / CHECKPOINT_FILE)  # the PyTorch reference backend runs from it
        manifest["files"] = {name: sha256_file(tmp / name)
                             for name in (*ENGINE_FILES, *((*ATTENTION_GRAPH_FILES, UNPADDED_SAC_FILE) if attention_graphs else ()),
                                          *((FRAME_FILE,) if frame_graph else ()),
                                          *((CHECKPOINT_FILE,) if include_checkpoint else ()))}
        publish_export(tmp, out_dir, manifest, sources=(ckpt.path,), force=force)
    except BaseException:
        remove_temporary(tmp)
        raise
    log.info("exported %s -> %s (k in [%d, %d])", ckpt.path, out_dir, lo, hi)
    return read_manifest(out_dir)
