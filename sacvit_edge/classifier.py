"""EdgeClassifier: the facade apps embed over the two-stage pipeline (pipeline.Pipeline).

It validates its options once (pipeline.PipelineOptions), turns a path into an export directory
(a model.pt is exported into a cache, which needs the [export] extra), opens the backend
(runtimes.open_backend) and hands both to a Pipeline, which runs preprocess -> EE -> gate ->
split -> grouped SAC -> Predictions. Nothing here knows which backend runs the engines, and
nothing here imports torch or onnx.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .atomic import DirectoryLock
from .errors import BackendError, ConfigError, ExportError, ImageError
from .extras import require_extra
from .gate import Eta, describe_eta, validate_deadline, validate_eta
from .images import DEFAULT_MAX_PIXELS, ImageInput, check_color, check_resize, usable_cpus
from .manifest import MANIFEST_VERSION, PRECISIONS, read_manifest, sha256_file
from .pipeline import (BatchResult, ImposedDecisions, Pipeline, PipelineOptions, Prediction,  # noqa: F401 - public
                       check_deadline_possible, option_property)
from .stream import FrameStream, LatencyMonitor, check_frame_source  # noqa: F401 - public
from .runtimes import Backend, open_backend
from .version import __version__

log = logging.getLogger(__name__)


def _check_threads(threads: object) -> int | None:
    """None (the backend's default) or 1..CPUs this process may use: more only thrashes."""
    if threads is None:
        return None
    limit = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ConfigError(f"threads={threads!r} must be an integer in [1, {limit}] (the CPUs this process may use)")
    return threads


def _build_tensorrt_engines(manifest, precision: str, **options):
    """TensorRT engines a directory lacks, built on this GPU when the backend asks (rebuild=True).
    Building is the export layer's: one of the two places EdgeClassifier reaches up into it
    (with the cache export of a model.pt), both for an optional extra (.importlinter)."""
    from sacvit_edge.export.tensorrt import build_engines

    return build_engines(manifest, precision, **options)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SACVIT_EDGE_CACHE", Path.home() / ".cache" / "sacvit-edge"))


class EdgeClassifier:
    """SAC-ViT inference on two engines with confidence gating and token reuse.

    Args:
        path: an export directory, or a model.pt (exported on first use into a cache keyed by
            the checkpoint's fingerprint).
        backend: "auto" (TensorRT when usable, else ONNX Runtime), "onnxruntime", "openvino",
            "tensorrt", "pytorch" or "pytorch-cuda"; or an opened runtimes.base.Backend for this
            directory's engines (engines served elsewhere: the Triton BLS model passes
            runtimes.triton.TritonStageBackend), which the classifier then owns and closes.
        eta: exit threshold in [0, 1], or NEVER_EXIT ("never"); default: the one stored at export.
        threads: CPU threads for CPU backends (default: the backend's own, one per physical
            core); at most the CPUs this process may use.
        topk: how many classes each Prediction lists.
        max_pixels: images with more pixels are refused from their header, before decoding.
        color: channel order of numpy frames, "rgb" or "bgr" (OpenCV); files and PIL images are
            always decoded as RGB. predict / predict_batch take it per call too.
        resize: how a non-square frame fits the square input: "stretch" (default, the training
            arithmetic), "center_crop" or "letterbox" (black bars); per call too.
        resample: "exact" (default: Pillow's antialiased bilinear filter on the whole frame, the
            training arithmetic) or "fast" (OpenCV's block means first, then the same filter: about
            half the preprocessing of a 1080p frame, within one grey level of "exact" on camera
            frames; needs the [video] extra). See images.resize_uint8.
        group_overhead_tokens: fixed cost of one SAC engine call in tokens' worth of compute;
            images with different target counts are grouped (and padded, masked) into the
            fewest calls this cost model favours (tokens.plan_sac_groups). 0 = one call per count.
        precision: "fp32" (the exported engines), "fp16" (graphs derived by `export --precision fp16` or
            `build-engine --precision fp16`) or "int8" (made by `sacvit-edge calibrate --int8`).
        deadline_ms: a per-call budget: an image whose SAC stage would make the call miss it
            returns its EE answer (Prediction.deadline_exit); predicted from the stage latencies
            `sacvit-edge calibrate` measured on this device (needs a calibrated directory).
            predict / predict_batch / run take it per call too.
        backend_options: backend-specific settings, passed through (TensorRT: slots, cuda_graph,
            rebuild, fp16_mode; see runtimes.trt.TensorRTBackend).
        backend_wrapper: called with the opened backend, returns the backend to run (a recorder
            of the SAC inputs for INT8 calibration, a fault injector in tests); it must keep the
            runtimes.base.Backend protocol. It sees every stage call: a wrapped backend's
            batch-1 calls run the two stages, not the frame graph.
    Raises:
        ExportError / CheckpointError / BackendError with the file and the problem.

    Thread safety: the engines are shared read-only and every call keeps its state on its
    own stack, so several threads may call predict() at once.
    """

    def __init__(self, path: str | Path, backend: str | Backend = "auto", eta: Eta | None = None,
                 threads: int | None = None, topk: int = 5, cache_dir: str | Path | None = None,
                 group_overhead_tokens: float = 64.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 color: str = "rgb", resize: str = "stretch", precision: str = "fp32",
                 deadline_ms: float | None = None, backend_options: dict | None = None,
                 backend_wrapper: Callable | None = None, resample: str = "exact") -> None:
        self.pipeline: Pipeline | None = None  # set last: close() works on a half-built classifier
        if not isinstance(path, (str, Path)) or str(path) == "":
            raise ConfigError(f"path={path!r}: expected an export directory or a model.pt path")
        if precision not in (*PRECISIONS, "auto"):
            raise ConfigError(f"precision={precision!r}: expected one of {[*PRECISIONS, 'auto']}")
        if backend_options is not None and not (isinstance(backend_options, Mapping)
                                                and all(isinstance(k, str) for k in backend_options)):
            raise ConfigError(f"backend_options={backend_options!r}: expected a dict of option names to values, "
                              "e.g. {'slots': 2}")
        if not isinstance(backend, str):
            if not isinstance(backend, Backend):
                raise ConfigError(f"backend={backend!r}: expected a backend name or a runtimes.base.Backend")
            if threads is not None or backend_options:
                raise ConfigError("threads and backend_options are for a backend opened by name; an opened "
                                  f"{type(backend).__name__} was passed")
        threads = _check_threads(threads)
        # every option checked once, before any loading (the default eta and topk's cap need the manifest)
        options = PipelineOptions.checked(eta=0.0 if eta is None else eta, deadline_ms=deadline_ms, topk=topk,
                                          group_overhead_tokens=group_overhead_tokens, max_pixels=max_pixels,
                                          color=color, resize=resize, resample=resample)
        path = Path(path)
        try:
            is_file, exists = path.is_file(), path.exists()
        except OSError as exc:
            raise ExportError(f"{path}: cannot open ({exc.strerror or exc})") from exc
        if not exists:
            what = "checkpoint" if path.suffix == ".pt" else "export directory or checkpoint"
            raise ExportError(f"{path}: no such file or directory (expected an {what})")
        if is_file:
            path = self._export_cached(path, Path(cache_dir) if cache_dir else default_cache_dir())
        self.manifest = read_manifest(path)
        self.config = self.manifest.config
        if self.config.arch != "sacvit":
            raise ExportError(f"{path}: exported from a {self.config.arch} model, not SAC-ViT")
        self.class_names = self.manifest.class_names
        if precision == "auto":  # what `calibrate --int8` measured as best on this device, else fp32
            precision = self.manifest.recommended_precision()
        self.precision = precision
        self.manifest.engine_files(precision)  # a ConfigError when the directory has no such engines
        self.options = dataclasses.replace(
            options, eta=options.eta if eta is not None else validate_eta(self.manifest.default_eta(precision)),
            topk=min(options.topk, len(self.class_names)))
        self.latency_table = self.manifest.latency(precision)
        check_deadline_possible(self.options.deadline_ms, self.latency_table, self.manifest.directory, precision)
        opened = backend if not isinstance(backend, str) else open_backend(
            backend, self.manifest, threads=threads, precision=precision, options=backend_options,
            engine_builder=_build_tensorrt_engines)
        try:
            run_on = backend_wrapper(opened) if backend_wrapper is not None else opened
        except BaseException:
            opened.close()
            raise
        self.pipeline = Pipeline(self.manifest, run_on, self.options, self.latency_table, precision,
                                 frame_graph=backend_wrapper is None)  # a wrapper sees every stage call
        self.backend_name = opened.name
        log.info("EdgeClassifier on %s (%s), eta=%s", self.backend_name, opened.device(), describe_eta(self.eta))

    # ---- the options and state apps read (the pipeline holds them) ---------------------------
    @property
    def backend(self):
        """The backend the pipeline runs (None once closed)."""
        return None if self.pipeline is None else self.pipeline.backend

    eta = option_property("eta")
    deadline_ms = option_property("deadline_ms")
    topk = option_property("topk")
    max_pixels = option_property("max_pixels")
    color = option_property("color")
    resize = option_property("resize")
    resample = option_property("resample")
    group_overhead_tokens = option_property("group_overhead_tokens")

    @property
    def k_range(self) -> tuple[int, int]:
        return self.manifest.k_range

    @property
    def counters(self) -> dict[str, int]:
        """images, exited, deadline_exits, k_clamped_low, k_clamped_high since construction."""
        return self._pipeline().counters

    def reset_counters(self) -> None:
        self._pipeline().reset_counters()

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None:
            raise BackendError("this EdgeClassifier is closed; create a new one")
        return self.pipeline

    @staticmethod
    def _export_cached(checkpoint: Path, cache_dir: Path) -> Path:
        """The cached export of a checkpoint, made once. Several processes may fill the cache at
        once: a lock file serialises them, and the later ones find the first one's export."""

        # keyed by the weights AND the export format, so an upgrade never reuses stale engines
        target = cache_dir / f"{sha256_file(checkpoint)[:16]}-m{MANIFEST_VERSION}-{__version__}"
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cache_dir {cache_dir}: cannot be created or written ({exc.strerror or exc}); "
                              "pass another cache_dir or set SACVIT_EDGE_CACHE") from exc
        with DirectoryLock(target):
            try:
                return read_manifest(target).directory
            except ExportError:
                require_extra("export", f"EdgeClassifier on a checkpoint ({checkpoint.name}); pass an export "
                                        "directory to run without it")
                from sacvit_edge.export.bundle import export_checkpoint

                # a one-off cost of seconds: say it where people look, and where the files go
                log.warning("exporting %s once into the cache %s (set SACVIT_EDGE_CACHE or cache_dir to move it; "
                            "delete the folder to clear it; `sacvit-edge export` makes a directory to ship)",
                            checkpoint, target)
                # force: a damaged cache entry (nothing but this project's files) is remade
                return export_checkpoint(checkpoint, target, force=True, locked=True).directory

    # ---- inference: all of it is the pipeline's -------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput], color: str | None = None, resize: str | None = None,
                   geometries: list | None = None) -> np.ndarray:
        """Inputs -> the (B, 3, H, W) float32 batch the engines take (see images.preprocess)."""
        return self._pipeline().preprocess(images, color, resize, geometries)

    def run(self, batch: np.ndarray, eta: Eta | None = None, *, imposed: ImposedDecisions | None = None,
            deadline_ms: float | None = None, started: float | None = None, fused: bool = True) -> BatchResult:
        """Both stages on an already preprocessed (B, 3, H, W) float32 batch (Pipeline.run)."""
        return self._pipeline().run(batch, eta, imposed=imposed, deadline_ms=deadline_ms, started=started, fused=fused)

    def run_sac_stage(self, ee, rows: np.ndarray, order: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
        """The SAC stage alone (Pipeline.sac_stage): benchmarks time it."""
        return self._pipeline().sac_stage(ee, rows, order, counts)

    def predict_batch(self, images: Sequence[ImageInput], eta: Eta | None = None,
                      color: str | None = None, resize: str | None = None,
                      deadline_ms: float | None = None) -> list[Prediction]:
        """Classify several images (paths, PIL images or HxWx3 uint8 arrays) in one batch."""
        if isinstance(images, (str, Path, bytes, bytearray, np.ndarray)) or not hasattr(images, "__len__"):
            raise ImageError("predict_batch expects a sequence of images; use predict() for one image")
        start = time.perf_counter()
        self._pipeline()
        if eta is not None:
            eta = validate_eta(eta)
        if color is not None:
            check_color(color)
        if resize is not None:
            check_resize(resize)
        if deadline_ms is not None:
            self.pipeline.check_deadline(validate_deadline(deadline_ms))
        if len(images) == 0:
            return []
        geometries: list = []
        batch = self.preprocess(images, color, resize, geometries)
        pre_ms = (time.perf_counter() - start) * 1e3
        return self.pipeline.predictions(self.run(batch, eta, deadline_ms=deadline_ms, started=start), geometries, pre_ms,
                                         start)

    def stream(self, frames: Iterable, *, max_inflight: int = 2, drop: str = "none", overlap: bool = True,
               eta: Eta | None = None, color: str | None = None, resize: str | None = None) -> "FrameStream":
        """Classify a stream of frames (a generator, an OpenCV capture wrapped in a generator, a
        list): an iterator over (frame_index, frame, Prediction), in order.

        A reader thread pulls frames into a queue of at most `max_inflight`. drop="oldest": a full
        queue discards its oldest frame (a live camera never builds a backlog; FrameStream.dropped
        counts them); "none": the reader waits. overlap=True runs frame t+1's decoding and EE
        stage in a second thread while frame t is in its SAC stage (ONNX Runtime releases the GIL
        during a run); see scripts/stream_bench.py for when that wins. FrameStream.monitor has
        rolling latency (frame read -> result), fps and exit rate.
        """
        check_frame_source(frames)
        if drop not in ("none", "oldest"):
            raise ConfigError(f"drop={drop!r}: expected 'none' or 'oldest'")
        if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or max_inflight < 1:
            raise ConfigError(f"max_inflight={max_inflight!r} must be a positive integer")
        if drop == "oldest" and hasattr(frames, "__len__"):  # a list is always ahead: most frames would go
            log.warning("stream(drop='oldest') over a %s of %d frames: the reader outruns the model and drops most "
                        "of them; drop='oldest' is for live cameras, use drop='none' for lists and files",
                        type(frames).__name__, len(frames))
        eta_value = self.eta if eta is None else validate_eta(eta)
        if color is not None:
            check_color(color)
        if resize is not None:
            check_resize(resize)
        return FrameStream(self.pipeline, frames, max_inflight, drop, overlap, eta_value, color, resize)

    def predict(self, image: ImageInput, eta: Eta | None = None, color: str | None = None,
                resize: str | None = None, deadline_ms: float | None = None) -> Prediction:
        """Classify one image."""
        return self.predict_batch([image], eta, color, resize, deadline_ms)[0]

    def close(self) -> None:
        """Free the engines; later calls raise BackendError. Closing twice is harmless."""
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def __enter__(self) -> "EdgeClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeClassifier({self.manifest.directory}, backend={self.backend_name!r}, eta={describe_eta(self.eta)})"
