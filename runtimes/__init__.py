"""Inference backends behind one small protocol (runtimes.base.Backend).

`open_backend(name, manifest)` is the only place that knows which backends exist; the
orchestrator (EdgeClassifier) only sees the protocol.
"""

from __future__ import annotations

import importlib.util
import logging

from sacvit_edge.errors import BackendError

from .base import Backend, EEResult

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "pytorch", "pytorch-cuda")


def tensorrt_usable() -> tuple[bool, str]:
    """Whether the TensorRT backend can run here, and why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible"
    except ImportError:  # pragma: no cover
        return False, "torch is not installed"
    return True, "ok"


def available_backends() -> list[str]:
    names = ["onnxruntime", "pytorch"]
    if tensorrt_usable()[0]:
        names.insert(0, "tensorrt")
    try:
        import torch

        if torch.cuda.is_available():
            names.append("pytorch-cuda")
    except ImportError:  # pragma: no cover
        pass
    return names


def open_backend(name: str, manifest, threads: int | None = None) -> Backend:
    """Open the named backend on an export directory's engines.

    Args:
        name: "auto" (TensorRT when usable, else ONNX Runtime), or one of BACKENDS.
        manifest: export.bundle.Manifest of the directory.
    Raises:
        BackendError: unknown name, or the backend cannot run here (message says why).
    """
    if name == "auto":
        ok, why = tensorrt_usable()
        name = "tensorrt" if ok else "onnxruntime"
        log.info("backend auto -> %s%s", name, "" if ok else f" (TensorRT not used: {why})")
    if name == "onnxruntime":
        from .ort import OrtBackend

        return OrtBackend(manifest.path("ee.onnx"), manifest.path("sac.onnx"), threads=threads)
    if name in ("pytorch", "pytorch-cuda"):
        from .torch_backend import TorchBackend

        return TorchBackend(manifest.path("model.pt"), device="cuda" if name == "pytorch-cuda" else "cpu", threads=threads)
    if name == "tensorrt":
        ok, why = tensorrt_usable()
        if not ok:
            raise BackendError(f"backend 'tensorrt' cannot run here: {why}")
        from .trt import TensorRTBackend

        return TensorRTBackend.from_manifest(manifest)
    raise BackendError(f"unknown backend {name!r}; choose 'auto' or one of {list(BACKENDS)}")


__all__ = ["Backend", "EEResult", "BACKENDS", "available_backends", "open_backend", "tensorrt_usable"]
