"""Target / non-target selection of coarse tokens, on the host, in NumPy.

The same functions serve training (called on detached scores) and deployment (called by
EdgeClassifier between the two engines), so that selection is bit-identical in both.
Selection is not differentiable and has data-dependent shapes; keeping it out of the
graphs is what lets the SAC engine be exported with a plain dynamic token axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig


@dataclass(frozen=True)
class Split:
    """Per-image split of the coarse tokens.

    Attributes:
        order: (B, n) coarse indices sorted by descending score (ties by index).
        counts: (B,) number of target tokens of each image: targets are order[b, :counts[b]].
        raw_counts: (B,) what the rule chose before the [k_min, k_max] clamp (calibration
            measures how often the clamp acts; None where not computed).
    """

    order: np.ndarray
    counts: np.ndarray
    raw_counts: np.ndarray | None = None

    def targets(self, b: int) -> np.ndarray:
        return self.order[b, : self.counts[b]]

    def nontargets(self, b: int) -> np.ndarray:
        return self.order[b, self.counts[b]:]

    def target_mask(self, n: int) -> np.ndarray:
        """(B, n) boolean mask of target tokens on the flattened coarse grid."""
        b = self.order.shape[0]
        mask = np.zeros((b, n), dtype=bool)
        mask[np.arange(b)[:, None], self.order] = np.arange(self.order.shape[1])[None, :] < self.counts[:, None]
        return mask


def two_means_split(scores: np.ndarray, presorted: bool = False) -> np.ndarray:
    """Exact 1-D 2-means: the number of top-scored tokens forming the high cluster.

    Sort once and scan every split point of the sorted scores with prefix sums; the split
    with the least total within-cluster squared error is optimal (in 1-D an optimal 2-means
    partition is contiguous in sorted order). No iterations, no initialisation.

    Args:
        scores: (B, n) scores, n >= 2.
        presorted: scores are already sorted descending along each row (select_targets has them).
    Returns:
        (B,) int64 count t in [1, n-1] of the high-score cluster.
    """
    s = scores.astype(np.float64) if presorted else -np.sort(-scores.astype(np.float64), axis=1)  # (B, n) descending
    n = s.shape[1]
    csum = np.cumsum(s, axis=1)  # csum[:, t-1] = sum of top t
    csq = np.cumsum(s * s, axis=1)
    t = np.arange(1, n)  # size of the high cluster
    top_sum, top_sq = csum[:, :-1], csq[:, :-1]  # (B, n-1)
    rest_sum, rest_sq = csum[:, -1:] - top_sum, csq[:, -1:] - top_sq
    sse = (top_sq - top_sum**2 / t) + (rest_sq - rest_sum**2 / (n - t))
    return (np.argmin(sse, axis=1) + 1).astype(np.int64)


def densest_window(scores: np.ndarray, grid: int, m: int) -> np.ndarray:
    """LF-ViT: flat indices of the m x m window with the largest score sum, (B, m*m)."""
    b = scores.shape[0]
    g = scores.reshape(b, grid, grid).astype(np.float64)
    integral = np.zeros((b, grid + 1, grid + 1))
    integral[:, 1:, 1:] = g.cumsum(1).cumsum(2)
    w = grid - m + 1
    sums = (integral[:, m:, m:] - integral[:, :w, m:] - integral[:, m:, :w] + integral[:, :w, :w])
    best = sums.reshape(b, -1).argmax(1)
    r0, c0 = best // w, best % w
    rows = r0[:, None, None] + np.arange(m)[None, :, None]
    cols = c0[:, None, None] + np.arange(m)[None, None, :]
    return (rows * grid + cols).reshape(b, m * m)


def select_targets(scores: np.ndarray, config: ModelConfig) -> Split:
    """Split coarse tokens into targets and non-targets by the configured rule.

    Args:
        scores: (B, Gc*Gc) global class attention of the coarse tokens.
        config: model config (selection rule, k_min/k_max, alpha, window).
    """
    scores = np.asarray(scores, dtype=np.float32)
    b, n = scores.shape
    # Stable sort by descending score so that equal scores break ties by index everywhere.
    negated = -scores
    order = np.argsort(negated, axis=1, kind="stable").astype(np.int64, copy=False)
    if config.selection == "sac":
        # the scores in `order`'s order (equal scores are equal values, so sorting the values gives the
        # same array as gathering them, for a third of the host time of take_along_axis at batch 1)
        ranked = -np.sort(negated, axis=1)
        space = np.log(np.maximum(ranked, 1e-12)) if config.cluster_space == "log" else ranked  # log keeps it sorted
        raw = two_means_split(space, presorted=True)
        return Split(order=order, counts=np.clip(raw, config.k_min, config.k_max), raw_counts=raw)
    elif config.selection == "topalpha":
        counts = np.full(b, config.target_range()[0], dtype=np.int64)
    else:  # "window": the window's best window_keep share are targets; the window in descending score order first
        win = densest_window(scores, config.coarse_grid, config.window)
        in_win = np.zeros((b, n), dtype=bool)
        np.put_along_axis(in_win, win, True, axis=1)
        # Window tokens first (by score), then the others (by score): a stable partition.
        key = np.where(np.take_along_axis(in_win, order, 1), 0, 1)
        order = np.take_along_axis(order, np.argsort(key, axis=1, kind="stable"), 1)
        counts = np.full(b, config.target_range()[0], dtype=np.int64)
    return Split(order=order, counts=counts.astype(np.int64), raw_counts=counts.astype(np.int64))


def all_targets(batch: int, n: int) -> Split:
    """The warm-up split of training: every coarse token is a target."""
    return Split(order=np.tile(np.arange(n, dtype=np.int64), (batch, 1)), counts=np.full(batch, n, dtype=np.int64))
