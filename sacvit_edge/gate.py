"""The exit gate: the one place that decides which images the EE stage answers for.

An image exits after the EE stage when the largest of its EE softmax probabilities reaches
the threshold eta. Every path (EdgeClassifier, evaluation, eta tuning, the benchmark) calls
`gate`, so that they cannot disagree. NumPy only: the deployment path has no torch.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np

from .errors import ConfigError

NEVER_EXIT = "never"
"""Named threshold for "never exit": every image goes to the SAC stage (a [0, 1] eta of 1.0
still lets saturated softmaxes exit)."""

Eta = Union[float, str]


def validate_eta(eta: Any, name: str = "eta") -> float:
    """A threshold in [0, 1], or NEVER_EXIT, -> the float the gate compares against.

    NEVER_EXIT becomes +inf, which no probability reaches (and +inf, the validated form, stays
    itself, so validating twice is harmless). Anything else (NaN, a value outside [0, 1], another
    string, a bool) is a ConfigError naming the argument.
    """
    if isinstance(eta, str) and eta.strip().lower() == NEVER_EXIT:
        return math.inf
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{name}={eta!r} must be a number in [0, 1] or {NEVER_EXIT!r}")
    value = float(eta)
    if value == math.inf:
        return value
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ConfigError(f"{name}={eta!r} must be in [0, 1] (or {NEVER_EXIT!r} to send every image to the SAC stage)")
    return value


def gate(ee_probs: np.ndarray, eta: Eta) -> np.ndarray:
    """(B, C) EE softmax probabilities -> (B,) bool, True where the image exits early."""
    threshold = validate_eta(eta)
    probs = np.asarray(ee_probs)
    if probs.ndim != 2:
        raise ConfigError(f"gate expects (B, C) probabilities, got shape {probs.shape}")
    if math.isinf(threshold):
        return np.zeros(len(probs), dtype=bool)
    return probs.max(axis=1) >= threshold


def describe_eta(eta: float) -> str:
    """How a validated threshold reads in logs and reports."""
    return NEVER_EXIT if math.isinf(eta) else f"{eta:.3f}"


MAX_DEADLINE_MS = 3_600_000.0  # a per-frame budget beyond an hour is a unit mistake, never a deadline


def validate_deadline(deadline_ms: Any, name: str = "deadline_ms") -> float | None:
    """None (no deadline) or a positive, finite number of milliseconds."""
    if deadline_ms is None:
        return None
    problem = f"{name}={deadline_ms!r:.40} must be a positive number of milliseconds up to {MAX_DEADLINE_MS:.0f} (one hour), or None"
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float, np.floating, np.integer)):
        raise ConfigError(problem)
    try:
        value = float(deadline_ms)
    except OverflowError:
        raise ConfigError(problem) from None
    if not math.isfinite(value) or not 0 < value <= MAX_DEADLINE_MS:
        raise ConfigError(problem)
    return value


def deadline_gate(counts: np.ndarray, elapsed_ms: float, deadline_ms: float, sac_ms) -> np.ndarray:
    """Which of the images bound for the SAC stage must keep their EE answer to meet a deadline.

    Args:
        counts: (M,) target counts of the images that did not exit.
        elapsed_ms: time already spent on the call (preprocessing, EE, split).
        deadline_ms: the call's budget.
        sac_ms: predicted SAC call time, sac_ms(m, mean_k) (manifest.LatencyTable.sac_ms,
            measured by calibration on this device).
    Returns:
        (M,) bool, True where the image returns its EE answer (a deadline exit). Images with the
        most target tokens (the costliest) are the first to be cut.
    """
    counts = np.asarray(counts)
    order = np.argsort(counts, kind="stable")  # cheapest first: they are kept longest
    cut = np.ones(len(counts), dtype=bool)
    for m in range(len(counts), 0, -1):
        kept = order[:m]
        if elapsed_ms + sac_ms(m, float(counts[kept].mean())) <= deadline_ms:
            cut[kept] = False
            break
    return cut
