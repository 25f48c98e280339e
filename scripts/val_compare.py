"""Compare checkpoints on the held-out validation canvases (the last 5,000 official train items,
layout seed 1: never the test split), as tune-eta sees them.

    .venv/bin/python scripts/val_compare.py a.pt b.pt [--eta 0.75] [--json out.json]
"""

import argparse
import json
from pathlib import Path

from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.data import ClutteredFashionMNIST
from sacvit_edge.train import evaluate

ap = argparse.ArgumentParser()
ap.add_argument("checkpoints", nargs="+", type=Path)
ap.add_argument("--eta", type=float, default=0.75)
ap.add_argument("--json", type=Path)
args = ap.parse_args()
val = ClutteredFashionMNIST("train", seed=1, offset=55000, limit=5000)
rows = []
for path in args.checkpoints:
    ck = load_checkpoint(path)
    res = evaluate(ck.model, val, eta=args.eta)
    cfg = ck.config
    rows.append({"checkpoint": str(path), "gca_start_block": cfg.gca_start_block, "reuse_input": cfg.reuse_input,
                 **{k: res[k] for k in ("images", "eta", "top1_ee", "top1_sac", "top1", "exit_rate", "mean_target_tokens",
                                        "gflops")}})
    print(json.dumps(rows[-1]))
if args.json:
    args.json.write_text(json.dumps(rows, indent=2))
