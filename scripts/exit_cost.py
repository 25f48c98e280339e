"""What early exits cost a SAC-ViT checkpoint on a labelled folder, threshold aside.

    python scripts/exit_cost.py MODEL.pt [MODEL.pt ...] --data FOLDER [--shares 0.1,0.15,0.2] [--json OUT]

For each checkpoint: top-1 of the SAC head alone (no exit), and top-1 when exactly the given share
of the folder's images exits, the ones the EE head is most confident on (the best any threshold can
do at that exit rate, chosen with hindsight on these images). The gap between the two is what the
EE head's confidence ranking costs; a threshold tuned on a small held-out share can only do worse.
Used for issue 22's note: it separates "the threshold is badly chosen" from "the EE head's most
confident answers are wrong more often than the SAC head's".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.folders import ImageFolderSource
from sacvit_edge.train import predict_dataset


def exit_cost(model_path: Path, data: Path, shares: list[float]) -> dict:
    model = load_checkpoint(model_path).model
    records = predict_dataset(model, ImageFolderSource(data))
    labels, sac, ee = records.labels, records.sac_pred, records.ee_probs
    order = np.argsort(-ee.max(1), kind="stable")  # most confident first
    row = {"model": str(model_path), "images": int(len(labels)), "top1_sac": float((sac == labels).mean() * 100),
           "top1_ee": float((ee.argmax(1) == labels).mean() * 100), "at_share": {}}
    for share in shares:
        n = int(round(share * len(labels)))
        pred = sac.copy()
        pred[order[:n]] = ee.argmax(1)[order[:n]]
        row["at_share"][str(share)] = {"top1": float((pred == labels).mean() * 100),
                                       "ee_right_of_exited": float((ee.argmax(1)[order[:n]] == labels[order[:n]]).mean() * 100),
                                       "sac_right_of_exited": float((sac[order[:n]] == labels[order[:n]]).mean() * 100)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--shares", default="0.1,0.15,0.2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shares = [float(s) for s in args.shares.split(",")]
    rows = [exit_cost(m, args.data, shares) for m in args.models]
    table = Table(title=f"exit cost on {args.data}")
    for col in ["model", "SAC head", "EE head"] + [f"exit {s:.0%}" for s in shares]:
        table.add_column(col)
    for r in rows:
        table.add_row(Path(r["model"]).name, f"{r['top1_sac']:.2f}", f"{r['top1_ee']:.2f}",
                      *[f"{r['at_share'][str(s)]['top1']:.2f}" for s in shares])
    if len(rows) > 1:
        table.add_row("mean", f"{np.mean([r['top1_sac'] for r in rows]):.2f}", f"{np.mean([r['top1_ee'] for r in rows]):.2f}",
                      *[f"{np.mean([r['at_share'][str(s)]['top1'] for r in rows]):.2f}" for s in shares])
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
