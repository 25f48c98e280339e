"""The two-stage pipeline, once: preprocess -> EE engine -> exit gate -> split -> grouped SAC
engine -> results.

Per batch: the EE engine on the whole batch, the exit gate (gate.gate), the semantic-aware split
of the remaining images' coarse tokens (host, NumPy), the SAC engine once per planned group of
target counts (tokens.plan_sac_groups), padded within a group and masked (tokens.build_sac_group),
so results equal one-at-a-time inference. EdgeClassifier (the facade apps use), FrameStream,
calibration's collection, INT8 input recording, profiling and the benchmark all run this object.
It knows no backend: it drives runtimes.base.Backend. Torch-free.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .clustering import Split, select_targets
from .errors import BackendError, ConfigError, ImageError
from .gate import Eta, deadline_gate, gate, validate_deadline, validate_eta
from .images import DEFAULT_MAX_PIXELS, ImageInput, check_color, check_resample, check_resize, preprocess
from .tokens import build_sac_group, plan_sac_groups


@dataclass(frozen=True)
class PipelineOptions:
    """The pipeline's settings, validated once (`PipelineOptions.checked`).

    Attributes:
        eta: exit threshold (validated float; +inf = never exit).
        deadline_ms: per-call budget or None (needs the calibrated latency table).
        topk: classes per Prediction.
        group_overhead_tokens: fixed cost of one SAC engine call, in tokens (tokens.plan_sac_groups).
        max_pixels: larger inputs are refused from their header.
        color: numpy frames' channel order, "rgb" or "bgr".
        resize: "stretch", "center_crop" or "letterbox".
        resample: "exact" (the training arithmetic) or "fast" (images.check_resample).
    """

    eta: float
    deadline_ms: float | None = None
    topk: int = 5
    group_overhead_tokens: float = 64.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    color: str = "rgb"
    resize: str = "stretch"
    resample: str = "exact"

    @classmethod
    def checked(cls, *, eta: Eta, deadline_ms: object = None, topk: object = 5, group_overhead_tokens: object = 64.0,
                max_pixels: object = DEFAULT_MAX_PIXELS, color: object = "rgb", resize: object = "stretch",
                resample: object = "exact") -> "PipelineOptions":
        """Every option checked, each a ConfigError naming it (resample="fast" without OpenCV: the
        MissingExtraError saying what to install)."""
        try:
            color_ok, resize_ok, resample_ok = check_color(color), check_resize(resize), check_resample(resample)
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        for name, value in (("topk", topk), ("max_pixels", max_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if isinstance(group_overhead_tokens, bool) or not isinstance(group_overhead_tokens, (int, float)) \
                or not 0 <= group_overhead_tokens < 1e6:
            raise ConfigError(f"group_overhead_tokens={group_overhead_tokens!r} must be a number in [0, 1e6)")
        return cls(eta=validate_eta(eta), deadline_ms=validate_deadline(deadline_ms), topk=int(topk),  # type: ignore[arg-type]
                   group_overhead_tokens=float(group_overhead_tokens), max_pixels=int(max_pixels),  # type: ignore[arg-type]
                   color=color_ok, resize=resize_ok, resample=resample_ok)


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
            A batch-1 call on the frame graph (one engine call for both stages, BatchResult.fused)
            reports that call as ee and 0 as sac.
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
    fused: bool = False  # one call of the backend's frame graph (its time is timings["ee"], sac 0)


_NOT_EXITED_BY_DEADLINE = np.zeros(1, dtype=bool)  # every fused frame's deadline_exited: shared, read-only
_NOT_EXITED_BY_DEADLINE.setflags(write=False)


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
class PendingBatch:
    """A batch between the two stages of Pipeline.run (Pipeline.start -> Pipeline.finish)."""

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


def option_property(name: str) -> property:
    """A read-only attribute that is `self.options.<name>` (PipelineOptions): one value, one place."""
    return property(lambda self: getattr(self.options, name), doc=f"PipelineOptions.{name}")


class Pipeline:
    """Both stages over one backend, for one export directory's manifest.

    Args:
        manifest: the export directory's manifest (sizes, normalisation, k range, classes).
        backend: an open runtimes.base.Backend on its engines.
        options: PipelineOptions.
        latency_table: the calibrated stage latencies (deadline gating), or None.

    Thread safety: the engines are shared read-only and every call keeps its state on its own
    stack, so several threads may run batches at once; the counters are locked.
    """

    def __init__(self, manifest, backend, options: PipelineOptions, latency_table=None, precision: str = "fp32",
                 frame_graph: bool = True) -> None:
        self.manifest = manifest
        self.config = manifest.config
        self.class_names = manifest.class_names
        self.k_range = manifest.k_range
        self.backend = backend
        self.options = options
        self.latency_table = latency_table
        self.precision = precision
        # one-call batch-1 frames where the backend has them (`run_frame`); off under a backend
        # wrapper, which is promised every stage call (EdgeClassifier's backend_wrapper)
        self.frame_graph = frame_graph and bool(getattr(backend, "has_frame", False))
        self.check_deadline(options.deadline_ms)
        self._counter_lock = threading.Lock()
        self.counters = {"images": 0, "exited": 0, "deadline_exits": 0, "k_clamped_low": 0, "k_clamped_high": 0}

    # shorthands the stages read
    eta = option_property("eta")
    deadline_ms = option_property("deadline_ms")
    group_overhead_tokens = option_property("group_overhead_tokens")

    def check_deadline(self, deadline: float | None) -> float | None:
        return check_deadline_possible(deadline, self.latency_table, self.manifest.directory, self.precision)

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

    def preprocess(self, images: Sequence[ImageInput], color: str | None = None, resize: str | None = None,
                   geometries: list | None = None) -> np.ndarray:
        """Inputs -> the (B, 3, H, W) float32 batch the engines take (see images.preprocess)."""
        o = self.options
        return preprocess(images, self.manifest.size, self.manifest.mean, self.manifest.std, o.max_pixels,
                          o.color if color is None else color, o.resize if resize is None else resize, geometries,
                          o.resample)

    def _engines(self):
        if self.backend is None or getattr(self.backend, "closed", False):
            raise BackendError("this classifier is closed (close() was called); create a new one")
        return self.backend

    def run(self, batch: np.ndarray, eta: Eta | None = None, *, imposed: ImposedDecisions | None = None,
            deadline_ms: float | None = None, started: float | None = None, fused: bool = True) -> BatchResult:
        """Both stages on an already preprocessed (B, 3, H, W) float32 batch.

        One image without a deadline runs as one call of the backend's frame graph where it has one
        (`run_frame`: EE stage, gate, split, crop and SAC stage in one engine call; the same answers,
        no host work or second session between the stages); `fused=False` runs the two stages
        apart (what calibration's stage timings need).

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
        deadline = self.deadline_ms if deadline_ms is None else self.check_deadline(validate_deadline(deadline_ms))
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
        if imposed is not None:
            imposed = self._check_imposed(imposed, len(batch))
        if fused and len(batch) == 1 and deadline is None and self.frame_graph:
            return self._run_frame(batch, eta_value, imposed)  # checks the input only where the output says so
        _check_finite_input(batch)
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
        return self.finish(self.start(batch, eta_value, imposed, deadline, started))

    def _run_frame(self, batch: np.ndarray, eta_value: float, imposed: ImposedDecisions | None) -> BatchResult:
        """One image in one call of the frame graph; imposed decisions become its eta and force_k.

        The graph gives the probabilities and the mask too: after an engine call every NumPy call
        runs on cold caches, so the host only wraps arrays. Non-finite input makes non-finite
        probabilities (the EE stage reads every pixel), so the input is scanned only then."""
        eta_used, force_k = eta_value, 0
        if imposed is not None:
            eta_used = 0.0 if imposed.exited[0] else math.inf
            force_k = 0 if imposed.exited[0] else int(imposed.counts[0])
        t0 = time.perf_counter()
        frame = self._engines().run_frame(batch, eta_used, force_k)
        t1 = time.perf_counter()
        # plain Python on the (1, C) row: a NumPy ufunc here cost ~75 us on the caches the engine left
        # (any NaN or inf among the probabilities makes their sum non-finite)
        if not math.isfinite(sum(frame.probs.tolist()[0])):
            _check_finite_input(batch)
            _check_finite_output(frame.probs, "frame")
        exited = frame.exited.item()
        total_ms, ee_ms = (time.perf_counter() - t0) * 1e3, (t1 - t0) * 1e3
        res = BatchResult(frame.probs, frame.ee_probs, frame.exited, frame.counts, frame.target_mask,
                          {"ee": ee_ms, "sac": 0.0, "host": max(0.0, total_ms - ee_ms), "total": total_ms},
                          _NOT_EXITED_BY_DEADLINE, frame.raw_counts, True)
        with self._counter_lock:  # _count's bookkeeping without its array reductions
            c = self.counters
            c["images"] += 1
            if exited:
                c["exited"] += 1
            else:
                raw = frame.raw_counts.item()
                lo, hi = self.k_range
                c["k_clamped_low"] += raw < lo
                c["k_clamped_high"] += raw > hi
        return res

    def start(self, batch: np.ndarray, eta_value: float, imposed: ImposedDecisions | None,
                  deadline: float | None = None, started: float | None = None) -> "PendingBatch":
        """Stage 1 of run: EE engine, gate, split. A stream runs it for frame t+1 while stage 2
        of frame t is still in its SAC engine; `finish` (or `release`) must follow."""
        t0 = time.perf_counter()
        ee = self._engines().run_ee(batch)
        t1 = time.perf_counter()
        try:
            return self._gate_and_split(len(batch), ee, eta_value, imposed, deadline, started, t0, t1)
        except BaseException:
            self._engines().release(ee)  # what the backend holds for this batch (a TensorRT slot)
            raise

    def release(self, p: "PendingBatch") -> None:
        """Hand the batch's backend resources back (once; a closed classifier has none)."""
        if p.ee is not None and self.backend is not None and not getattr(self.backend, "closed", False):
            self.backend.release(p.ee)
        p.ee = None

    def _gate_and_split(self, n: int, ee, eta_value: float, imposed: ImposedDecisions | None,
                        deadline: float | None, started: float | None, t0: float, t1: float) -> "PendingBatch":
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
        return PendingBatch(ee, ee_probs, exited, rest, counts, mask, order, t0, t1, deadline_exited, raw_counts)

    def finish(self, p: "PendingBatch") -> BatchResult:
        """Stage 2 of run: the SAC engine on the images that did not exit, and the timings."""
        probs = p.ee_probs.copy()
        sac_s = 0.0
        try:
            if p.rest.size:
                logits, sac_s = self.sac_stage(p.ee, p.rest, p.order, p.counts[p.rest])
                _check_finite_output(logits, "SAC")
                probs[p.rest] = _softmax(logits)
        finally:
            self.release(p)
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
                or counts.dtype.kind not in "iu":  # integers (np.issubdtype is several times slower)
            raise ConfigError(f"imposed decisions need exited (B,) bool and counts (B,) int for B={batch}; "
                              f"got {exited.dtype} {exited.shape} and {counts.dtype} {counts.shape}")
        lo, hi = self.k_range
        if batch == 1:  # the benchmark's camera frames: scalars (each NumPy call after an engine call is slow)
            k = int(counts[0])
            if not exited[0] and not lo <= k <= hi:
                raise ConfigError(f"imposed target counts {k}..{k} lie outside the SAC engine's k range [{lo}, {hi}]")
            return imposed if counts.dtype == np.int64 and imposed.exited is exited and imposed.counts is counts \
                else ImposedDecisions(exited=exited, counts=counts.astype(np.int64))
        live = counts[~exited]
        if live.size and (live.min() < lo or live.max() > hi):
            raise ConfigError(f"imposed target counts {int(live.min())}..{int(live.max())} lie outside the "
                              f"SAC engine's k range [{lo}, {hi}]")
        return ImposedDecisions(exited=exited, counts=counts.astype(np.int64))

    def sac_stage(self, ee, rows: np.ndarray, order: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
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

    def predictions(self, res: BatchResult, geometries: list, pre_ms: float, start: float) -> list[Prediction]:
        gc = self.config.coarse_grid
        n = len(res.probs)
        timings = {"preprocess": pre_ms, **{k: v for k, v in res.timings.items() if k != "total"},
                   "total": (time.perf_counter() - start) * 1e3}  # everything from the call to the result
        out = []
        for b in range(n):
            top = np.argsort(-res.probs[b], kind="stable")[: self.options.topk]
            out.append(Prediction(
                class_id=int(top[0]), label=self.class_names[top[0]], confidence=float(res.probs[b, top[0]]),
                topk=[(int(c), self.class_names[c], float(res.probs[b, c])) for c in top],
                exited_early=bool(res.exited[b]), num_target_tokens=int(res.counts[b]),
                target_mask=None if res.exited[b] else res.target_mask[b].reshape(gc, gc).copy(),
                timings=dict(timings), batch_size=n,
                target_boxes=[] if res.exited[b] else self.boxes(res.target_mask[b], geometries[b]),
                deadline_exit=bool(res.deadline_exited[b]) if res.deadline_exited is not None else False))
        return out

    def boxes(self, mask: np.ndarray, geometry) -> list[tuple[int, int, int, int]]:
        """Target coarse cells -> pixel rectangles in the caller's frame."""
        cell = 2 * self.config.patch_size  # a coarse token covers 2p x 2p model pixels
        gc = self.config.coarse_grid
        boxes = [geometry.box(j * cell, i * cell, (j + 1) * cell, (i + 1) * cell)
                 for i, j in (divmod(int(t), gc) for t in np.flatnonzero(mask))]
        return [b for b in boxes if b[2] > b[0] and b[3] > b[1]]  # cells wholly in letterbox bars show nothing

    def close(self) -> None:
        """Close the backend; later calls raise BackendError. Closing twice is harmless."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def check_deadline_possible(deadline: float | None, latency_table, directory: Path, precision: str) -> float | None:
    """A deadline needs the stage latencies calibration measured for this precision."""
    if deadline is not None and latency_table is None:
        raise ConfigError(f"deadline_ms needs the stage latencies that `sacvit-edge calibrate {directory}` measures on "
                          f"this device; this directory has none for precision {precision!r}")
    return deadline


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _check_finite_input(batch: np.ndarray) -> None:
    if not np.isfinite(batch).all():
        raise ImageError("batch holds NaN or inf values; preprocessed inputs must be finite")


def _check_finite_output(logits: np.ndarray, stage: str) -> None:
    """Never hand out a NaN confidence: non-finite logits mean a broken engine or input."""
    if not np.isfinite(logits).all():
        raise BackendError(f"the {stage} engine returned NaN or inf logits; the export or the backend is broken "
                           "(re-export, or try backend='onnxruntime')")
