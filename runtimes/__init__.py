"""Inference backends behind one small protocol (runtimes.base.Backend).

This folder (`runtimes/` in the repository) is installed as `sacvit_edge.runtimes`.
`open_backend(name, manifest)` is the only place that knows which backends exist; the
orchestrator (EdgeClassifier) only sees the protocol. Nothing here imports torch: the PyTorch
backend is loaded only when asked for, and finding out whether TensorRT can run needs only
the tensorrt and cuda-python packages.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging

from sacvit_edge.errors import BackendError
from sacvit_edge.extras import require_extra

from .base import Backend, EEResult
from .cuda import CudaRuntime
from .openvino import OpenVinoBackend
from .ort import OrtBackend
from .triton import TritonStageBackend  # noqa: F401 - not opened by name: the Triton BLS model constructs it
from .trt import TensorRTBackend

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "openvino", "pytorch", "pytorch-cuda")


def tensorrt_usable() -> tuple[bool, str]:
    """Whether the TensorRT backend can run here, and why not (cheap when it is not installed).
    Needs tensorrt and cuda-python and a visible GPU; not torch."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, ("the tensorrt package is not installed (pip install 'sacvit-edge[tensorrt]', "
                       "or JetPack's python3-libnvinfer)")
    if importlib.util.find_spec("cuda") is None:
        return False, "cuda-python is not installed (pip install 'sacvit-edge[tensorrt]')"
    try:
        CudaRuntime()
    except BackendError as exc:
        return False, f"no CUDA GPU is usable ({exc})"
    except Exception as exc:  # noqa: BLE001 - cuda-python's own failures without a driver (RuntimeError, ...)
        return False, f"no CUDA GPU is usable (cuda-python: {type(exc).__name__}: {exc})"
    return True, "ok"  # pragma: no cover - needs a CUDA machine


def available_backends() -> list[str]:
    """The backends that can run here. Imports torch only where it is installed (to ask for CUDA)."""
    names = ["onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        names.append("openvino")
    if importlib.util.find_spec("torch") is not None:
        import torch

        names.append("pytorch")
        if torch.cuda.is_available():
            names.append("pytorch-cuda")
    if tensorrt_usable()[0]:
        names.insert(0, "tensorrt")
    return names


def open_backend(name: str, manifest, threads: int | None = None, precision: str = "fp32",
                 options: dict | None = None, engine_builder=None) -> Backend:
    """Open the named backend on an export directory's engines.

    Args:
        name: "auto" (TensorRT when usable, else ONNX Runtime), or one of BACKENDS.
        manifest: sacvit_edge.manifest.Manifest of the directory.
        precision: "fp32", "fp16" (derived graphs) or "int8" (the Q/DQ graphs calibration made).
        options: backend-specific keyword arguments (only the TensorRT backend takes any).
        engine_builder: what builds TensorRT engines a directory lacks (see TensorRTBackend's
            builder); None: they are refused with the command that builds them.
    Raises:
        BackendError: unknown name, or the backend cannot run here (message says why).
    """
    if options and name != "tensorrt":
        raise BackendError(f"backend options {sorted(options)} are for backend 'tensorrt'; {name!r} takes none")
    if name == "auto":
        ok, why = tensorrt_usable()
        name = "tensorrt" if ok else "onnxruntime"
        log.info("backend auto -> %s%s", name, "" if ok else f" (TensorRT not used: {why})")
    if precision != "fp32" and name not in ("onnxruntime", "openvino", "tensorrt"):
        raise BackendError(f"precision {precision!r} runs on backends 'onnxruntime', 'openvino' and 'tensorrt' only "
                           f"(asked for {name!r})")
    if name == "onnxruntime":
        return OrtBackend.from_manifest(manifest, threads=threads, precision=precision)
    if name == "openvino":
        require_extra("openvino", "backend 'openvino'")

        return OpenVinoBackend.from_manifest(manifest, threads=threads, precision=precision)
    if name in ("pytorch", "pytorch-cuda"):
        require_extra("export", f"backend {name!r}")
        if not manifest.has_checkpoint:
            raise BackendError(f"{manifest.directory}: this export carries no model.pt (exported without the checkpoint); "
                               f"backend {name!r} runs from it: re-export with the checkpoint, or use 'onnxruntime'")
        from .torch_backend import TorchBackend

        return TorchBackend(manifest.path("model.pt"), device="cuda" if name == "pytorch-cuda" else "cpu", threads=threads)
    if name == "tensorrt":
        ok, why = tensorrt_usable()
        if not ok:
            raise BackendError(f"backend 'tensorrt' cannot run here: {why}")

        known = set(inspect.signature(TensorRTBackend.__init__).parameters) - {"self", "manifest", "precision", "builder"}
        unknown = sorted(set(options or {}) - known)
        if unknown:  # checked by name: a TypeError from inside the backend is a bug to see, not an "unknown option"
            raise BackendError(f"backend 'tensorrt': unknown option(s) {unknown}; it takes {sorted(known)}")
        return TensorRTBackend.from_manifest(manifest, precision=precision, builder=engine_builder, **(options or {}))
    raise BackendError(f"unknown backend {name!r}; choose 'auto' or one of {list(BACKENDS)}")


__all__ = ["Backend", "EEResult", "BACKENDS", "available_backends", "open_backend", "tensorrt_usable"]
