"""EdgeClassifier: the two-engine SAC-ViT runtime that apps embed.

Per batch: preprocess -> EE engine on the whole batch -> exit gate (gate.gate) ->
semantic-aware split of the remaining images' coarse tokens (host, NumPy) -> SAC engine once
per planned group of target counts (tokens.plan_sac_groups), padded within a group and
masked (tokens.build_sac_group), so results equal one-at-a-time inference -> Predictions.
Nothing here knows which backend runs the engines, and nothing here imports torch or onnx:
a model.pt is exported (which needs the [export] extra) only when one is passed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .atomic import DirectoryLock
from .clustering import Split, select_targets
from .errors import BackendError, ConfigError, ExportError, ImageError
from .gate import Eta, deadline_gate, describe_eta, gate, validate_deadline, validate_eta
from .images import DEFAULT_MAX_PIXELS, ImageInput, check_color, check_resize, preprocess
from .manifest import MANIFEST_VERSION, PRECISIONS, read_manifest
from .tokens import build_sac_group, plan_sac_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    Attributes:
        class_id, label, confidence: the top class and its probability.
        topk: [(class_id, label, probability)] best first.
        exited_early: True when the EE stage was confident enough (SAC stage skipped).
        num_target_tokens: coarse tokens re-embedded at full resolution (0 if exited early).
        target_mask: (Gc, Gc) bool, where the model looked closer; None if exited early.
        timings: milliseconds of the call this image ran in: preprocess (decode, convert,
            resize, normalise), ee, host, sac, and total (everything from the call to the result).
        batch_size: images in that call; timings are the batch's, total / batch_size is this
            image's share (1: the timings are its own).
        target_boxes: the target regions as (left, top, right, bottom) pixel rectangles in the
            caller's frame (the resize mode undone, clipped to the frame: a cell wholly in the
            letterbox bars has none; EXIF rotation applied for files); empty if it exited early.
            images.draw_prediction draws them.
        deadline_exit: True when the image was bound for the SAC stage but returns its EE
            answer because the SAC stage would have missed the call's deadline_ms.
    """

    class_id: int
    label: str
    confidence: float
    topk: list[tuple[int, str, float]]
    exited_early: bool
    num_target_tokens: int
    target_mask: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    target_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    deadline_exit: bool = False


@dataclass
class BatchResult:
    """Raw arrays of one batch (what benchmarks and evaluation consume)."""

    probs: np.ndarray  # (B, C) final probabilities
    ee_probs: np.ndarray  # (B, C) EE-head probabilities (what the gate saw)
    exited: np.ndarray  # (B,) bool
    counts: np.ndarray  # (B,) target counts, 0 for exited images
    target_mask: np.ndarray  # (B, n) bool
    timings: dict[str, float]
    deadline_exited: np.ndarray | None = None  # (B,) bool: gave the EE answer to meet deadline_ms
    raw_counts: np.ndarray | None = None  # (B,) the split's counts before the k-range clamp (0 if exited)


@dataclass(frozen=True)
class ImposedDecisions:
    """Exit decisions and target counts to run instead of the model's own (benchmark hook).

    The benchmark times the engines at a chosen exit pattern and token count (e.g. a trained
    model's pattern on an untrained, larger geometry). The host still computes the real split of
    the scores (its cost is measured); only the decisions are replaced.

    Attributes:
        exited: (B,) bool, True where the image stops after the EE stage.
        counts: (B,) int target counts for the others, within the engines' k range.
    """

    exited: np.ndarray
    counts: np.ndarray


@dataclass
class _Pending:
    """A batch between the two stages of run (see EdgeClassifier._start_ee)."""

    ee: object
    ee_probs: np.ndarray
    exited: np.ndarray
    rest: np.ndarray
    counts: np.ndarray
    mask: np.ndarray
    order: np.ndarray | None
    t0: float
    t1: float
    deadline_exited: np.ndarray
    raw_counts: np.ndarray


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _check_finite_output(logits: np.ndarray, stage: str) -> None:
    """Never hand out a NaN confidence: non-finite logits mean a broken engine or input."""
    if not np.isfinite(logits).all():
        raise BackendError(f"the {stage} engine returned NaN or inf logits; the export or the backend is broken "
                           "(re-export, or try backend='onnxruntime')")


def _check_threads(threads: object) -> int | None:
    """None (the backend's default) or 1..CPUs this process may use: more only thrashes."""
    if threads is None:
        return None
    limit = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
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
            "tensorrt", "pytorch" or "pytorch-cuda".
        eta: exit threshold in [0, 1], or NEVER_EXIT ("never"); default: the one stored at export.
        threads: CPU threads for CPU backends (default: the backend's own, one per physical
            core); at most the CPUs this process may use.
        topk: how many classes each Prediction lists.
        max_pixels: images with more pixels are refused from their header, before decoding.
        color: channel order of numpy frames, "rgb" or "bgr" (OpenCV); files and PIL images are
            always decoded as RGB. predict / predict_batch take it per call too.
        resize: how a non-square frame fits the square input: "stretch" (default, the training
            arithmetic), "center_crop" or "letterbox" (black bars); per call too.
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
    Raises:
        ExportError / CheckpointError / BackendError with the file and the problem.

    Thread safety: the engines are shared read-only and every call keeps its state on its
    own stack, so several threads may call predict() at once.
    """

    def __init__(self, path: str | Path, backend: str = "auto", eta: Eta | None = None,
                 threads: int | None = None, topk: int = 5, cache_dir: str | Path | None = None,
                 group_overhead_tokens: float = 64.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 color: str = "rgb", resize: str = "stretch", precision: str = "fp32",
                 deadline_ms: float | None = None, backend_options: dict | None = None) -> None:
        from sacvit_edge.runtimes import open_backend

        self.backend = None  # set last: close() works on a half-built classifier
        if not isinstance(path, (str, Path)) or str(path) == "":
            raise ConfigError(f"path={path!r}: expected an export directory or a model.pt path")
        if eta is not None:
            validate_eta(eta)  # checked before any loading
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: expected one of {list(PRECISIONS)}")
        deadline = validate_deadline(deadline_ms)
        if backend_options is not None and not (isinstance(backend_options, Mapping)
                                                and all(isinstance(k, str) for k in backend_options)):
            raise ConfigError(f"backend_options={backend_options!r}: expected a dict of option names to values, "
                              "e.g. {'slots': 2}")
        try:
            self.color = check_color(color)
            self.resize = check_resize(resize)
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        threads = _check_threads(threads)
        for name, value in (("topk", topk), ("max_pixels", max_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if not isinstance(group_overhead_tokens, (int, float)) or not 0 <= group_overhead_tokens < 1e6:
            raise ConfigError(f"group_overhead_tokens={group_overhead_tokens!r} must be a number in [0, 1e6)")
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
        self.max_pixels = max_pixels
        self.manifest = read_manifest(path)
        self.config = self.manifest.config
        if self.config.arch != "sacvit":
            raise ExportError(f"{path}: exported from a {self.config.arch} model, not SAC-ViT")
        self.class_names = self.manifest.class_names
        self.precision = precision
        self.manifest.engine_files(precision)  # a ConfigError when the directory has no such engines
        self.eta = validate_eta(self.manifest.default_eta(precision) if eta is None else eta)
        self.latency_table = self.manifest.latency(precision)
        self.deadline_ms = self._check_deadline(deadline)
        self._counter_lock = threading.Lock()
        self.counters = {"images": 0, "exited": 0, "deadline_exits": 0, "k_clamped_low": 0, "k_clamped_high": 0}
        self.topk = max(1, min(int(topk), len(self.class_names)))
        self.group_overhead_tokens = float(group_overhead_tokens)
        self.k_range = self.manifest.k_range
        self.backend = open_backend(backend, self.manifest, threads=threads, precision=precision,
                                    options=backend_options, engine_builder=_build_tensorrt_engines)
        self.backend_name = self.backend.name
        log.info("EdgeClassifier on %s (%s), eta=%s", self.backend_name, self.backend.device(), describe_eta(self.eta))

    def _check_deadline(self, deadline: float | None) -> float | None:
        if deadline is not None and self.latency_table is None:
            raise ConfigError(f"deadline_ms needs the stage latencies that `sacvit-edge calibrate "
                              f"{self.manifest.directory}` measures on this device; this directory has none "
                              f"for precision {self.precision!r}")
        return deadline

    def reset_counters(self) -> None:
        with self._counter_lock:
            for key in self.counters:
                self.counters[key] = 0

    def _count(self, res: "BatchResult") -> None:
        lo, hi = self.k_range
        raw = res.raw_counts[~res.exited] if res.raw_counts is not None else np.zeros(0)
        with self._counter_lock:
            c = self.counters
            c["images"] += len(res.exited)
            c["exited"] += int(res.exited.sum())
            c["deadline_exits"] += int(res.deadline_exited.sum()) if res.deadline_exited is not None else 0
            c["k_clamped_low"] += int((raw < lo).sum())
            c["k_clamped_high"] += int((raw > hi).sum())

    @staticmethod
    def _export_cached(checkpoint: Path, cache_dir: Path) -> Path:
        """The cached export of a checkpoint, made once. Several processes may fill the cache at
        once: a lock file serialises them, and the later ones find the first one's export."""
        from sacvit_edge.version import __version__
        from sacvit_edge.manifest import sha256_file

        # keyed by the weights AND the export format, so an upgrade never reuses stale engines
        target = cache_dir / f"{sha256_file(checkpoint)[:16]}-m{MANIFEST_VERSION}-{__version__}"
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cache_dir {cache_dir}: cannot be created or written ({exc.strerror or exc}); "
                              "pass another cache_dir or set SACVIT_EDGE_CACHE") from exc
        with DirectoryLock(target, on_wait=log.info):
            try:
                return read_manifest(target).directory
            except ExportError:
                from sacvit_edge.extras import require_extra

                require_extra("export", f"EdgeClassifier on a checkpoint ({checkpoint.name}); pass an export "
                                        "directory to run without it")
                from sacvit_edge.export.bundle import export_checkpoint

                # a one-off cost of seconds: say it where people look, and where the files go
                log.warning("exporting %s once into the cache %s (set SACVIT_EDGE_CACHE or cache_dir to move it; "
                            "delete the folder to clear it; `sacvit-edge export` makes a directory to ship)",
                            checkpoint, target)
                # force: a damaged cache entry (nothing but this project's files) is remade
                return export_checkpoint(checkpoint, target, force=True, locked=True).directory

    # ---- inference ----------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput], color: str | None = None, resize: str | None = None,
                   geometries: list | None = None) -> np.ndarray:
        """Inputs -> the (B, 3, H, W) float32 batch the engines take (see images.preprocess)."""
        return preprocess(images, self.manifest.size, self.manifest.mean, self.manifest.std, self.max_pixels,
                          self.color if color is None else color, self.resize if resize is None else resize,
                          geometries)

    def _engines(self):
        if self.backend is None:
            raise BackendError("this EdgeClassifier is closed; create a new one")
        return self.backend

    def run(self, batch: np.ndarray, eta: Eta | None = None, *, imposed: ImposedDecisions | None = None,
            deadline_ms: float | None = None, started: float | None = None) -> BatchResult:
        """Both stages on an already preprocessed (B, 3, H, W) float32 batch.

        Args:
            eta: exit threshold for this call (default: the classifier's).
            imposed: run these exit decisions and target counts instead of the model's own
                (benchmark hook; see ImposedDecisions).
            deadline_ms: this call's budget (default: the classifier's); see the class doc.
            started: time.perf_counter() when the call began (the deadline counts from it;
                default: now).
        """
        started = time.perf_counter() if started is None else started
        eta_value = self.eta if eta is None else validate_eta(eta)
        deadline = self.deadline_ms if deadline_ms is None else self._check_deadline(validate_deadline(deadline_ms))
        size = self.manifest.size
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4 \
                or batch.shape[1:] != (3, size, size):
            shape = getattr(batch, "shape", None)
            raise ImageError(f"batch must be float32 (B, 3, {size}, {size}); got {type(batch).__name__} "
                             f"{getattr(batch, 'dtype', '')} {shape}")
        self._engines()
        if len(batch) == 0:
            n, c = self.config.num_coarse, len(self.class_names)
            return BatchResult(probs=np.zeros((0, c), np.float32), ee_probs=np.zeros((0, c), np.float32),
                               exited=np.zeros(0, bool), counts=np.zeros(0, np.int64),
                               target_mask=np.zeros((0, n), bool), timings={"ee": 0.0, "host": 0.0, "sac": 0.0, "total": 0.0},
                               deadline_exited=np.zeros(0, bool), raw_counts=np.zeros(0, np.int64))
        if not np.isfinite(batch).all():
            raise ImageError("batch holds NaN or inf values; preprocessed inputs must be finite")
        if imposed is not None:
            imposed = self._check_imposed(imposed, len(batch))
        hi = self.manifest.batch_range[1]
        if len(batch) > hi:  # engines are built for batch <= batch_max: run in chunks
            parts = [self.run(batch[i:i + hi], eta_value, imposed=None if imposed is None else
                              ImposedDecisions(imposed.exited[i:i + hi], imposed.counts[i:i + hi]),
                              deadline_ms=deadline, started=started)
                     for i in range(0, len(batch), hi)]
            timings = {k: sum(p.timings[k] for p in parts) for k in parts[0].timings}
            return BatchResult(*(np.concatenate([getattr(p, f) for p in parts])
                                 for f in ("probs", "ee_probs", "exited", "counts", "target_mask")), timings=timings,
                               deadline_exited=np.concatenate([p.deadline_exited for p in parts]),
                               raw_counts=np.concatenate([p.raw_counts for p in parts]))
        return self._finish_sac(self._start_ee(batch, eta_value, imposed, deadline, started))

    def _start_ee(self, batch: np.ndarray, eta_value: float, imposed: ImposedDecisions | None,
                  deadline: float | None = None, started: float | None = None) -> "_Pending":
        """Stage 1 of run: EE engine, gate, split. A stream runs it for frame t+1 while stage 2
        of frame t is still in its SAC engine."""
        t0 = time.perf_counter()
        ee = self._engines().run_ee(batch)
        t1 = time.perf_counter()
        try:
            return self._gate_and_split(len(batch), ee, eta_value, imposed, deadline, started, t0, t1)
        except BaseException:
            self._engines().release(ee)  # what the backend holds for this batch (a TensorRT slot)
            raise

    def _release(self, p: "_Pending") -> None:
        """Hand the batch's backend resources back (once; a closed classifier has none)."""
        if p.ee is not None and self.backend is not None:
            self.backend.release(p.ee)
        p.ee = None

    def _gate_and_split(self, n: int, ee, eta_value: float, imposed: ImposedDecisions | None,
                        deadline: float | None, started: float | None, t0: float, t1: float) -> "_Pending":
        cfg = self.config
        _check_finite_output(ee.logits, "EE")
        ee_probs = _softmax(ee.logits)
        exited = gate(ee_probs, eta_value) if imposed is None else imposed.exited.copy()
        rest = np.flatnonzero(~exited)
        counts = np.zeros(n, dtype=np.int64)
        raw_counts = np.zeros(n, dtype=np.int64)
        deadline_exited = np.zeros(n, dtype=bool)
        mask = np.zeros((n, cfg.num_coarse), dtype=bool)
        order = None
        if rest.size:
            split = select_targets(ee.gca[rest], cfg)
            order = split.order
            counts[rest] = split.counts if imposed is None else imposed.counts[rest]
            raw_counts[rest] = split.raw_counts if imposed is None else imposed.counts[rest]
            if deadline is not None and self.latency_table is not None:
                elapsed_ms = (time.perf_counter() - (t0 if started is None else started)) * 1e3
                cut = deadline_gate(counts[rest], elapsed_ms, deadline, self.latency_table.sac_ms)
                if cut.any():  # these keep their EE answer: the gate's decision, extended by the clock
                    deadline_exited[rest[cut]] = True
                    exited = exited | deadline_exited
                    keep = ~cut
                    rest, order = rest[keep], order[keep]
                    counts[deadline_exited] = 0
            mask[rest] = Split(order, counts[rest]).target_mask(cfg.num_coarse)
        return _Pending(ee, ee_probs, exited, rest, counts, mask, order, t0, t1, deadline_exited, raw_counts)

    def _finish_sac(self, p: "_Pending") -> BatchResult:
        """Stage 2 of run: the SAC engine on the images that did not exit, and the timings."""
        probs = p.ee_probs.copy()
        sac_s = 0.0
        try:
            if p.rest.size:
                logits, sac_s = self.run_sac_stage(p.ee, p.rest, p.order, p.counts[p.rest])
                _check_finite_output(logits, "SAC")
                probs[p.rest] = _softmax(logits)
        finally:
            self._release(p)
        total = time.perf_counter() - p.t0
        ee_ms, sac_ms, total_ms = (p.t1 - p.t0) * 1e3, sac_s * 1e3, total * 1e3
        timings = {"ee": ee_ms, "sac": sac_ms, "host": max(0.0, total_ms - ee_ms - sac_ms), "total": total_ms}
        res = BatchResult(probs=probs, ee_probs=p.ee_probs, exited=p.exited, counts=p.counts, target_mask=p.mask,
                          timings=timings, deadline_exited=p.deadline_exited, raw_counts=p.raw_counts)
        self._count(res)
        return res

    def _check_imposed(self, imposed: ImposedDecisions, batch: int) -> ImposedDecisions:
        exited = np.asarray(imposed.exited)
        counts = np.asarray(imposed.counts)
        if exited.shape != (batch,) or counts.shape != (batch,) or exited.dtype != bool \
                or not np.issubdtype(counts.dtype, np.integer):
            raise ConfigError(f"imposed decisions need exited (B,) bool and counts (B,) int for B={batch}; "
                              f"got {exited.dtype} {exited.shape} and {counts.dtype} {counts.shape}")
        lo, hi = self.k_range
        live = counts[~exited]
        if live.size and (live.min() < lo or live.max() > hi):
            raise ConfigError(f"imposed target counts {int(live.min())}..{int(live.max())} lie outside the "
                              f"SAC engine's k range [{lo}, {hi}]")
        return ImposedDecisions(exited=exited, counts=counts.astype(np.int64))

    def run_sac_stage(self, ee, rows: np.ndarray, order: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
        """SAC logits of the EE batch's images `rows`, whose targets are order[i, :counts[i]].

        Images are grouped into few engine calls (tokens.plan_sac_groups); each group's index and
        mask inputs come from tokens.build_sac_group, its target patches from the backend (which
        holds the image). Returns (len(rows), C) logits and the seconds spent in the engine.
        """
        logits = np.empty((len(rows), len(self.class_names)), dtype=np.float32)
        engine_s = 0.0
        for group, _, _ in plan_sac_groups(counts, self.config.num_coarse, self.group_overhead_tokens):
            g = build_sac_group(order[group], counts[group])
            ts = time.perf_counter()  # the backend cuts the target patches itself (on its device)
            logits[group] = self._engines().run_sac(ee, rows[group], g)
            engine_s += time.perf_counter() - ts
        return logits, engine_s

    def predict_batch(self, images: Sequence[ImageInput], eta: Eta | None = None,
                      color: str | None = None, resize: str | None = None,
                      deadline_ms: float | None = None) -> list[Prediction]:
        """Classify several images (paths, PIL images or HxWx3 uint8 arrays) in one batch."""
        if isinstance(images, (str, Path, np.ndarray)) or not hasattr(images, "__len__"):
            raise ImageError("predict_batch expects a sequence of images; use predict() for one image")
        start = time.perf_counter()
        if eta is not None:
            eta = validate_eta(eta)
        if color is not None:
            check_color(color)
        if resize is not None:
            check_resize(resize)
        if deadline_ms is not None:
            self._check_deadline(validate_deadline(deadline_ms))
        if len(images) == 0:
            return []
        geometries: list = []
        batch = self.preprocess(images, color, resize, geometries)
        pre_ms = (time.perf_counter() - start) * 1e3
        return self._predictions(self.run(batch, eta, deadline_ms=deadline_ms, started=start), geometries, pre_ms, start)

    def _predictions(self, res: BatchResult, geometries: list, pre_ms: float, start: float) -> list[Prediction]:
        gc = self.config.coarse_grid
        n = len(res.probs)
        timings = {"preprocess": pre_ms, **{k: v for k, v in res.timings.items() if k != "total"},
                   "total": (time.perf_counter() - start) * 1e3}  # everything from the call to the result
        out = []
        for b in range(n):
            top = np.argsort(-res.probs[b], kind="stable")[: self.topk]
            out.append(Prediction(
                class_id=int(top[0]), label=self.class_names[top[0]], confidence=float(res.probs[b, top[0]]),
                topk=[(int(c), self.class_names[c], float(res.probs[b, c])) for c in top],
                exited_early=bool(res.exited[b]), num_target_tokens=int(res.counts[b]),
                target_mask=None if res.exited[b] else res.target_mask[b].reshape(gc, gc).copy(),
                timings=dict(timings), batch_size=n,
                target_boxes=[] if res.exited[b] else self._boxes(res.target_mask[b], geometries[b]),
                deadline_exit=bool(res.deadline_exited[b]) if res.deadline_exited is not None else False))
        return out

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
        eta_value = self.eta if eta is None else validate_eta(eta)
        if color is not None:
            check_color(color)
        if resize is not None:
            check_resize(resize)
        return FrameStream(self, frames, max_inflight, drop, overlap, eta_value, color, resize)

    def _boxes(self, mask: np.ndarray, geometry) -> list[tuple[int, int, int, int]]:
        """Target coarse cells -> pixel rectangles in the caller's frame."""
        cell = 2 * self.config.patch_size  # a coarse token covers 2p x 2p model pixels
        gc = self.config.coarse_grid
        boxes = [geometry.box(j * cell, i * cell, (j + 1) * cell, (i + 1) * cell)
                 for i, j in (divmod(int(t), gc) for t in np.flatnonzero(mask))]
        return [b for b in boxes if b[2] > b[0] and b[3] > b[1]]  # cells wholly in letterbox bars show nothing

    def predict(self, image: ImageInput, eta: Eta | None = None, color: str | None = None,
                resize: str | None = None, deadline_ms: float | None = None) -> Prediction:
        """Classify one image."""
        return self.predict_batch([image], eta, color, resize, deadline_ms)[0]

    def close(self) -> None:
        """Free the engines; later calls raise BackendError. Closing twice is harmless."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self) -> "EdgeClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeClassifier({self.manifest.directory}, backend={self.backend_name!r}, eta={describe_eta(self.eta)})"


def check_frame_source(frames: object) -> None:
    """Refuse what stream() would misread: one frame (an array's rows would become frames), a
    path or string (its characters), or anything that is not iterable."""
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ConfigError(f"frames: one array of shape {frames.shape} is one frame, not a stream; wrap it in a list "
                          "([frame]) or call predict(frame). A stack of frames is an (N, H, W, C) array")
    if isinstance(frames, (str, bytes, Path)) or hasattr(frames, "getpixel"):
        raise ConfigError(f"frames={frames!r:.80}: one image, not a stream; wrap it in a list or call predict(). "
                          "For a video file use sacvit_edge.video.open_frames(path)")
    if not isinstance(frames, Iterable):
        raise ConfigError(f"frames={frames!r:.80}: expected an iterable of frames (a list, a generator, "
                          f"video.open_frames(...)), got {type(frames).__name__}")


class LatencyMonitor:
    """Rolling statistics an app can show: latency p50/p99 (ms), fps and exit rate over the last
    `window` frames."""

    def __init__(self, window: int = 100) -> None:
        from collections import deque

        self._done: deque = deque(maxlen=window)  # (finish time, latency ms, exited)
        self.frames = 0
        self.last_ms = 0.0  # the latest frame's latency

    def add(self, latency_ms: float, exited: bool) -> None:
        self._done.append((time.perf_counter(), latency_ms, exited))
        self.frames += 1
        self.last_ms = latency_ms

    def snapshot(self) -> dict[str, float]:
        if not self._done:
            return {"frames": self.frames, "p50_ms": 0.0, "p99_ms": 0.0, "fps": 0.0, "exit_rate": 0.0}
        t, lat, ex = zip(*self._done)
        span = t[-1] - t[0]
        return {"frames": self.frames, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "fps": (len(t) - 1) / span if span > 0 else 0.0, "exit_rate": float(np.mean(ex))}


class FrameStream:
    """The iterator EdgeClassifier.stream returns (see there)."""

    def __init__(self, clf: EdgeClassifier, frames: Iterable, max_inflight: int, drop: str, overlap: bool,
                 eta: float, color: str | None, resize: str | None) -> None:
        import threading
        from collections import deque

        self.clf, self.frames, self.max_inflight, self.drop, self.overlap = clf, frames, max_inflight, drop, overlap
        self.eta, self.color, self.resize = eta, color, resize
        self.dropped = 0
        self.monitor = LatencyMonitor()
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threading = threading

    def _read(self) -> None:
        """Reader thread: frames -> the bounded queue; ends with a None marker (or an exception)."""
        try:
            for item in enumerate(self.frames):
                arrived = time.perf_counter()
                with self._cond:
                    while len(self._queue) >= self.max_inflight and self.drop == "none" and not self._stop.is_set():
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return
                    if len(self._queue) >= self.max_inflight:  # drop == "oldest"
                        self._queue.popleft()
                        self.dropped += 1
                    self._queue.append((*item, arrived))
                    self._cond.notify_all()
            end: object = None
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            end = exc
        with self._cond:
            self._queue.append(end)
            self._cond.notify_all()

    def _take(self):
        with self._cond:
            while not self._queue:
                if self._stop.is_set():
                    return None
                self._cond.wait(0.1)
            item = self._queue.popleft()
            self._cond.notify_all()
            return item

    def _stage_one(self, item):
        """Decode/fit/normalise and the EE stage of one frame."""
        index, frame, arrived = item
        start = time.perf_counter()
        geometries: list = []
        batch = self.clf.preprocess([frame], self.color, self.resize, geometries)
        pre_ms = (time.perf_counter() - start) * 1e3
        return index, frame, arrived, start, pre_ms, geometries, self.clf._start_ee(batch, self.eta, None, self.clf.deadline_ms, arrived)

    def _stage_two(self, staged) -> tuple[int, object, Prediction]:
        index, frame, arrived, start, pre_ms, geometries, pending = staged
        pred = self.clf._predictions(self.clf._finish_sac(pending), geometries, pre_ms, start)[0]
        self.monitor.add((time.perf_counter() - arrived) * 1e3, pred.exited_early)
        return index, frame, pred

    def __iter__(self) -> Iterator[tuple[int, object, Prediction]]:
        reader = self._threading.Thread(target=self._read, name="sacvit-stream-reader", daemon=True)
        reader.start()
        worker = None
        try:
            if not self.overlap:
                while (item := self._take()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    yield self._stage_two(self._stage_one(item))
                return
            import queue

            staged: queue.Queue = queue.Queue(maxsize=1)  # EE of frame t+1 runs while frame t is in SAC

            def hand_over(item) -> bool:
                while not self._stop.is_set():  # a consumer that stopped takes nothing more
                    try:
                        staged.put(item, timeout=0.05)
                        return True
                    except queue.Full:
                        continue
                return False

            def first_stage() -> None:
                while not self._stop.is_set():
                    item = self._take()
                    if item is None or isinstance(item, Exception):
                        hand_over(item)
                        return
                    try:
                        done = self._stage_one(item)
                    except Exception as exc:  # noqa: BLE001 - raised in the consumer
                        hand_over(exc)
                        return
                    if not hand_over(done):
                        self.clf._release(done[-1])  # its backend slot goes back to the pool
                        return

            worker = self._threading.Thread(target=first_stage, name="sacvit-stream-ee", daemon=True)
            worker.start()
            while (s := staged.get()) is not None:
                if isinstance(s, Exception):
                    raise s
                yield self._stage_two(s)
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            if worker is not None:
                worker.join(timeout=5.0)
                while not staged.empty():  # frames staged but never finished: free their slots
                    left = staged.get_nowait()
                    if isinstance(left, tuple):
                        self.clf._release(left[-1])
