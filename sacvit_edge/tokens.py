"""The SAC-input builder: target crops, index lists and keep masks of one SAC engine call.

Used by every path that runs the SAC stage (EdgeClassifier on any backend, training, export
checks), so that they build identical inputs; the crop serves NumPy (host) and torch (training
and the PyTorch backends) alike.

Coarse token (i, j) covers pixels [2p*i, 2p*(i+1)) x [2p*j, 2p*(j+1)); its region is cut into
2x2 fine patches (2i+a, 2j+b), a, b in {0, 1}, each flattened in (C, p, p) order, the layout
of the patch embedding's weights. Only the targets' pixels are copied: cutting the whole image
into patches first (a full-image transpose) cost ~12% of the SAC engine's time at small k.
One function serves both array types so that training and deployment crop identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")


def crop_target_patches(image: Array, target_idx: Array, patch: int) -> Array:
    """image (B, C, H, W), target_idx (B, k) coarse indices -> (B, 4k, C*p*p) fine patches."""
    b, c, h, w = image.shape
    gc_h, gc_w = h // (2 * patch), w // (2 * patch)
    k = target_idx.shape[1]
    rows, cols = target_idx // gc_w, target_idx % gc_w  # (B, k)
    cells = image.reshape(b, c, gc_h, 2 * patch, gc_w, 2 * patch)
    if isinstance(image, np.ndarray):
        batch = np.arange(b)[:, None]
        region = cells[batch, :, rows, :, cols, :]  # (B, k, C, 2p, 2p): advanced dims first
        fine = region.reshape(b, k, c, 2, patch, 2, patch).transpose(0, 1, 3, 5, 2, 4, 6)
        return np.ascontiguousarray(fine.reshape(b, 4 * k, c * patch * patch))
    import torch

    batch = torch.arange(b, device=image.device)[:, None]
    region = cells[batch, :, rows, :, cols, :]  # (B, k, C, 2p, 2p)
    fine = region.reshape(b, k, c, 2, patch, 2, patch).permute(0, 1, 3, 5, 2, 4, 6)
    return fine.reshape(b, 4 * k, c * patch * patch)


def plan_sac_groups(counts: np.ndarray, num_coarse: int, overhead_tokens: float = 64.0) -> list[tuple[np.ndarray, int, int]]:
    """Group images of different target counts into few SAC calls, padding within a group.

    Every engine call has a fixed cost (per-node dispatch, thread wake-ups, small GEMMs), about
    the compute of `overhead_tokens` tokens on a CPU. One call per distinct count fragments a
    batch into many tiny calls; one padded call for all wastes compute on padding. This picks
    the partition of the sorted counts into contiguous groups that minimises
    sum(groups) overhead + sum(images) padded tokens, exactly, by dynamic programming over the
    distinct counts (at most k_max - k_min + 1 of them). A group padded from k_lo to k_hi
    costs each image 1 + 4*k_hi + (n - k_lo) tokens; its padding is masked out as keys, so
    results equal unpadded inference (to float rounding).

    Args:
        counts: (M,) target counts of the images that go to the SAC stage.
        num_coarse: n, coarse tokens per image.
    Returns:
        [(rows, k_lo, k_hi)]: indices into counts, and the group's smallest and largest count.
    """
    counts = np.asarray(counts)
    if counts.size == 0:
        return []
    if (counts == counts[0]).all():  # one count (every batch-1 call): one unpadded group
        k = int(counts[0])
        return [(np.arange(counts.size), k, k)]
    values, inverse, mult = np.unique(counts, return_inverse=True, return_counts=True)
    u = len(values)
    best = np.full(u + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(u + 1, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(mult)])
    for j in range(1, u + 1):  # groups end at distinct value j-1
        for i in range(j):  # ... and start at distinct value i
            images = cum[j] - cum[i]
            cost = best[i] + overhead_tokens + images * (1 + 4 * values[j - 1] + num_coarse - values[i])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = u
    while j > 0:
        i = cut[j]
        rows = np.flatnonzero((inverse >= i) & (inverse < j))
        groups.append((rows, int(values[i]), int(values[j - 1])))
        j = i
    return groups[::-1]


@dataclass(frozen=True)
class SacGroup:
    """Index and mask inputs of one SAC call over images whose target counts lie in [k_lo, k_hi].

    Targets are padded to k_hi and non-targets start at rank k_lo; the keep masks mark real
    tokens (False on padding), so a padded call equals unpadded per-image inference.

    Attributes:
        target_idx: (G, k_hi) coarse indices of the targets, best first.
        nontarget_idx: (G, n - k_lo) coarse indices of the non-targets.
        target_keep: (G, k_hi) bool.
        nontarget_keep: (G, n - k_lo) bool.
    """

    target_idx: np.ndarray
    nontarget_idx: np.ndarray
    target_keep: np.ndarray
    nontarget_keep: np.ndarray
    k_lo: int
    k_hi: int

    @property
    def padded(self) -> bool:
        """Whether any token is padding (otherwise the masks are all True and may be skipped)."""
        return self.k_lo != self.k_hi


def build_sac_group(order: np.ndarray, counts: np.ndarray) -> SacGroup:
    """order (G, n) coarse indices sorted by score, counts (G,) target counts -> SacGroup."""
    counts = np.asarray(counts, dtype=np.int64)
    k_lo, k_hi = int(counts.min()), int(counts.max())
    ranks = np.arange(order.shape[1])[None, :]
    return SacGroup(target_idx=np.ascontiguousarray(order[:, :k_hi], dtype=np.int64),
                    nontarget_idx=np.ascontiguousarray(order[:, k_lo:], dtype=np.int64),
                    target_keep=np.ascontiguousarray(ranks[:, :k_hi] < counts[:, None]),
                    nontarget_keep=np.ascontiguousarray(ranks[:, k_lo:] >= counts[:, None]),
                    k_lo=k_lo, k_hi=k_hi)
