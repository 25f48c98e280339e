"""The backend protocol: what EdgeClassifier needs from an inference engine, and no more.

Lifecycle after Polygraphy's runners: construct (loads the engines once), `run_ee` /
`run_sac` infer, `close()` frees them; usable as a context manager. Inputs and outputs are
NumPy arrays named as in export/torch2onnx.py, so the orchestrator stays backend-agnostic.
The SAC stage takes one padded, masked group of images at a time (tokens.build_sac_group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class EEResult:
    logits: np.ndarray  # (B, C) float32
    gca: np.ndarray  # (B, n) float32
    final: np.ndarray  # (B, n, D) float32
    hidden: np.ndarray  # (B, n, D) float32


@runtime_checkable
class Backend(Protocol):
    """One inference engine pair (EE + SAC)."""

    name: str

    def run_ee(self, image: np.ndarray) -> EEResult:
        """image (B, 3, H, W) float32, normalised -> EE outputs."""
        ...

    def run_sac(self, patches: np.ndarray, target_idx: np.ndarray, nontarget_idx: np.ndarray,
                final: np.ndarray, hidden: np.ndarray, target_keep: np.ndarray,
                nontarget_keep: np.ndarray) -> np.ndarray:
        """One group of images, target counts in [k_lo, k_hi] -> SAC logits (B, C).

        patches: (B, 4*k_hi, C*p*p) target-region pixels (tokens.crop_target_patches).
        target_idx / nontarget_idx: (B, k_hi) / (B, n - k_lo) coarse indices.
        target_keep / nontarget_keep: the same shapes, bool, False on padding.
        final / hidden: (B, n, D) EE features of these images.
        """
        ...

    def device(self) -> str:
        """Human-readable device (CPU model, GPU name)."""
        ...

    def describe(self) -> dict:
        """Providers, threads, versions: for profiling reports."""
        ...

    def close(self) -> None:
        ...


class BackendBase:
    """Shared context-manager plumbing."""

    name = "base"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden where there is something to free
        pass


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
