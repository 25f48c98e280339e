"""ONNX -> TensorRT engine conversion (run on the device that will execute the engines).

Installed as `sacvit_edge.export.tensorrt`. The engine file format (a JSON header naming the
TensorRT version, GPU and checkpoint, then the plan) is read by runtimes/trt.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sacvit_edge.errors import EngineBuildError
from sacvit_edge.runtimes.trt import _trt, write_engine

log = logging.getLogger(__name__)


def profile_shapes(manifest, stage: str, batch_opt: int = 8) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input: buffers and profiles are sized from the max."""
    cfg = manifest.config
    b_lo, b_hi = manifest.batch_range
    b_opt = max(b_lo, min(batch_opt, b_hi))
    img = lambda b: (b, cfg.in_chans, cfg.img_size, cfg.img_size)  # noqa: E731
    if stage == "ee":
        return {"image": (img(b_lo), img(b_opt), img(b_hi))}
    n, d = cfg.num_coarse, cfg.embed_dim
    k_lo, k_hi = manifest.k_range
    k_opt = (k_lo + k_hi) // 2
    feat = lambda b: (b, n, d)  # noqa: E731
    px = cfg.in_chans * cfg.patch_size**2
    return {"target_patches": ((b_lo, 4 * k_lo, px), (b_opt, 4 * k_opt, px), (b_hi, 4 * k_hi, px)),
            "target_idx": ((b_lo, k_lo), (b_opt, k_opt), (b_hi, k_hi)),
            "nontarget_idx": ((b_lo, n - k_hi), (b_opt, n - k_opt), (b_hi, n - k_lo)),
            "target_keep": ((b_lo, k_lo), (b_opt, k_opt), (b_hi, k_hi)),
            "nontarget_keep": ((b_lo, n - k_hi), (b_opt, n - k_opt), (b_hi, n - k_lo)),
            "ee_final": (feat(b_lo), feat(b_opt), feat(b_hi)),
            "ee_hidden": (feat(b_lo), feat(b_opt), feat(b_hi))}


def build_engine(onnx_path: Path, engine_path: Path, manifest, stage: str, fp16: bool = False,
                 workspace_gb: float = 1.0) -> Path:
    """ONNX -> serialized TensorRT engine with one optimisation profile over batch and k."""
    trt = _trt()
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(manifest, stage).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    log.info("building TensorRT engine %s (this takes a while once)", engine_path.name)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    header = {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(0), "stage": stage,
              "checkpoint_fingerprint": manifest.fingerprint, "manifest_sha256": manifest.content_sha256, "fp16": fp16,
              "profile": {k: v for k, v in profile_shapes(manifest, stage).items()}}
    write_engine(engine_path, header, bytes(blob))
    return engine_path


