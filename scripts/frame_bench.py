"""A camera frame through EdgeClassifier.predict: preprocessing against the model's own time.

    .venv/bin/python scripts/frame_bench.py [--reps 30] [--json out.json]

Frames are uint8 HxWx3 BGR as OpenCV delivers them (640x480, 1280x720, 1920x1080; textured
canvases made from the bundled samples). For each size and resize mode: the median over --reps
calls of `timings["preprocess"]` (resample "exact", the default, and "fast") and of the model
(ee + host + sac) on the bundled export, and,
timed alternately in the same run, the earlier path (the whole frame converted BGR->RGB by
fancy indexing, then one Pillow bilinear pass) for the ratio. Prints a table; --json writes it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from sacvit_edge import EdgeClassifier
from sacvit_edge.images import normalize

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SIZES = ((640, 480), (1280, 720), (1920, 1080))


def frame_of(width: int, height: int, seed: int = 0) -> np.ndarray:
    samples = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
    canvas = Image.open(samples[seed % len(samples)]).convert("RGB").resize((width, height), Image.BICUBIC)
    noise = np.random.default_rng(seed).integers(0, 24, (height, width, 3), dtype=np.uint8)
    return np.ascontiguousarray((np.asarray(canvas) // 2 + noise)[..., ::-1])  # BGR, like a camera


def earlier_path(frame: np.ndarray, size: int, mean, std, mode: str) -> np.ndarray:
    """What preprocess did before: swap on the full frame (a copy), fit, one resampling pass."""
    rgb = frame[..., [2, 1, 0]]
    h, w = rgb.shape[:2]
    side = min(h, w) if mode == "center_crop" else max(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    if mode == "center_crop":
        rgb = np.ascontiguousarray(rgb[y0:y0 + side, x0:x0 + side])
    elif mode == "letterbox":
        square = np.zeros((side, side, 3), np.uint8)
        square[-y0:-y0 + h, -x0:-x0 + w] = rgb
        rgb = square
    fitted = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(normalize(fitted[None].transpose(0, 3, 1, 2), mean, std))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for mode in ("stretch", "letterbox", "center_crop"):
        clf = EdgeClassifier(EXPORT, backend="onnxruntime", color="bgr", resize=mode, threads=1)
        fast = EdgeClassifier(EXPORT, backend="onnxruntime", color="bgr", resize=mode, threads=1, resample="fast")
        m = clf.manifest
        for width, height in SIZES:
            frame = frame_of(width, height)
            for _ in range(3):
                clf.predict(frame)
                fast.predict(frame)
            pre, pre_fast, model, old = [], [], [], []
            for _ in range(args.reps):  # alternate: the machine's speed drifts
                p = clf.predict(frame)
                pre.append(p.timings["preprocess"])
                model.append(p.timings["ee"] + p.timings["host"] + p.timings["sac"])
                pre_fast.append(fast.predict(frame).timings["preprocess"])
                t = time.perf_counter()
                earlier_path(frame, m.size, m.mean, m.std, mode)
                old.append((time.perf_counter() - t) * 1e3)
            rows.append({"mode": mode, "frame": f"{width}x{height}", "preprocess_ms": float(np.median(pre)),
                         "preprocess_fast_ms": float(np.median(pre_fast)),
                         "earlier_preprocess_ms": float(np.median(old)), "model_ms": float(np.median(model)),
                         "speedup": float(np.median(old) / np.median(pre)),
                         "preprocess_over_model": float(np.median(pre) / np.median(model)),
                         "preprocess_fast_over_model": float(np.median(pre_fast) / np.median(model))})
        clf.close()
        fast.close()
    table = Table("mode", "frame", "preprocess ms", "fast ms", "earlier ms", "speedup", "model ms", "pre / model",
                  "fast / model",
                  title=f"BGR frame -> EdgeClassifier.predict, median of {args.reps} (ONNX Runtime, 1 thread; "
                        "fast: resample='fast')")
    for r in rows:
        table.add_row(r["mode"], r["frame"], f"{r['preprocess_ms']:.2f}", f"{r['preprocess_fast_ms']:.2f}",
                      f"{r['earlier_preprocess_ms']:.2f}", f"{r['speedup']:.1f}x", f"{r['model_ms']:.2f}",
                      f"{r['preprocess_over_model']:.2f}", f"{r['preprocess_fast_over_model']:.2f}")
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
