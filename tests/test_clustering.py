import itertools
import math

import numpy as np
import pytest

from sacvit_edge.clustering import densest_window, select_targets, two_means_split
from sacvit_edge.config import preset, with_mode


def brute_force_best_sse(x: np.ndarray) -> float:
    """Least total within-cluster SSE over ALL 2-partitions (not only contiguous ones)."""
    best = math.inf
    n = len(x)
    for mask in itertools.product([0, 1], repeat=n):
        m = np.array(mask, bool)
        if m.all() or not m.any():
            continue
        sse = ((x[m] - x[m].mean()) ** 2).sum() + ((x[~m] - x[~m].mean()) ** 2).sum()
        best = min(best, sse)
    return best


def split_sse(x: np.ndarray, t: int) -> float:
    s = np.sort(x)[::-1]
    a, b = s[:t], s[t:]
    return ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()


@pytest.mark.parametrize("seed", range(20))
def test_two_means_equals_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.7, size=(1, 10))
    t = two_means_split(x)[0]
    assert 1 <= t <= 9
    assert split_sse(x[0], t) == pytest.approx(brute_force_best_sse(x[0]), rel=1e-9, abs=1e-12)


def test_two_means_separates_obvious_clusters():
    x = np.array([[0.1, 0.9, 0.12, 0.95, 0.11, 0.93, 0.1]])
    assert two_means_split(x)[0] == 3


def test_counts_vary_and_respect_clamp():
    cfg = preset("tiny_112")
    rng = np.random.default_rng(0)
    # Images whose "object" covers 2..30 of the 49 cells.
    scores = rng.uniform(0, 0.05, size=(30, 49))
    for i in range(30):
        scores[i, rng.choice(49, size=2 + i, replace=False)] += 1.0
    split = select_targets(scores, cfg)
    assert len(set(split.counts.tolist())) > 5
    assert split.counts.min() >= cfg.k_min and split.counts.max() <= cfg.k_max
    assert split.counts.min() == cfg.k_min and split.counts.max() == cfg.k_max  # both clamps engaged
    for b in range(30):  # targets are the highest-scored tokens, targets + non-targets = all
        t, nt = split.targets(b), split.nontargets(b)
        assert scores[b, t].min() >= scores[b, nt].max()
        assert sorted(np.concatenate([t, nt]).tolist()) == list(range(49))


def test_cf_mode_layout_is_cf_vits():
    cfg = with_mode(preset("tiny_112"), "cf")
    split = select_targets(np.random.default_rng(1).random((4, 49)), cfg)
    assert (split.counts == 25).all()  # 25 targets -> 100 fine tokens, 24 reused tokens
    assert split.order.shape == (4, 49)


def test_lf_mode_selects_densest_window():
    """Official LF-ViT: the densest 5x5 window, and of it the best ceil(0.88 * 25) = 22 tokens;
    the window's other 3 tokens join the non-targets."""
    cfg = with_mode(preset("tiny_112"), "lf")
    assert cfg.window_keep == 0.88 and cfg.target_range() == (22, 22)
    scores = np.zeros((1, 49))
    grid = scores.reshape(7, 7)
    grid[2:7, 1:6] = 1.0 + np.arange(25).reshape(5, 5) / 100  # a 5x5 block of high, distinct scores
    scores[0, 0] = 1.2  # one high token outside the window: not a target
    split = select_targets(scores, cfg)
    window = set(densest_window(scores, 7, 5)[0].tolist())
    rows, cols = np.divmod(np.array(sorted(window)), 7)
    assert rows.min() == 2 and rows.max() == 6 and cols.min() == 1 and cols.max() == 5
    assert split.counts[0] == 22
    best22 = set(np.argsort(-scores[0])[:23].tolist()) - {0}  # the window's best 22 (token 0 ranks among them)
    assert set(split.targets(0).tolist()) == best22 and best22 < window
    assert set(split.nontargets(0)[:3].tolist()) == window - best22


def test_target_mask_matches_targets():
    cfg = preset("tiny_112")
    split = select_targets(np.random.default_rng(2).random((3, 49)), cfg)
    mask = split.target_mask(49)
    for b in range(3):
        assert set(np.flatnonzero(mask[b]).tolist()) == set(split.targets(b).tolist())


def test_log_space_separates_object_from_background_not_just_peaks():
    # An "object" of 12 cells with heavy-tailed attention (two peaks) on a flat background.
    scores = np.full((1, 49), 1e-4)
    obj = np.arange(12)
    scores[0, obj] = 0.02
    scores[0, [0, 1]] = 0.5
    raw = select_targets(scores, preset("tiny_112", cluster_space="raw", k_min=1))
    log = select_targets(scores, preset("tiny_112", cluster_space="log", k_min=1))
    assert raw.counts[0] == 2  # raw values: only the two peaks
    assert log.counts[0] == 12  # log values: the whole object
