"""fp16 graphs vs fp32 with ONNX Runtime on the CPU: what TensorRT 11 gets for --precision fp16.

    python scripts/fp16_check.py [EXPORT_DIR] [--limit N] [--out results/fp16_check.json]

Default: a copy of the bundled export (sacvit_edge/assets/sacvit_tiny_112) on the whole built-in
test split (10,000 images). Prints a table and writes JSON. The fp16 graphs are derived with
export/graphs.fp16_graph (fp32 inputs/outputs; LayerNorm, Softmax, reductions and the heads fp32).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sacvit_edge.datasets import BuiltinSource
from sacvit_edge.calibration.precision import compare_precisions
from sacvit_edge.export.graphs import FP16_KEEP_FP32_OPS, ensure_fp16_graphs
from sacvit_edge.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", nargs="?", type=Path, default=REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "fp16_check.json")
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as work:
        d = shutil.copytree(args.export, Path(work) / "export")  # the fp16 graphs are added to the copy
        ensure_fp16_graphs(read_manifest(d))
        source = BuiltinSource("test", limit=args.limit)
        t0 = time.perf_counter()
        with Progress(console=console) as progress:
            task = progress.add_task("fp16 vs fp32 (ONNX Runtime, CPU)", total=len(source))
            res = compare_precisions(d, source, progress=lambda n: progress.advance(task, n))
    res.update({"export": str(args.export), "kept_fp32_ops": list(FP16_KEEP_FP32_OPS), "seconds": time.perf_counter() - t0})
    table = Table("measure", "value", title=f"fp16 vs fp32 on {res['images']} test images (ONNX Runtime CPU)")
    for key in ("same_top1_at_eta", "same_top1_never_exit", "max_abs_logit_diff_ee", "max_abs_logit_diff_sac",
                "top1_fp32", "top1_fp16"):
        table.add_row(key, f"{res[key]:.4f}" if "top1" in key else f"{res[key]:.5f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
