"""The backend protocol: what EdgeClassifier needs from an inference engine, and no more.

Lifecycle after Polygraphy's runners: construct (cheap), `activate()` loads the engines once,
`run_ee` / `run_sac` infer, `close()` frees them; usable as a context manager. Inputs and
outputs are NumPy arrays named as in export/torch2onnx.py, so the orchestrator stays
backend-agnostic.
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
        """One group of images with equal target count k -> SAC logits (B, C).

        patches: (B, 4k, C*p*p) target-region pixels (tokens.crop_target_patches).
        target_keep / nontarget_keep: (B, k) / (B, n-k') bool, False on padding.
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


def physical_cores() -> int:
    """Physical cores (not SMT threads): the best intra-op thread count for GEMM-bound work."""
    import os

    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        if cores:
            return max(1, min(len(cores), len(os.sched_getaffinity(0))))
    except (OSError, AttributeError):
        pass
    return max(1, os.cpu_count() or 1)
