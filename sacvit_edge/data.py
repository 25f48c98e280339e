"""The built-in data: cluttered Fashion-MNIST canvases (the project's benchmark; needs torch to draw).

Cluttered Fashion-MNIST: each item of the official split is placed on a 112x112 canvas at a
random position and scale (28..56 px), tinted, with fragments of other items of the SAME
split as clutter. Most of the canvas is background, which is the spatial redundancy SAC-ViT
exploits. Layouts are drawn per image from numpy.random.default_rng((seed, epoch, index)),
so an image is the same whatever the batch it is rendered in; rendering is vectorised
(one grid_sample per batch), so data is never the bottleneck of training. Batches are
(B, H, W, 3) uint8 arrays like every source of folders.py (one data stack); user folders are
folders.ImageFolderSource.

The files come from Debian's package dataset-fashion-mnist (installed by scripts/setup.sh);
nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .folders import CALIBRATION_ITEMS, SPLITS, shard_order

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path(os.environ.get("SACVIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

OfficialSplit = Literal["train", "test"]  # the official Fashion-MNIST files (clustering.Split is another idea)


def load_fashion_mnist(split: OfficialSplit, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Official Fashion-MNIST split as (N, 28, 28) uint8 images and (N,) int64 labels."""
    if split not in _FILES:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    img_path, lbl_path = (root / f for f in _FILES[split])
    for path in (img_path, lbl_path):
        if not path.is_file():
            raise DataError(f"{path} not found: install Debian's dataset-fashion-mnist "
                            "(scripts/setup.sh does) or set SACVIT_FASHION_MNIST")
    try:
        with gzip.open(img_path, "rb") as f:
            raw = f.read()
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(lbl_path, "rb") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read Fashion-MNIST {split} files in {root}: {exc}") from exc
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} {len(labels)} labels")
    return images, labels


@dataclass(frozen=True)
class CanvasSpec:
    """How a cluttered canvas is drawn."""

    size: int = 112
    min_scale: int = 28
    max_scale: int = 56
    min_fragments: int = 2
    max_fragments: int = 4
    fragment_px: tuple[int, int] = (8, 14)  # side of the cut-out window in item pixels


class ClutteredFashionMNIST:
    """Cluttered Fashion-MNIST canvases rendered in batches.

    Args:
        split: "train" (official train set only) or "test" (official test set only).
        seed: layout seed; the test split is fixed for a seed, the train split is redrawn
            each epoch (``batches(epoch=...)``) as augmentation.
        limit: use only `limit` items (quick runs and tests).
        offset: skip the first `offset` items of the split (e.g. a validation slice).
    """

    classes = FASHION_CLASSES

    def __init__(self, split: OfficialSplit = "train", seed: int = 0, limit: int | None = None,
                 spec: CanvasSpec = CanvasSpec(), root: Path = FASHION_MNIST_DIR, offset: int = 0) -> None:
        self.split, self.seed, self.spec = split, seed, spec
        images, labels = load_fashion_mnist(split, root)
        end = None if limit is None else offset + limit
        images, labels = images[offset:end], labels[offset:end]
        self.items = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)  # (N,1,28,28)
        self.labels = torch.from_numpy(labels.copy())

    def __len__(self) -> int:
        return len(self.labels)

    def _layout(self, index: int, epoch: int) -> np.ndarray:
        """One image's drawing parameters, a flat float vector (see render())."""
        s = self.spec
        rng = np.random.default_rng((self.seed, 0 if self.split == "test" else 1 + epoch, index))
        scale = rng.uniform(s.min_scale, s.max_scale)
        x0, y0 = rng.uniform(0, s.size - scale, size=2)
        tint = rng.uniform(0.55, 1.0, size=3)
        bg = rng.uniform(0.0, 0.15, size=3)
        frags = []
        nfrag = rng.integers(s.min_fragments, s.max_fragments + 1)
        for j in range(s.max_fragments):
            src = rng.integers(0, len(self))
            w = rng.uniform(*s.fragment_px)
            cx, cy = rng.uniform(w / 2, 28 - w / 2, size=2)  # window centre in the item
            fs = w * rng.uniform(1.0, 2.0)  # size on the canvas
            fx, fy = rng.uniform(0, s.size - fs, size=2)
            level = rng.uniform(0.3, 0.7) if j < nfrag else 0.0
            frags.append([src, w, cx, cy, fs, fx, fy, level])
        return np.concatenate([[scale, x0, y0], tint, bg, np.ravel(frags)])

    def render(self, indices: np.ndarray, epoch: int = 0) -> torch.Tensor:
        """Canvases of the given items, (B, 3, size, size) uint8."""
        s = self.spec
        lay = torch.from_numpy(np.stack([self._layout(int(i), epoch) for i in indices])).float()
        b = len(indices)
        scale, x0, y0 = lay[:, 0], lay[:, 1], lay[:, 2]
        tint, bg = lay[:, 3:6], lay[:, 6:9]
        frags = lay[:, 9:].reshape(b, s.max_fragments, 8)
        # Canvas pixel centres in [-1, 1] (align_corners=False convention).
        lin = (torch.arange(s.size) + 0.5) / s.size * 2 - 1
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")  # (S, S)

        def place(src: torch.Tensor, left: torch.Tensor, top: torch.Tensor, side: torch.Tensor,
                  win_c: tuple[torch.Tensor, torch.Tensor], win_half: torch.Tensor) -> torch.Tensor:
            # Canvas square [left, left+side) maps onto the item window centred at win_c.
            u = ((gx[None] + 1) * s.size / 2 - left[:, None, None]) / side[:, None, None] * 2 - 1
            v = ((gy[None] + 1) * s.size / 2 - top[:, None, None]) / side[:, None, None] * 2 - 1
            inside = (u.abs() <= 1) & (v.abs() <= 1)
            ix = (win_c[0][:, None, None] + u * win_half[:, None, None]) / 14 - 1
            iy = (win_c[1][:, None, None] + v * win_half[:, None, None]) / 14 - 1
            out = F.grid_sample(src, torch.stack([ix, iy], -1), mode="bilinear", align_corners=False)
            return out[:, 0] * inside  # (B, S, S)

        centre = (torch.full((b,), 14.0), torch.full((b,), 14.0))
        obj = place(self.items[torch.as_tensor(indices)], x0, y0, scale, centre, torch.full((b,), 14.0))
        canvas = bg[:, :, None, None].expand(b, 3, s.size, s.size).clone()
        for j in range(s.max_fragments):
            f = frags[:, j]
            frag = place(self.items[f[:, 0].long()], f[:, 5], f[:, 6], f[:, 4], (f[:, 2], f[:, 3]), f[:, 1] / 2)
            canvas = torch.maximum(canvas, (frag * f[:, 7, None, None])[:, None] * tint[:, :, None, None].flip(1))
        canvas = torch.maximum(canvas, obj[:, None] * tint[:, :, None, None])
        return canvas.mul(255).round_().clamp_(0, 255).to(torch.uint8)

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool = False, rank: int = 0,
                world: int = 1, *, size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """((B, H, W, 3) uint8, (B,) int64) batches; with world > 1 each rank takes a disjoint shard.
        `size`, when given, must be the canvas size (a model of another input size needs --data)."""
        if size is not None and size != self.spec.size:
            raise DataError(f"the built-in canvases are {self.spec.size}x{self.spec.size} px and this model takes "
                            f"{size}x{size}: pass --data DIR with images for it")
        order = shard_order(len(self), shuffle, (self.seed, epoch), rank, world)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.render(idx, epoch).permute(0, 2, 3, 1).numpy(), self.labels.numpy()[idx]


def fashion_split(split: str, seed: int = 0, limit: int | None = None) -> ClutteredFashionMNIST:
    """A named split of the built-in data (see sacvit_edge.datasets): `train` = official train
    items 0..54999, `calibration` = items 55000..59999 drawn with layout seed + 1, `test`."""
    n_train = 60000 - CALIBRATION_ITEMS
    if split == "train":
        return ClutteredFashionMNIST("train", seed=seed, limit=n_train if limit is None else min(limit, n_train))
    if split == "calibration":
        n = CALIBRATION_ITEMS if limit is None else min(limit, CALIBRATION_ITEMS)
        return ClutteredFashionMNIST("train", seed=seed + 1, offset=n_train, limit=n)
    if split == "test":
        return ClutteredFashionMNIST("test", seed=seed, limit=limit)
    raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
