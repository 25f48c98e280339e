"""The exit sweep: every eta evaluated from one pass's records, no re-inference per eta.

One pass keeps, for every image, its label, EE probabilities, SAC-stage answer and target
count. Whether an image exits at eta is then the gate's decision on its EE probabilities
(sacvit_edge.gate.gate, the one gate), and its answer is EE's or SAC's accordingly, so the
accuracy, exit rate, expected GFLOPs and expected latency at any eta are exact functions of
the records. calibrate, tune-eta, eval and bench all use this module. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sacvit_edge.errors import ConfigError
from sacvit_edge.gate import NEVER_EXIT, Eta, gate, validate_eta

# thresholds the sweep evaluates: every 0.005 in [0, 1], and "never" (all images to the SAC stage)
ETA_GRID: tuple[Eta, ...] = (*[round(float(e), 3) for e in np.linspace(0.0, 1.0, 201)], NEVER_EXIT)
MIN_IMAGES = 300  # fewer calibration images than this: a warning, the interval is wide


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy, in percent (well-behaved near 0 and 100 %)."""
    if n == 0:
        return 0.0, 100.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


@dataclass
class ExitRecords:
    """Per-image outputs of one pass over a labelled dataset.

    For a plain ViT (DeiT) only `labels` and `sac_pred` (its only head) are set.
    """

    labels: np.ndarray                     # (N,)
    sac_pred: np.ndarray                   # (N,) SAC stage's answer (clustering on for every image)
    ee_probs: np.ndarray | None = None     # (N, C) EE softmax: what the gate sees
    counts: np.ndarray | None = None       # (N,) target counts the engines ran (clamped to k_range)
    raw_counts: np.ndarray | None = None   # (N,) the split's counts before the clamp

    @property
    def ee_pred(self) -> np.ndarray | None:
        return None if self.ee_probs is None else self.ee_probs.argmax(1)

    def exited(self, eta: Eta) -> np.ndarray:
        if self.ee_probs is None:
            return np.zeros(len(self.labels), dtype=bool)
        return gate(self.ee_probs, eta)

    def final_pred(self, eta: Eta, deadline_exits: np.ndarray | None = None) -> np.ndarray:
        """The early-exit model's answers at eta (EE's where it exits or a deadline cut it)."""
        if self.ee_probs is None:
            return self.sac_pred
        use_ee = self.exited(eta) if deadline_exits is None else self.exited(eta) | deadline_exits
        return np.where(use_ee, self.ee_pred, self.sac_pred)

    def top1(self, pred: np.ndarray) -> float:
        return float((pred == self.labels).mean() * 100) if len(self.labels) else 0.0

    def concat(self, other: "ExitRecords") -> "ExitRecords":
        def cat(a, b):
            return None if a is None else np.concatenate([a, b])
        return ExitRecords(*(cat(getattr(self, f), getattr(other, f)) for f in
                             ("labels", "sac_pred", "ee_probs", "counts", "raw_counts")))

    def point(self, eta: Eta, cost: Any = None, latency: Any = None, batch: int = 1) -> dict[str, Any]:
        """Accuracy (with its 95 % interval), exit rate and expected cost at one eta.

        Args:
            cost: manifest.CostTable (GFLOPs), or None.
            latency: manifest.LatencyTable measured on the device, or None; expected latency is
                per image at `batch`: the predicted call time of a batch with this exit rate and
                mean target count, divided by the batch size.
        """
        value = validate_eta(eta)
        exited = self.exited(value)
        pred = self.sac_pred if self.ee_probs is None else np.where(exited, self.ee_pred, self.sac_pred)
        correct = int((pred == self.labels).sum())
        lo, hi = wilson_interval(correct, len(self.labels))
        row: dict[str, Any] = {"eta": NEVER_EXIT if math.isinf(value) else value, "top1": self.top1(pred),
                               "top1_ci95": [lo, hi], "exit_rate": float(exited.mean()) if len(exited) else 0.0,
                               "images": len(self.labels)}
        if len(self.labels) > 1:  # the drop against never exiting, paired per image, and its standard error
            d = (self.sac_pred == self.labels).astype(np.float64) - (pred == self.labels)
            row["drop"], row["drop_se"] = float(100 * d.mean()), float(100 * d.std(ddof=1) / math.sqrt(len(d)))
        if self.counts is not None:
            live = self.counts[~exited]
            row["mean_target_tokens"] = float(live.mean()) if live.size else 0.0
            if cost is not None:
                row["gflops"] = cost.expected(exited, self.counts)
            if latency is not None:
                row["latency_ms"] = expected_latency_ms(latency, exited, self.counts, batch)
        return row

    def curve(self, cost: Any = None, latency: Any = None, batch: int = 1,
              etas: tuple[Eta, ...] = ETA_GRID) -> list[dict[str, Any]]:
        return [self.point(e, cost, latency, batch) for e in etas]


def expected_latency_ms(latency: Any, exited: np.ndarray, counts: np.ndarray, batch: int) -> float:
    """Mean latency per image at `batch` for these decisions, from the measured stage table:
    batch 1 averages each image's own call; larger batches take the call time of a batch with
    the same exit rate and mean target count, per image."""
    if batch == 1:
        ks, inverse = np.unique(counts, return_inverse=True)
        sac = np.array([latency.sac_ms(1, float(k)) for k in ks])[inverse]
        return latency.ee_ms(1) + latency.host_ms(1) + float((sac * ~exited).mean())
    m = (~exited).mean() * batch
    live = counts[~exited]
    sac = latency.sac_ms(m, float(live.mean())) if live.size else 0.0
    return (latency.ee_ms(batch) + latency.host_ms(batch) + sac) / batch


Objective = Literal["max_drop", "gflops_budget", "latency_budget_ms"]


@dataclass(frozen=True)
class Request:
    """What the user asks calibration for (exactly one).

    confidence_z (max_drop only): 0 takes the measured drop at face value; z > 0 asks that the
    drop's one-sided upper bound, drop + z * its standard error (paired per image), stay within
    `value` at the chosen eta and at every eta above it. On a few hundred tuning images a lower
    eta often "passes" by lucky swaps (the EE head right where the SAC head was wrong) and loses
    points on new images; the bound does not count on luck (train's held-out share uses z = 1).

    min_exit_rate (max_drop only): a cost floor. Where the exit rate's lower bound (one-sided
    Wilson, `exit_floor_z`; 1.645: 95 %) at the accuracy rule's eta is below this share, the
    highest eta whose bound reaches it is taken instead, and the chosen point says so (`limited_by`). The
    early exit is the method's saving; with a weak EE head the accuracy rule alone may keep it
    near zero. The bound makes the floor hold on new images, not only on the few hundred it was
    measured on (at 126 images, 10 % needs about 15 % of them to exit; at 2,000, about 11 %).
    """

    kind: Objective
    value: float
    confidence_z: float = 0.0
    min_exit_rate: float = 0.0
    exit_floor_z: float = 1.645

    def __post_init__(self) -> None:  # refused when asked, before any images are read
        if not 0.0 <= self.min_exit_rate <= 1.0:
            raise ConfigError(f"--min-exit-rate {self.min_exit_rate!r} must be a share in [0, 1]")
        if not (self.exit_floor_z >= 0 and math.isfinite(self.exit_floor_z)):
            raise ConfigError(f"exit_floor_z {self.exit_floor_z!r} must be a finite number >= 0")
        if self.min_exit_rate and self.kind != "max_drop":
            raise ConfigError("--min-exit-rate applies to the accuracy rule (--max-drop), not to a budget")

    def describe(self) -> str:
        bound = f" (upper bound, z = {self.confidence_z:g})" if self.confidence_z else ""
        floor = (f", exiting at least {self.min_exit_rate:.0%} of the images (lower bound, z = {self.exit_floor_z:g})"
                 if self.min_exit_rate else "")
        return {"max_drop": f"accuracy within {self.value:g} points of never exiting{bound}, at the lowest cost{floor}",
                "gflops_budget": f"the best accuracy within {self.value:g} GFLOPs per image",
                "latency_budget_ms": f"the best accuracy within {self.value:g} ms per image"}[self.kind]


def _bounded_drop_choice(curve: list[dict[str, Any]], never: dict[str, Any], request: Request) -> dict[str, Any]:
    """max_drop with confidence_z > 0: the lowest eta whose drop bound, and that of every eta above
    it, is within the request (higher etas exit a subset of the images, so the bound should only
    shrink with eta; where it does not, noise is speaking)."""
    def bound(p: dict[str, Any]) -> float:
        return p.get("drop", 0.0) + request.confidence_z * p.get("drop_se", 0.0)

    chosen = never
    for p in sorted((p for p in curve if p["eta"] != NEVER_EXIT), key=_eta_key, reverse=True):
        if bound(p) > request.value + 1e-9:
            break
        chosen = p
    return chosen


def choose(curve: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """The curve's point that meets the request.

    max_drop: the lowest expected cost (latency where measured, else GFLOPs; ties: the lower
    eta) whose accuracy is within `value` points of never exiting. A budget: the best accuracy
    whose expected cost fits (ties: the lower cost). A budget below the EE stage's own cost is
    a ConfigError giving the lowest achievable value.
    """
    if not curve:
        raise ConfigError("empty sweep: no images were evaluated")
    never = next(p for p in curve if p["eta"] == NEVER_EXIT)
    cost_key = "latency_ms" if request.kind == "latency_budget_ms" or "latency_ms" in never else "gflops"
    if request.kind == "max_drop":
        if request.value < 0:
            raise ConfigError(f"--max-drop {request.value} must be >= 0 points")
        if request.confidence_z > 0:
            chosen = _bounded_drop_choice(curve, never, request)
        else:
            ok = [p for p in curve if p["top1"] >= never["top1"] - request.value - 1e-9]
            chosen = min(ok, key=lambda p: (p.get(cost_key, 0.0), _eta_key(p)))
        return _exit_floor(curve, chosen, request)
    key = "gflops" if request.kind == "gflops_budget" else "latency_ms"
    if key not in never:
        raise ConfigError(f"a {key} budget needs {'the manifest cost table' if key == 'gflops' else 'measured latencies'}")
    ok = [p for p in curve if p[key] <= request.value]
    if not ok:
        lowest = min(p[key] for p in curve)
        unit = "GFLOPs" if key == "gflops" else "ms per image"
        raise ConfigError(f"budget {request.value:g} {unit} cannot be met: the lowest achievable is {lowest:.4g} "
                          f"{unit} (every image exiting after the EE stage)")
    return max(ok, key=lambda p: (p["top1"], -p[key], -_eta_key(p)))


def _exit_floor(curve: list[dict[str, Any]], chosen: dict[str, Any], request: Request) -> dict[str, Any]:
    """`chosen`, or where its exit rate's lower bound is below `request.min_exit_rate`, the highest
    eta whose bound reaches it (lower etas only exit more), marked with what decided it."""
    def lower(p: dict[str, Any]) -> float:
        n = p.get("images", 0)
        return wilson_interval(round(p["exit_rate"] * n), n, request.exit_floor_z)[0] / 100 if n else p["exit_rate"]

    if not request.min_exit_rate or lower(chosen) >= request.min_exit_rate - 1e-12:
        return chosen
    reaching = [p for p in curve if p["eta"] != NEVER_EXIT and lower(p) >= request.min_exit_rate - 1e-12]
    if not reaching:
        return chosen
    return dict(max(reaching, key=_eta_key), limited_by="min_exit_rate", accuracy_rule_eta=chosen["eta"],
                accuracy_rule_exit_rate=chosen["exit_rate"])


def _eta_key(p: dict[str, Any]) -> float:
    return math.inf if p["eta"] == NEVER_EXIT else float(p["eta"])


def token_range(raw_counts: np.ndarray, coverage: float = 0.999) -> dict[str, Any]:
    """The narrowest [k_min, k_max] holding `coverage` of the images' unclamped target counts,
    and the typical k (the median): what the engines' shape profiles should be built for."""
    counts = np.sort(np.asarray(raw_counts, dtype=np.int64))
    n = len(counts)
    if n == 0:
        raise ConfigError("no target counts recorded")
    need = math.ceil(coverage * n)
    best = (0, n - 1)
    i = 0
    for j in range(n):  # two pointers over the sorted counts: shortest window holding `need` images
        while j - i + 1 > need:
            i += 1
        if j - i + 1 == need and counts[j] - counts[i] < counts[best[1]] - counts[best[0]]:
            best = (i, j)
    lo, hi = int(counts[best[0]]), int(counts[best[1]])
    inside = int(((counts >= lo) & (counts <= hi)).sum())
    values, freq = np.unique(counts, return_counts=True)
    return {"k_min": lo, "k_max": hi, "k_typical": int(np.median(counts)), "coverage": inside / n,
            "below": int((counts < lo).sum()), "above": int((counts > hi).sum()), "images": n,
            "histogram": {str(int(v)): int(f) for v, f in zip(values, freq)}}
