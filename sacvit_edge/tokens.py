"""Crop of target regions from the full-resolution image, for NumPy (host) and torch (training).

Coarse token (i, j) covers pixels [2p*i, 2p*(i+1)) x [2p*j, 2p*(j+1)); its region is cut into
2x2 fine patches (2i+a, 2j+b), a, b in {0, 1}, each flattened in (C, p, p) order, the layout
of the patch embedding's weights. Only the targets' pixels are copied: cutting the whole image
into patches first (a full-image transpose) cost ~12% of the SAC engine's time at small k.
One function serves both array types so that training and deployment crop identically.
"""

from __future__ import annotations

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
