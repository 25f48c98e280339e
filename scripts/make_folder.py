"""Make a labelled image folder unlike Fashion-MNIST from data that packages ship (no download).

Two kinds, each drawn on noisy, cluttered 112x112 canvases (the object small and off-centre,
fragments of other items as clutter, a random tint and background), written as
``OUT/{train,val,test}/<class>/*.png`` with a few JPEG, grayscale and RGBA files among them, and
(``--hostile``) a corrupt file and a non-image file in ``train/`` as a user's folder has:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), split
  70/15/15 per class: 1,257 / 269 / 271 images.
- ``glyphs``: the letters A-J rendered from the fonts matplotlib ships (DejaVu, STIX, Computer
  Modern; regular, bold, italic), each at a random size, rotation and stroke; ``--per-class``
  images per class.

    python scripts/make_folder.py digits /tmp/digits
    python scripts/make_folder.py glyphs /tmp/glyphs --per-class 180

Needs scikit-learn (digits) or matplotlib (glyphs; in the [bench] extra): `pip install scikit-learn`.
The folder is a measurement fixture for issue-style accuracy checks (``sacvit-edge train
--data OUT/train``, ``sacvit-edge eval model.pt --data OUT/test``); it is never written into the
repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 112
LETTERS = "ABCDEFGHIJ"


def digits_items() -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    items = [(img / 16.0 * 255).astype(np.uint8) for img in d.images]  # 8x8, 0..16 -> uint8
    return items, d.target.astype(np.int64), [str(c) for c in range(10)]


def glyph_items(per_class: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    import matplotlib

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(p for p in font_dir.glob("*.ttf")
                   if p.name.startswith(("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr", "cmss", "cmtt", "cmb")))
    rng = np.random.default_rng(seed)
    items, labels = [], []
    for label, letter in enumerate(LETTERS):
        for _ in range(per_class):
            font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size=int(rng.integers(30, 44)))
            img = Image.new("L", (48, 48), 0)
            ImageDraw.Draw(img).text((24, 24), letter, fill=255, font=font, anchor="mm",
                                     stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
            img = img.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
            items.append(np.asarray(img))
            labels.append(label)
    return items, np.array(labels, np.int64), list(LETTERS)


def canvas(item: np.ndarray, others: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One cluttered RGB canvas holding `item` at a random place and scale (28..56 px)."""
    bg = rng.uniform(0, 60, size=3)
    out = np.ones((SIZE, SIZE, 3), np.float32) * bg
    out += rng.normal(0, 12, size=out.shape)  # sensor-like noise
    tint = rng.uniform(140, 255, size=3)
    for _ in range(int(rng.integers(2, 5))):  # clutter: fragments of other items, dimmer
        src = others[int(rng.integers(len(others)))]
        h, w = src.shape
        fw = max(2, int(w * rng.uniform(0.3, 0.5)))
        fx, fy = int(rng.integers(0, w - fw + 1)), int(rng.integers(0, h - fw + 1))
        frag = Image.fromarray(src[fy:fy + fw, fx:fx + fw]).resize((s := int(rng.integers(10, 26)),) * 2,
                                                                   Image.BILINEAR)
        x, y = (int(v) for v in rng.integers(0, SIZE - s, size=2))
        level = rng.uniform(0.3, 0.7)
        region = out[y:y + s, x:x + s]
        np.maximum(region, np.asarray(frag, np.float32)[..., None] / 255 * tint[::-1] * level, out=region)
    side = int(rng.integers(28, 57))
    obj = Image.fromarray(item).resize((side, side), Image.BILINEAR).filter(ImageFilter.SMOOTH)
    x, y = (int(v) for v in rng.integers(0, SIZE - side, size=2))
    region = out[y:y + side, x:x + side]
    np.maximum(region, np.asarray(obj, np.float32)[..., None] / 255 * tint, out=region)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def write(img: np.ndarray, path: Path, rng: np.random.Generator) -> None:
    """PNG mostly; a few JPEG, grayscale and RGBA files, as a user's folder has."""
    r = rng.random()
    pil = Image.fromarray(img)
    if r < 0.05:
        pil.save(path.with_suffix(".jpg"), quality=90)
    elif r < 0.08:
        pil.convert("L").save(path)
    elif r < 0.11:
        pil.convert("RGBA").save(path)
    else:
        pil.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("digits", "glyphs"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=180, help="glyphs: images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hostile", action="store_true", help="add a corrupt file and a non-image file to train/")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty; choose a new folder")
    items, labels, classes = digits_items() if args.kind == "digits" else glyph_items(args.per_class, args.seed)
    rng = np.random.default_rng(args.seed)
    counts = {"train": 0, "val": 0, "test": 0}
    for label, name in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = round(0.15 * len(idx)), round(0.15 * len(idx))
        parts = {"val": idx[:n_val], "test": idx[n_val:n_val + n_test], "train": idx[n_val + n_test:]}
        for split, members in parts.items():
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            pool = [items[i] for i in members]  # clutter from the same split only
            for i in members:
                write(canvas(items[i], pool, rng), folder / f"{split}_{i:05d}.png", rng)
                counts[split] += 1
    if args.hostile:
        (args.out / "train" / classes[0] / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        (args.out / "train" / classes[1] / "notes.txt").write_text("not an image\n")
    print(f"{args.kind}: {counts} images of {len(classes)} classes in {args.out}")


if __name__ == "__main__":
    main()
