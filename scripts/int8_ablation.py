"""Which operators INT8 may quantise: accuracy and speed of three Q/DQ variants of the shipped
model, one run (ONNX Runtime CPU).

    .venv/bin/python scripts/int8_ablation.py [--cal-images 1000] [--test-images 3000] -o results/int8

Variants: matmul (MatMul/Gemm/Conv quantised, both classifier heads fp32: what `calibrate
--int8` makes), matmul+heads (the heads quantised too), all-ops (every operator type ONNX
Runtime's quantiser supports, heads fp32). For each: top-1 of the EE head, of the SAC stage
(every image through it) and agreement with fp32 on the test split, and images/s at batch 32
with the fp32 model's exit pattern imposed. Writes int8_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from sacvit_edge.calibration.calibrate import write_calibration
from sacvit_edge.calibration.collect import collect
from sacvit_edge.calibration.int8 import RecordingBackend, ee_feeds, quantize_graph
from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.datasets import open_source
from sacvit_edge.export.bundle import export_checkpoint
from sacvit_edge.manifest import CALIBRATION_FORMAT, CALIBRATION_VERSION, read_manifest

from int8_report import images_per_s  # noqa: E402 - the same timing as the report (scripts/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"matmul": dict(exclude_heads=True), "matmul+heads": dict(exclude_heads=False),
            "all-ops": dict(exclude_heads=True, op_types=None)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cal-images", type=int, default=1000)
    ap.add_argument("--test-images", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "results" / "int8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="int8-ablation-"))
    base = export_checkpoint(REPO / "checkpoints" / "sacvit_tiny_112.pt", work / "fp32").directory
    manifest = read_manifest(base)
    clf = EdgeClassifier(base, backend="onnxruntime", backend_wrapper=lambda opened: RecordingBackend(opened, limit=64))
    rec = clf.backend  # the RecordingBackend: the SAC inputs the fp32 classifier really feeds
    cal = collect(clf, open_source(None, "calibration", limit=args.cal_images), 32)
    test = open_source(None, "test", limit=args.test_images)
    fp32 = EdgeClassifier(base, backend="onnxruntime")
    ref = collect(fp32, test, 64)
    exited = ref.records.exited(fp32.eta)
    counts = np.where(exited, 0, ref.records.counts)
    x = ref.sample
    rows = {"fp32": {"top1_ee": ref.records.top1(ref.records.ee_pred), "top1_sac": ref.records.top1(ref.records.sac_pred),
                     "agree_sac": 1.0, "images_per_s": images_per_s(fp32, x, exited[:len(x)], counts[:len(x)], args.batch)}}
    for name, opts in VARIANTS.items():
        qdir = work / name
        qdir.mkdir()
        kept = {}
        for stage, feeds in (("ee", ee_feeds(cal.sample)), ("sac", rec.sac_feeds)):
            kept[stage] = quantize_graph(base / f"{stage}.onnx", qdir / f"{stage}.int8.onnx", feeds, **opts)
        report = {"format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION,
                  "checkpoint_fingerprint": manifest.checkpoint_fingerprint, "manifest_sha256": manifest.content_sha256,
                  "precisions": {"fp32": {"ee_file": "ee.onnx", "sac_file": "sac.onnx", "eta": fp32.eta},
                                 "int8": {"ee_file": "ee.int8.onnx", "sac_file": "sac.int8.onnx", "eta": fp32.eta}}}
        out = work / f"{name}-dir"
        write_calibration(base, out, report, {"ee.int8.onnx": qdir / "ee.int8.onnx", "sac.int8.onnx": qdir / "sac.int8.onnx"})
        q = EdgeClassifier(out, backend="onnxruntime", precision="int8")
        got = collect(q, test, 64).records
        rows[name] = {"top1_ee": got.top1(got.ee_pred), "top1_sac": got.top1(got.sac_pred),
                      "agree_sac": float((got.sac_pred == ref.records.sac_pred).mean()),
                      "agree_ee": float((got.ee_pred == ref.records.ee_pred).mean()),
                      "fp32_nodes": kept, "images_per_s": images_per_s(q, x, exited[:len(x)], counts[:len(x)], args.batch)}
        q.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_ablation.json").write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "rows": rows},
                                                            indent=2, default=str))
    lines = [f"| variant | top-1 EE % | top-1 SAC % | SAC agrees with fp32 | img/s @{args.batch} |", "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['top1_ee']:.2f} | {r['top1_sac']:.2f} | {r['agree_sac']:.3f} | {r['images_per_s']:.0f} |")
    console.print("\n".join(lines))


if __name__ == "__main__":
    main()
