"""Optional dependencies by role, and the error a user sees when one is missing.

The core install (`pip install sacvit-edge`) is the deployment runtime: NumPy, ONNX Runtime,
Pillow, Typer, Rich. Export, training, benchmark plots and TensorRT are extras; code that
needs one calls `require_extra` first, so a missing package is a MissingExtraError that says
what to install, never an ImportError trace.
"""

from __future__ import annotations

import importlib.util

from .errors import SacvitError

EXTRAS: dict[str, tuple[str, ...]] = {
    # extra name -> modules it provides (import names)
    "export": ("torch", "onnx"),
    "train": ("torch",),
    "bench": ("torch", "onnx", "matplotlib"),
    "video": ("cv2",),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "cuda", "onnx"),  # cuda: cuda-python (buffers, streams); onnx: derived graphs
    "serve": ("pytriton", "tritonclient"),  # pytriton: the tritonserver binary it bundles; tritonclient: configs, clients
}


class MissingExtraError(SacvitError, ImportError):
    """A feature needs an optional dependency group that is not installed."""


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (without importing them)."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def has_extra(extra: str) -> bool:
    return not missing_modules(extra)


def require_extra(extra: str, feature: str) -> None:
    """Raise MissingExtraError naming `feature`, the missing modules and the pip command."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}, which is not installed: "
                                f"pip install 'sacvit-edge[{extra}]'")
