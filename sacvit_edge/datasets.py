"""Labelled datasets, one notion for every command that takes data (torch-free).

`--data DIR` is an ImageFolder: one sub-folder per class, any image Pillow reads. Without it,
the built-in cluttered Fashion-MNIST with named splits (sacvit_edge.data, needs torch):

| split | items | layouts |
| --- | --- | --- |
| `train` | official train items 0..54999 | redrawn every epoch |
| `calibration` | official train items 55000..59999 (never trained on by default) | seed + 1 |
| `test` | the official test set | seed |

Classes are matched to a model's class names BY NAME, whatever the folders' sort order. A
class name that cannot be a folder name has each "/" written as "-" (`T-shirt/top` ->
`T-shirt-top`); `folder_name` is that rule. A folder whose classes differ (missing or extra)
is a DataError listing the difference. Unreadable images are listed by file and counted; a
pass fails once more than `max_bad_share` of the dataset is bad.

A source yields `(items, labels)` batches where an item is whatever EdgeClassifier.preprocess
takes (a path, or an HxWx3 uint8 array), so calibration preprocesses exactly as deployment does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

# the torch-free folder half, re-exported: `sacvit_edge.datasets` is where commands look for data
from .folders import (CALIBRATION_ITEMS, DEFAULT_MAX_BAD_SHARE, SPLITS, BadImages, ImageFolderSource,  # noqa: F401
                      check_builtin_classes, check_options, folder_name, match_classes, sample_of,
                      stratified_split)
from .errors import DataError


class LabelledSource(Protocol):
    """What calibrate / eval / tune-eta / profile / train read: items for the deployment path,
    uint8 batches for training and PyTorch evaluation."""

    name: str
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def items(self, batch_size: int) -> Iterator[tuple[list, np.ndarray]]: ...

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool = False, rank: int = 0, world: int = 1, *,
                size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class BuiltinSource:
    """A named split of the built-in cluttered Fashion-MNIST as uint8 HxWx3 canvases (needs torch)."""

    def __init__(self, split: str, seed: int = 0, limit: int | None = None) -> None:
        from .extras import require_extra

        require_extra("train", f"the built-in cluttered Fashion-MNIST {split!r} split (or pass --data DIR)")
        from .data import fashion_split

        self.dataset = fashion_split(split, seed=seed, limit=limit)
        self.name = f"cluttered-fashion-mnist:{split}(seed={seed}, items={len(self.dataset)})"
        self.classes = tuple(self.dataset.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def items(self, batch_size: int) -> Iterator[tuple[list, np.ndarray]]:
        for images, labels in self.dataset.batches(batch_size):
            yield list(images), labels

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool = False, rank: int = 0, world: int = 1, *,
                size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Training / PyTorch-evaluation batches, as folders.ImageFolderSource.batches gives them
        (the canvases are redrawn every train epoch: no augmentation option applies)."""
        return self.dataset.batches(batch_size, epoch, shuffle, rank, world, size=size)


def open_source(data: str | Path | None, split: str, class_names: Sequence[str] | None = None, *,
                seed: int = 0, limit: int | None = None,
                max_bad_share: float = DEFAULT_MAX_BAD_SHARE) -> LabelledSource:
    """`--data DIR` as an ImageFolder matched to `class_names`, else the built-in `split`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    check_options(limit, max_bad_share, seed)
    if data is not None:
        return sample_of(ImageFolderSource(data, class_names, max_bad_share), limit, seed)
    source = BuiltinSource(split, seed=seed, limit=limit)
    check_builtin_classes(class_names, source.classes)
    return source


