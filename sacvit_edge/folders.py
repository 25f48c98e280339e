"""Labelled image folders without torch: one sub-folder per class, matched to a model's classes
by name, unreadable files counted. The one data stack: every source yields uint8 images
(items for the deployment path, (B, H, W, 3) uint8 batches for training and PyTorch evaluation);
training turns batches into tensors itself (train.to_input). datasets.py puts the built-in split
beside these folders.

A class name that cannot be a folder name has each "/" written as "-" (`T-shirt/top` ->
`T-shirt-top`); `folder_name` is that rule. A folder whose classes differ (missing, extra, or a
class folder without images) is a DataError listing the difference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import ConfigError, DataError, ImageError
from .images import IMAGE_SUFFIXES, load_image, resize_uint8

log = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "test")
CALIBRATION_ITEMS = 5000  # the last official train items: the calibration split
DEFAULT_MAX_BAD_SHARE = 0.01


def folder_name(class_name: str) -> str:
    """The folder that holds a class: '/' (impossible in a folder name) becomes '-'."""
    return class_name.replace("/", "-")


@dataclass
class BadImages:
    """Unreadable images of one pass: listed by file, and a failure once too many."""

    total: int
    max_share: float = DEFAULT_MAX_BAD_SHARE
    files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def add(self, item: object, reason: str) -> None:
        self.files.append((str(item), reason))
        # the reason names the file already (ImageError messages start with it): say it once
        log.warning("skipping unreadable image: %s", reason if str(item) in reason else f"{item}: {reason}")
        if len(self.files) > self.max_share * self.total:
            listed = "; ".join(f"{f}: {r}" for f, r in self.files[:5])
            raise DataError(f"{len(self.files)} of {self.total} images are unreadable, more than the allowed share "
                            f"{self.max_share:.1%} (--max-bad-share): {listed}{' ...' if len(self.files) > 5 else ''}")


def match_classes(found: Sequence[str], class_names: Sequence[str], root: Path) -> list[int]:
    """Model class index of each folder, matched by name; a DataError lists any difference."""
    wanted = {folder_name(c): i for i, c in enumerate(class_names)}
    if len(wanted) != len(class_names):
        raise DataError(f"the model's class names {list(class_names)} collide once '/' is written as '-'")
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    if missing or extra:
        raise DataError(f"{root}: class folders do not match the model's classes (folder name = class name with "
                        f"'/' as '-'): missing {missing or 'none'}, not classes of the model {extra or 'none'}")
    return [wanted[f] for f in found]


class ImageFolderSource:
    """An ImageFolder read without torch.

    Args:
        root: one sub-folder per class.
        class_names: the model's classes; folders are matched to them by name. None: the
            classes are the sorted folder names (training a new model).
    """

    def __init__(self, root: str | Path, class_names: Sequence[str] | None = None,
                 max_bad_share: float = DEFAULT_MAX_BAD_SHARE) -> None:
        self.root = Path(root)
        self.name = str(self.root)
        self.max_bad_share = max_bad_share
        if not self.root.is_dir():
            raise DataError(f"--data {self.root}: not a directory (expected one sub-folder per class)")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DataError(f"--data {self.root}: no class sub-folders (expected one sub-folder per class)")
        if class_names is None:
            self.classes, index = tuple(found), list(range(len(found)))
        else:
            self.classes, index = tuple(class_names), match_classes(found, class_names, self.root)
        self.samples: list[tuple[Path, int]] = [
            (p, label) for name, label in zip(found, index)
            for p in sorted((self.root / name).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not self.samples:
            raise DataError(f"--data {self.root}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        counts = np.bincount([label for _, label in self.samples], minlength=len(self.classes))
        empty = [name for name, label in zip(found, index) if counts[label] == 0]
        if empty:  # a class the model would never be checked on: an error, like a missing folder
            raise DataError(f"--data {self.root}: class folder(s) {empty} hold no image files "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); every class needs images")
        self.labels = np.array([c for _, c in self.samples], dtype=np.int64)
        self.known_bad: set[Path] = set()  # unreadable files: reported in the first epoch, skipped after

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: np.ndarray) -> "ImageFolderSource":
        """The same folder restricted to some samples (a validation share)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.samples = [self.samples[int(i)] for i in indices]
        out.labels = self.labels[np.asarray(indices, dtype=np.int64)]
        return out

    def items(self, batch_size: int) -> Iterator[tuple[list, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            chunk = self.samples[start:start + batch_size]
            yield [p for p, _ in chunk], np.array([c for _, c in chunk], dtype=np.int64)

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool = False, rank: int = 0, world: int = 1, *,
                size: int, augment: Augment | None = None,
                seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """((B, size, size, 3) uint8, (B,) int64) batches for training and PyTorch evaluation:
        decoded and fitted as the deployment path does (load_image, stretch to `size`), in this
        epoch's order (`shuffle`), this rank's disjoint shard; `augment` jitters each image. An
        unreadable file is reported once and skipped in every later epoch."""
        order = shard_order(len(self), shuffle, (seed, epoch), rank, world)
        bad = BadImages(len(self), self.max_bad_share)
        for start in range(0, len(order), batch_size):
            imgs, labels = [], []
            for i in order[start:start + batch_size]:
                path, label = self.samples[i]
                if path in self.known_bad:
                    continue
                try:
                    img = resize_uint8(load_image(path, target_size=size), size)
                except ImageError as exc:
                    self.known_bad.add(path)
                    bad.add(path, str(exc))
                    continue
                if augment is not None and augment != NO_AUGMENT:
                    img = augment.apply(img, np.random.default_rng((seed, epoch, int(i))))
                imgs.append(img)
                labels.append(label)
            if imgs:
                yield np.stack(imgs), np.array(labels, dtype=np.int64)


@dataclass(frozen=True)
class Augment:
    """Training-time jitter of a folder's images (a named option of the recipe): each epoch draws
    a new random scale and shift per image from (seed, epoch, index), the image's border
    pixels filling what the shift uncovers. No flips or colour changes: they can change a class
    (digits, letters, left/right signs) and the model cannot know."""

    shift: float = 0.1  # largest shift, a share of the side
    scale: tuple[float, float] = (0.85, 1.15)

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = img.shape[0]
        side = max(2, int(round(size * rng.uniform(*self.scale))))
        if side != size:
            img = np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))
        dy, dx = (int(round(v)) for v in rng.uniform(-self.shift, self.shift, size=2) * size)
        pad = size + abs(dy) + abs(dx)
        big = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        top, left = pad + (side - size) // 2 - dy, pad + (side - size) // 2 - dx
        return np.ascontiguousarray(big[top:top + size, left:left + size])


NO_AUGMENT = Augment(shift=0.0, scale=(1.0, 1.0))


def shard_order(n: int, shuffle: bool, seed: tuple[int, ...] | int, rank: int, world: int) -> np.ndarray:
    """Item order of one epoch (optionally shuffled), and this rank's disjoint shard of it."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return order[rank::world]


def stratified_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `share` of every class (at least one image of a class with
    two or more) held out, drawn with `seed`."""
    if not 0.0 <= share < 1.0:
        raise DataError(f"validation share {share} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(share * len(idx)))
        if share > 0 and n == 0 and len(idx) >= 2:
            n = 1
        val.append(idx[:n])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def check_seed(seed: object) -> None:
    """A layout / sampling seed numpy accepts: an integer in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed!r} must be an integer in [0, 2**32)")


def check_options(limit: int | None, max_bad_share: float, seed: int = 0) -> None:
    check_seed(seed)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit {limit!r} must be a positive number of images")
    if not 0.0 <= max_bad_share <= 1.0:  # also false for NaN
        raise ConfigError(f"--max-bad-share {max_bad_share!r} must be a share in [0, 1]")


def sample_of(folder: "ImageFolderSource", limit: int | None, seed: int) -> "ImageFolderSource":
    """`limit` images of a folder drawn with `seed` (from every class, not the first folders)."""
    if limit is None or limit >= len(folder):
        return folder
    return folder.subset(np.sort(np.random.default_rng(seed).permutation(len(folder))[:limit]))


def check_builtin_classes(class_names: Sequence[str] | None, builtin: Sequence[str]) -> None:
    if class_names is not None and [folder_name(c) for c in class_names] != [folder_name(c) for c in builtin]:
        raise DataError(f"the model's classes {list(class_names)} are not cluttered Fashion-MNIST's; pass --data DIR "
                        "with the model's own data")
