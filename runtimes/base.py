"""The backend protocol: what EdgeClassifier needs from an inference engine, and no more.

Lifecycle after Polygraphy's runners: construct (loads the engines once), `run_ee` /
`run_sac` infer, `release` hands back what one batch held, `close()` frees everything; usable
as a context manager. Tensor names, dtypes and shapes are sacvit_edge.engine_io's.

Where the data live is the backend's business. `run_ee` returns the EE logits and the
clustering scores (gca) on the host (the exit gate and the split run there) and keeps the rest
of the batch (the image, the EE features) wherever it computed them: NumPy arrays on CPU
backends, device buffers on the GPU backends. `run_sac` then gets only what the host decided
(which rows, their SAC group's indices and keep masks: a few hundred bytes) and cuts the target
patches itself: NumPy here (`HostBackend`), on the device in the TensorRT and PyTorch CUDA
backends. So the orchestrator never moves features and never knows which backend it drives.

One optional capability: a backend whose `has_frame` is True also runs a whole batch-1 frame in one
call (`run_frame`, the export's frame graph: the gate and the split inside it), which the pipeline
uses for single images; the others leave `has_frame` False.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sacvit_edge.errors import BackendError
from sacvit_edge.engine_io import SAC_FEEDS  # noqa: F401 - the SAC graph's inputs, in order (the contract)
from sacvit_edge.tokens import SacGroup, crop_target_patches


@dataclass
class EEResult:
    """The EE stage of one batch.

    logits (B, C) and gca (B, n) are float32 host arrays. final / hidden (B, n, D) and image
    (B, 3, H, W) are the backend's: NumPy arrays on host backends, device-resident elsewhere
    (None where the backend keeps them in `slot`). slot is whatever the backend holds for this
    batch until `release` (an execution slot of a pool on TensorRT).
    """

    logits: np.ndarray
    gca: np.ndarray
    final: Any = None
    hidden: Any = None
    image: Any = None
    slot: Any = None


@dataclass
class FrameResult:
    """One image through the frame graph (engine_io stage "frame"): probs (1, C) of the final
    answer and ee_probs (1, C) of the EE head; exited (1,) bool; counts / raw_counts (1,) int64
    and target_mask (1, n) bool, 0 / False where it exited."""

    probs: np.ndarray
    ee_probs: np.ndarray
    exited: np.ndarray
    counts: np.ndarray
    raw_counts: np.ndarray
    target_mask: np.ndarray


@runtime_checkable
class Backend(Protocol):
    """One inference engine pair (EE + SAC)."""

    name: str

    def run_ee(self, image: np.ndarray) -> EEResult:
        """image (B, 3, H, W) float32, normalised -> EE outputs (see EEResult)."""
        ...

    def run_sac(self, ee: EEResult, rows: np.ndarray, group: SacGroup) -> np.ndarray:
        """SAC logits (G, C) of the batch's images `rows` (G,), whose targets, non-targets and
        keep masks are `group` (tokens.build_sac_group). The backend cuts the target patches
        from the image it holds."""
        ...

    def release(self, ee: EEResult) -> None:
        """The orchestrator is done with this batch: free what run_ee holds for it."""
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
    """The lifecycle every backend shares (Polygraphy's runners: activate on construction, infer,
    deactivate on close): usable as a context manager, and after close() every inference call is
    the project's BackendError naming the backend, never an AttributeError from a freed session.
    Subclasses write run_ee / run_sac / run_sac_feeds / close as usual; __init_subclass__ wraps
    them once, here."""

    name = "base"
    closed = False
    has_frame = False  # run_frame available (see the module doc)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("run_ee", "run_sac", "run_sac_feeds", "run_frame"):
            if method in cls.__dict__:
                setattr(cls, method, _when_open(cls.__dict__[method]))
        if "close" in cls.__dict__:
            setattr(cls, "close", _closing(cls.__dict__["close"]))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def release(self, ee: EEResult) -> None:
        """Nothing is held per batch unless a backend says otherwise."""

    def run_frame(self, image: np.ndarray, eta: float, force_k: int) -> FrameResult:
        """One image (1, 3, H, W) through both stages in one call: exits where its EE confidence
        reaches eta (0.0: always, inf: never), force_k > 0 replaces the split's count."""
        raise BackendError(f"the {self.name} backend has no frame graph; run the two stages")

    def close(self) -> None:  # pragma: no cover - overridden where there is something to free
        pass


def _when_open(method):
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if self.closed:
            raise BackendError(f"the {self.name} backend is closed (close() was called); open a new one")
        return method(self, *args, **kwargs)

    return checked


def _closing(method):
    @functools.wraps(method)
    def close(self, *args, **kwargs) -> None:
        if self.closed:
            return  # closing twice is harmless
        self.closed = True
        method(self, *args, **kwargs)

    return close


def patch_size_of(image_shape: tuple[int, ...], num_coarse: int) -> int:
    """The fine patch size p from the image side and the coarse token count (side = 2p * sqrt(n))."""
    grid = int(round(num_coarse ** 0.5))
    return image_shape[-1] // (2 * grid)


def host_sac_feeds(ee: EEResult, rows: np.ndarray, group: SacGroup) -> dict[str, np.ndarray]:
    """The SAC engine's named inputs for `rows` of a batch whose EE results are NumPy arrays."""
    every = len(rows) == len(ee.image) and (rows == np.arange(len(rows))).all()  # no copies: the batch-1 case
    pick = (lambda a: a) if every else (lambda a: a[rows])  # noqa: E731
    image = pick(ee.image)
    patch = patch_size_of(image.shape, ee.final.shape[1])
    return {"target_patches": crop_target_patches(image, group.target_idx, patch), "target_idx": group.target_idx,
            "nontarget_idx": group.nontarget_idx, "ee_final": pick(ee.final), "ee_hidden": pick(ee.hidden),
            "target_keep": group.target_keep, "nontarget_keep": group.nontarget_keep}


class HostBackend(BackendBase):
    """A backend whose engines take and give NumPy arrays (ONNX Runtime, OpenVINO): the SAC
    inputs are cut on the host (host_sac_feeds) and passed to `run_sac_feeds`."""

    def run_sac(self, ee: EEResult, rows: np.ndarray, group: SacGroup) -> np.ndarray:
        return self.run_sac_feeds(host_sac_feeds(ee, rows, group))

    def run_sac_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


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
