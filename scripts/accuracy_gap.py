"""Issue 2's acceptance figure with its uncertainty: top-1 of the shipped SAC-ViT (early exit at
its default eta) minus the shipped DeiT baseline's, on the whole cluttered Fashion-MNIST test
split, with the paired standard error (both models see the same 10,000 canvases, so the
difference's noise comes only from the images on which they disagree).

    .venv/bin/python scripts/accuracy_gap.py > results/accuracy_gap.json
"""

import argparse
import json
import math

import numpy as np
import torch

from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.data import ClutteredFashionMNIST
from sacvit_edge.train import predict_dataset

parser = argparse.ArgumentParser()
parser.add_argument("--sac", default="checkpoints/sacvit_tiny_112.pt")
parser.add_argument("--deit", default="checkpoints/deit_tiny_112.pt")
parser.add_argument("--eta", type=float, default=None, help="default: the SAC checkpoint's")
parser.add_argument("--limit", type=int, default=None)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)

sac, deit = load_checkpoint(args.sac), load_checkpoint(args.deit)
eta = sac.eta if args.eta is None else args.eta
test = ClutteredFashionMNIST("test", limit=args.limit)
sac_preds, deit_preds = predict_dataset(sac.model, test), predict_dataset(deit.model, test)
assert np.array_equal(sac_preds.labels, deit_preds.labels)  # the same canvases, in the same order
a = sac_preds.final_pred(eta) == sac_preds.labels
b = deit_preds.sac_pred == deit_preds.labels
n = len(a)
diff = (a.astype(float) - b.astype(float))
gap = float(diff.mean() * 100)
se = float(diff.std(ddof=1) / math.sqrt(n) * 100)
print(json.dumps({
    "sac": args.sac, "deit": args.deit, "eta": eta, "images": n,
    "top1_sac": float(a.mean() * 100), "top1_deit": float(b.mean() * 100),
    "gap_points": gap, "paired_se_points": se, "ci95_points": [gap - 1.96 * se, gap + 1.96 * se],
    "only_sac_right": int((a & ~b).sum()), "only_deit_right": int((~a & b).sum()),
}, indent=2))
