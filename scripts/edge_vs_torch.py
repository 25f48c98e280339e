"""Issue 3's measurement, in one run: EdgeClassifier on ONNX Runtime vs the PyTorch model on the
whole cluttered Fashion-MNIST test split, at batch 1 and batch 32 (model time only).

    .venv/bin/python scripts/edge_vs_torch.py [--limit N] > results/edge_vs_torch.json
"""

import argparse
import json
import time

import numpy as np
import torch

from sacvit_edge import EdgeClassifier
from sacvit_edge.bench.run import eval_images
from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.cli import bundled_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--limit", type=int, default=10000)
args = parser.parse_args()
ckpt_path = bundled_checkpoint()
ck = load_checkpoint(ckpt_path)
x, y = eval_images(args.limit, ck.mean, ck.std)
torch.set_num_threads(2)


def edge_runner(backend):
    clf = EdgeClassifier(ckpt_path, backend=backend)
    return lambda b: clf.run(b).probs


out = {"checkpoint": str(ckpt_path), "images": int(len(y)), "eta": ck.eta, "rows": []}
exit_rate = float(EdgeClassifier(ckpt_path, backend="onnxruntime").run(x[:2000]).exited.mean())
for name, run in (("EdgeClassifier onnxruntime", edge_runner("onnxruntime")),
                  ("EdgeClassifier pytorch backend (eager reference)", edge_runner("pytorch"))):
    for batch in (1, 32):
        run(x[:batch])  # warm-up
        preds, t0 = [], time.perf_counter()
        for i in range(0, len(x), batch):
            preds.append(run(np.ascontiguousarray(x[i:i + batch])).argmax(1))
        wall = time.perf_counter() - t0
        out["rows"].append({"runner": name, "batch": batch, "top1": float((np.concatenate(preds) == y).mean() * 100),
                            "images_per_s": len(y) / wall})
out["exit_rate_first_2000"] = exit_rate
print(json.dumps(out, indent=2))
