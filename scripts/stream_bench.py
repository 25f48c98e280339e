"""EdgeClassifier.stream against the plain predict loop, batch 1, in one run.

    .venv/bin/python scripts/stream_bench.py [--frames 300] [--json results/stream_bench.json]

Frames: the bundled samples enlarged to 640x480 camera-sized uint8 arrays (decoding excluded,
fitting and normalising included), run through the shipped model's bundled export on ONNX
Runtime, from two sources: a file (every frame available at once: throughput) and a camera
paced at --camera-fps (latency as an app sees it). Latency runs from the moment a frame is
available to its Prediction. Each configuration runs twice, interleaved; the better run is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sacvit_edge import EdgeClassifier

ROOT = Path(__file__).resolve().parents[1]


def frames(n: int) -> list[np.ndarray]:
    samples = sorted((ROOT / "sacvit_edge" / "assets" / "samples").glob("*.png"))
    big = [np.asarray(Image.open(s).convert("RGB").resize((640, 480), Image.BILINEAR)) for s in samples]
    return [big[i % len(big)] for i in range(n)]


def paced(fs: list[np.ndarray], fps: float | None):
    """Frames as a source delivers them: frame i is available at t0 + i / fps (None: all at once,
    like a file). Yields (frame, time it became available)."""
    t0 = time.perf_counter()
    for i, f in enumerate(fs):
        due = t0 + i / fps if fps else time.perf_counter()
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.0005))
        yield f, due


def plain(clf: EdgeClassifier, fs: list[np.ndarray], fps: float | None) -> dict[str, float]:
    lat = []
    t0 = time.perf_counter()
    for f, available in paced(fs, fps):
        clf.predict(f)
        lat.append((time.perf_counter() - available) * 1e3)
    wall = time.perf_counter() - t0
    return {"fps": len(fs) / wall, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def streamed(clf: EdgeClassifier, fs: list[np.ndarray], fps: float | None, overlap: bool) -> dict[str, float]:
    s = clf.stream((f for f, _ in paced(fs, fps)), overlap=overlap, max_inflight=2)
    lat = []
    t0 = time.perf_counter()
    for _ in s:
        lat.append(s.monitor.last_ms)  # frame read -> result
    wall = time.perf_counter() - t0
    return {"fps": len(fs) / wall, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--camera-fps", type=float, default=150.0, help="the paced source's frame rate")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    fs = frames(args.frames)
    export = ROOT / "sacvit_edge" / "assets" / "sacvit_tiny_112"
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for threads in sorted({1, cpus}):
        clf = EdgeClassifier(export, backend="onnxruntime", threads=threads)
        for f in fs[:20]:
            clf.predict(f)  # warm-up
        for source_fps in (None, args.camera_fps):
            runs: dict[str, list] = {"plain loop": [], "stream, no overlap": [], "stream, EE/SAC overlap": []}
            for _ in range(2):
                runs["plain loop"].append(plain(clf, fs, source_fps))
                runs["stream, no overlap"].append(streamed(clf, fs, source_fps, overlap=False))
                runs["stream, EE/SAC overlap"].append(streamed(clf, fs, source_fps, overlap=True))
            for name, rs in runs.items():
                best = max(rs, key=lambda r: r["fps"]) if source_fps is None else min(rs, key=lambda r: r["p50_ms"])
                rows.append({"source": "file (always ahead)" if source_fps is None else f"camera at {source_fps:g} fps",
                             "mode": name, "ort_threads_per_session": threads, **best})
    base = {(r["source"], r["ort_threads_per_session"]): r["fps"] for r in rows if r["mode"] == "plain loop"}
    print(f"{len(fs)} frames of 640x480, batch 1, shipped tiny_112 export, ONNX Runtime, {cpus} CPUs")
    print("| source | mode | ORT threads/session | frames/s | vs plain loop | latency p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['mode']} | {r['ort_threads_per_session']} | {r['fps']:.0f} | "
              f"{r['fps'] / base[(r['source'], r['ort_threads_per_session'])]:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"frames": len(fs), "cpus": cpus, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
