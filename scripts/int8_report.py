"""INT8 vs fp32, one run: the shipped model (accuracy at each precision's own calibrated eta,
exit rate, speed) and the DeiT-S-224 geometry (speed only, untrained weights, the shipped
model's exit pattern and target counts imposed), on ONNX Runtime CPU.

    .venv/bin/python scripts/int8_report.py [--cal-images 2000] [--test-images 5000] -o results/int8

Writes int8_report.json and prints a Markdown table. Calibration uses the built-in
calibration split; accuracy is measured on the test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from sacvit_edge.calibration.calibrate import calibrate_export
from sacvit_edge.calibration.collect import collect
from sacvit_edge.calibration.sweep import Request
from sacvit_edge.checkpoint import load_checkpoint, save_checkpoint
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
from sacvit_edge.config import preset
from sacvit_edge.datasets import open_source
from sacvit_edge.export.bundle import export_checkpoint
from sacvit_edge.model import build_model

REPO = Path(__file__).resolve().parents[1]
console = Console()


def images_per_s(clf: EdgeClassifier, x: np.ndarray, exited: np.ndarray, counts: np.ndarray, batch: int) -> float:
    """images/s at `batch` over x with these decisions imposed (after one warm-up batch)."""
    n = (len(x) // batch) * batch
    imposed = [ImposedDecisions(exited[i:i + batch], counts[i:i + batch]) for i in range(0, n, batch)]
    clf.run(x[:batch], imposed=imposed[0])
    t0 = time.perf_counter()
    for j, i in enumerate(range(0, n, batch)):
        clf.run(x[i:i + batch], imposed=imposed[j])
    return n / (time.perf_counter() - t0)


def speed(clf: EdgeClassifier, x: np.ndarray, exited: np.ndarray, counts: np.ndarray, batch: int,
          iters1: int) -> dict[str, float]:
    """images/s at `batch` and mean / p50 ms at batch 1, with these decisions imposed."""
    ips = images_per_s(clf, x, exited, counts, batch)
    lat = []
    for i in range(iters1 + 10):
        s = time.perf_counter()
        clf.run(x[i % len(x)][None], imposed=ImposedDecisions(exited[i % len(x)][None], counts[i % len(x)][None]))
        if i >= 10:
            lat.append((time.perf_counter() - s) * 1e3)
    return {"images_per_s_b%d" % batch: ips, "mean_ms_b1": float(np.mean(lat)), "p50_ms_b1": float(np.median(lat))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cal-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=5000)
    ap.add_argument("--speed-images", type=int, default=256)
    ap.add_argument("--iters1", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "results" / "int8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="int8-report-"))
    result: dict = {"config": vars(args) | {"out": str(args.out)}}
    request = Request("max_drop", args.max_drop)

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("shipped model", total=None)
        step = lambda msg: progress.update(task, description=msg)  # noqa: E731
        shipped = export_checkpoint(REPO / "checkpoints" / "sacvit_tiny_112.pt", work / "shipped").directory
        cal = open_source(None, "calibration", limit=args.cal_images)
        rep = calibrate_export(shipped, cal, request, batch=args.batch, int8=True, timing_reps=3, on_step=step).report
        test = open_source(None, "test", limit=args.test_images)
        rows = {}
        pattern = None
        for precision in ("fp32", "int8"):
            step(f"test split, {precision}")
            clf = EdgeClassifier(shipped, backend="onnxruntime", precision=precision)
            got = collect(clf, test, 64)
            point = got.records.point(clf.eta, clf.manifest.cost)
            exited = got.records.exited(clf.eta)
            counts = np.where(exited, 0, got.records.counts)
            if pattern is None:
                pattern = (exited, counts)
            x = got.sample[: args.speed_images]
            rows[precision] = {"eta": clf.eta, "top1": point["top1"], "top1_ci95": point["top1_ci95"],
                               "exit_rate": point["exit_rate"], "gflops": point["gflops"],
                               "calibration_top1": rep["precisions"][precision]["chosen"]["top1"],
                               **speed(clf, x, exited[: len(x)], counts[: len(x)], args.batch, args.iters1)}
            clf.close()
        rows["int8"]["top1_at_fp32_eta"] = rep["precisions"]["int8"]["at_fp32_eta"]["top1"]
        rows["int8"]["fp32_nodes"] = rep["precisions"]["int8"]["fp32_nodes"]
        result["shipped"] = rows

        step("DeiT-S-224 geometry: export")
        small = load_checkpoint(REPO / "checkpoints" / "sacvit_tiny_112.pt")
        torch.manual_seed(0)
        big_cfg = preset("deit_s_224", num_classes=10, k_min=small.config.k_min, k_max=small.config.k_max)
        big = save_checkpoint(work / "deit_s_224.pt", build_model(big_cfg), small.class_names)
        big_dir = export_checkpoint(big, work / "deit_s").directory
        cal_big = open_source(None, "calibration", limit=256)
        calibrate_export(big_dir, cal_big, request, batch=args.batch, int8=True, timing_reps=1, on_step=step)
        exited, counts = pattern
        geo = {}
        for precision in ("fp32", "int8"):
            step(f"DeiT-S-224 geometry, {precision}")
            clf = EdgeClassifier(big_dir, backend="onnxruntime", precision=precision)
            x = collect(clf, open_source(None, "test", limit=args.speed_images), 64).sample
            geo[precision] = speed(clf, x, exited[: len(x)], counts[: len(x)], args.batch, max(20, args.iters1 // 4))
            clf.close()
        result["deit_s_224"] = geo

    b = args.batch
    for name in ("shipped", "deit_s_224"):
        r = result[name]
        r["int8_over_fp32_images_per_s"] = r["int8"][f"images_per_s_b{b}"] / r["fp32"][f"images_per_s_b{b}"]
        r["int8_over_fp32_b1_latency"] = r["fp32"]["mean_ms_b1"] / r["int8"]["mean_ms_b1"]
    (args.out / "int8_report.json").write_text(json.dumps(result, indent=2, default=float))
    s = result["shipped"]
    lines = [f"| model | precision | eta (own calibration) | top-1 % (test) | exit rate | img/s @{b} | mean ms @1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in ("fp32", "int8"):
        lines.append(f"| shipped tiny_112 | {p} | {s[p]['eta']:.3f} | {s[p]['top1']:.2f} | {s[p]['exit_rate']:.3f} | "
                     f"{s[p][f'images_per_s_b{b}']:.0f} | {s[p]['mean_ms_b1']:.2f} |")
    g = result["deit_s_224"]
    for p in ("fp32", "int8"):
        lines.append(f"| DeiT-S-224 geometry (untrained) | {p} | imposed | - | imposed | "
                     f"{g[p][f'images_per_s_b{b}']:.1f} | {g[p]['mean_ms_b1']:.2f} |")
    console.print("\n".join(lines))
    console.print(f"int8 / fp32 images/s @{b}: shipped {s['int8_over_fp32_images_per_s']:.2f}x, "
                  f"DeiT-S-224 {g['int8_over_fp32_images_per_s']:.2f}x; int8 top-1 at the fp32 eta "
                  f"{s['int8']['top1_at_fp32_eta']:.2f} (calibration split)")
    console.print(f"wrote {args.out / 'int8_report.json'}")


if __name__ == "__main__":
    main()
