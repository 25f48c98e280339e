"""One pass of the deployment classifier over a labelled dataset, and stage timings.

Both run on the backend the user deploys (ONNX Runtime by default, no torch): the records
are what that backend computes, and the latencies are this device's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
from sacvit_edge.datasets import DEFAULT_MAX_BAD_SHARE, BadImages, LabelledSource
from sacvit_edge.errors import DataError, ImageError
from sacvit_edge.gate import NEVER_EXIT
from sacvit_edge.manifest import LatencyTable

from .sweep import ExitRecords

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """A pass's records, the dataset's content fingerprint and its unreadable files."""

    records: ExitRecords
    fingerprint: str
    bad: list[tuple[str, str]] = field(default_factory=list)
    sample: np.ndarray | None = None  # a few preprocessed images (timing and INT8 calibration inputs)


def collect(clf: EdgeClassifier, source: LabelledSource, batch_size: int = 32,
            max_bad_share: float | None = None, keep_sample: int = 256,
            on_batch: Callable[[int, int], None] | None = None) -> Collected:
    """Run both stages on every image (eta "never": every image gets its SAC answer too), keep
    each image's EE probabilities, SAC answer and target counts.

    Images are preprocessed one by one with the classifier's own preprocessing (resize mode,
    colour order), so an unreadable file is listed and skipped, not fatal, until more than
    `max_bad_share` of the dataset is bad (default: the source's own, else 1 %). The fingerprint is the sha256 of the preprocessed
    pixels and labels in order: the same folder gives the same fingerprint.
    """
    total = len(source)
    if max_bad_share is None:
        max_bad_share = getattr(source, "max_bad_share", DEFAULT_MAX_BAD_SHARE)
    bad = BadImages(total, max_bad_share)
    digest = hashlib.sha256()
    parts: list[ExitRecords] = []
    sample: list[np.ndarray] = []
    done = 0
    for items, labels in source.items(batch_size):
        xs, ys = [], []
        for item, label in zip(items, labels):
            try:
                xs.append(clf.preprocess([item])[0])
                ys.append(int(label))
            except ImageError as exc:
                bad.add(item, str(exc))
        done += len(items)
        if xs:
            x = np.ascontiguousarray(np.stack(xs))
            y = np.asarray(ys, dtype=np.int64)
            digest.update(x.tobytes())
            digest.update(y.tobytes())
            res = clf.run(x, eta=NEVER_EXIT)
            parts.append(ExitRecords(labels=y, sac_pred=res.probs.argmax(1), ee_probs=res.ee_probs,
                                     counts=res.counts.copy(), raw_counts=res.raw_counts.copy()))
            if len(sample) < keep_sample:
                sample.extend(x[: keep_sample - len(sample)])
        if on_batch:
            on_batch(done, total)
    if not parts:
        raise DataError(f"{source.name}: no readable image")
    records = parts[0]
    for part in parts[1:]:
        records = records.concat(part)
    return Collected(records=records, fingerprint=digest.hexdigest(), bad=bad.files, sample=np.stack(sample))


def _median_ms(fn: Callable[[], dict], key: str, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    return float(np.median([fn()[key] for _ in range(reps)]))


def measure_latency(clf: EdgeClassifier, sample: np.ndarray, batch_sizes: tuple[int, ...] = (1, 32), reps: int = 7,
                    on_step: Callable[[str], None] | None = None) -> LatencyTable:
    """Stage latencies on this device: the EE engine and the host work at each batch size, and
    the SAC engine at each batch size and every target count the engines accept (median of
    `reps` calls; exit decisions and counts imposed through EdgeClassifier.run)."""
    lo, hi = clf.k_range
    ee: dict[int, float] = {}
    host: dict[int, float] = {}
    sac: dict[int, dict[int, float]] = {}
    for b in batch_sizes:
        x = np.ascontiguousarray(np.resize(sample, (b, *sample.shape[1:])))  # the sample, repeated to b images
        if on_step:
            on_step(f"timing batch {b}")
        exit_all = ImposedDecisions(exited=np.ones(b, bool), counts=np.zeros(b, np.int64))
        # fused=False: the stages apart (a batch-1 call would otherwise be one frame-graph call)
        ee[b] = _median_ms(lambda: clf.run(x, imposed=exit_all, fused=False).timings, "ee", reps)
        sac[b] = {}
        hosts = []
        for k in range(lo, hi + 1):
            go_all = ImposedDecisions(exited=np.zeros(b, bool), counts=np.full(b, k, np.int64))
            timings = [clf.run(x, imposed=go_all, fused=False).timings for _ in range(reps + 1)][1:]
            sac[b][k] = float(np.median([t["sac"] for t in timings]))
            hosts.append(float(np.median([t["host"] for t in timings])))
        host[b] = float(np.median(hosts))
        sac[b] = dict(zip(sac[b], nondecreasing(list(sac[b].values()))))
    return LatencyTable(ee=ee, host=host, sac=sac)


def nondecreasing(values: list[float]) -> list[float]:
    """The least-squares non-decreasing fit of `values` (pool adjacent violators).

    A SAC call with more target tokens does not cost less; where timing noise on a busy machine says
    it does (k = 20 measured 15.6 ms, k = 25 10.6 ms), the deadline report and the gate would
    contradict themselves. Violating neighbours are pooled to their mean, so the fit keeps the
    measured total instead of inflating every larger k the way a running maximum would."""
    blocks: list[list[float]] = []  # [sum, count] per pooled run
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def ee_floor_ms(clf: EdgeClassifier, batch: int, reps: int = 5) -> float:
    """The EE stage's time per image at `batch` on this device, on a blank batch: no budget below
    it can be met (every image pays at least the EE stage), so an unreachable --latency-budget-ms
    is refused before the long pass."""
    m = clf.manifest
    x = np.zeros((batch, m.config.in_chans, m.size, m.size), np.float32)
    exit_all = ImposedDecisions(exited=np.ones(batch, bool), counts=np.zeros(batch, np.int64))
    return _median_ms(lambda: clf.run(x, imposed=exit_all, fused=False).timings, "ee", reps) / batch


def timing_environment(clf: EdgeClassifier) -> dict[str, Any]:
    return {**clf.backend.describe(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def tune_batch1_threads(directory, sample: np.ndarray, exited: np.ndarray, counts: np.ndarray, precision: str = "fp32",
                        rounds: int = 6, calls: int = 20) -> dict[str, Any]:
    """ONNX Runtime's intra-op thread count for batch-1 calls, chosen by measurement on this
    device: one thread (no wake-ups, best for small widths) against ONNX Runtime's default (one
    per core, best once the matrices are large). Interleaved rounds of `calls` frames with the
    calibration images' own exit decisions and target counts; the median per-frame time wins."""
    candidates = {"1": 1, "default": None}
    clfs = {name: EdgeClassifier(directory, backend="onnxruntime", threads=t, precision=precision)
            for name, t in candidates.items()}
    n = len(exited)
    times: dict[str, list[float]] = {name: [] for name in clfs}
    frames = [np.ascontiguousarray(sample[i % len(sample)][None]) for i in range(calls)]
    for r in range(rounds + 1):
        for name, clf in clfs.items():
            t = time.perf_counter()
            for i in range(calls):
                j = (r * calls + i) % n
                clf.run(frames[i], imposed=ImposedDecisions(exited[j:j + 1], counts[j:j + 1]))
            if r:  # the first round warms up (and makes the batch-1 sessions)
                times[name].append((time.perf_counter() - t) / calls * 1e3)
    for clf in clfs.values():
        clf.close()
    ms = {name: float(np.median(v)) for name, v in times.items()}
    best = min(ms, key=ms.get)
    return {"onnxruntime_batch1_threads": candidates[best], "batch1_frame_ms": ms}
