"""The attention graphs (ONNX Attention operator, opset 23) against the opset-17 graphs, both
methods, interleaved in one process, at batch 1 and 32 (issue 21; docs/latency.md):

    .venv/bin/python scripts/latency_ab/attention_graphs.py [--geometry tiny_112|deit_ti_224|deit_s_224]
                                                            [--rounds 8] [--threads 1] [--json out.json]

Both SAC-ViT graph sets come from one export of the same checkpoint (the shipped one at tiny_112,
untrained weights at the DeiT geometries), and DeiT gets the same two graph styles. Frames follow
the shipped model's exit decisions and target counts on 256 test canvases at its eta
(ImposedDecisions). Per round and variant: 64 SAC-ViT frames, 64 DeiT frames, 16 no-exit frames
at k_max, 32 exit frames, then batch-32 throughput; medians over rounds. SAC-ViT runs with
`--threads` intra-op threads (calibrate's batch-1 choice on this machine is 1), DeiT with its own
best (ONNX Runtime's default threads, spinning), so the ratios compare each at its best.
"""
import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sacvit_edge.bench.run import eval_images
from sacvit_edge.checkpoint import load_checkpoint, save_checkpoint
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
from sacvit_edge.config import preset
from sacvit_edge.export.bundle import export_checkpoint
from sacvit_edge.export.torch2onnx import export_single
from sacvit_edge.model import build_model
from sacvit_edge.runtimes.ort import OrtBackend, OrtSingle

ap = argparse.ArgumentParser()
ap.add_argument("--geometry", default="tiny_112", choices=["tiny_112", "deit_ti_224", "deit_s_224"])
ap.add_argument("--rounds", type=int, default=8)
ap.add_argument("--threads", type=int, default=1, help="SAC-ViT intra-op threads; 0: ONNX Runtime's default")
ap.add_argument("--json", type=Path)
args = ap.parse_args()
logging.disable(logging.WARNING)

small = load_checkpoint("checkpoints/sacvit_tiny_112.pt")
x_small, _ = eval_images(256, small.mean, small.std)
tmp = Path(tempfile.mkdtemp(prefix="sacvit-ab-"))
shipped = export_checkpoint("checkpoints/sacvit_tiny_112.pt", tmp / "shipped")
pattern = EdgeClassifier(shipped.directory, backend="onnxruntime").run(x_small, eta=small.eta)
exited, counts = pattern.exited, pattern.counts
if args.geometry == "tiny_112":
    ckpt, deit_model, x = shipped.directory, load_checkpoint("checkpoints/deit_tiny_112.pt").model, x_small
else:
    torch.manual_seed(0)
    extra = {"embed_dim": 192, "num_heads": 3} if args.geometry == "deit_ti_224" else {}
    cfg = preset("deit_s_224", num_classes=10, k_min=small.config.k_min, k_max=small.config.k_max, **extra)
    path = save_checkpoint(tmp / "geo.pt", build_model(cfg), small.class_names)
    ckpt = export_checkpoint(path, tmp / "geo").directory
    deit_model = build_model(cfg.replace(arch="deit"))
    x = np.random.default_rng(0).standard_normal((256, 3, 224, 224)).astype(np.float32)

variants = {}
for style, files in (("opset17", ("ee.onnx", "sac.onnx")), ("attention", ("ee.attention.onnx", "sac.attention.onnx"))):
    threads = args.threads or None
    clf = EdgeClassifier(ckpt, backend="onnxruntime", threads=threads)
    pipe = clf._pipeline()
    pipe.backend = OrtBackend(Path(ckpt) / files[0], Path(ckpt) / files[1], threads=threads)  # this graph set
    deit = OrtSingle(export_single(deit_model, tmp / f"deit_{style}.onnx",
                                   attention="onnx" if style == "attention" else "explicit"))
    variants[style] = (clf, deit)

hi = small.config.k_max
one = [np.ascontiguousarray(x[i][None]) for i in range(len(x))]
res = {s: {k: [] for k in ("sac_b1", "deit_b1", "no_exit_b1", "exit_b1", "sac_b32", "deit_b32")} for s in variants}
for r in range(args.rounds):
    for style, (clf, deit) in variants.items():
        R = res[style]

        def timed(fn, n):
            t = time.perf_counter()
            for i in range(n):
                fn(i)
            return (time.perf_counter() - t) / n * 1e3

        R["sac_b1"].append(timed(lambda i: clf.run(one[(r * 64 + i) % 256], imposed=ImposedDecisions(
            exited[(r * 64 + i) % 256][None], counts[(r * 64 + i) % 256][None])), 64))
        R["deit_b1"].append(timed(lambda i: deit.run(one[(r * 64 + i) % 256]), 64))
        R["no_exit_b1"].append(timed(lambda i: clf.run(one[i], imposed=ImposedDecisions(np.array([False]),
                                                                                       np.array([hi]))), 16))
        R["exit_b1"].append(timed(lambda i: clf.run(one[i], imposed=ImposedDecisions(np.array([True]),
                                                                                    np.array([0]))), 32))
        R["sac_b32"].append(timed(lambda i: clf.run(x[i * 32:(i + 1) * 32], imposed=ImposedDecisions(
            exited[i * 32:(i + 1) * 32], counts[i * 32:(i + 1) * 32])), 8) / 32)
        R["deit_b32"].append(timed(lambda i: deit.run(x[i * 32:(i + 1) * 32]), 8) / 32)
out = {"geometry": args.geometry, "threads_sac": args.threads, "rounds": args.rounds}
for style, R in res.items():
    m = {k: round(float(np.median(v[1:])), 4) for k, v in R.items()}
    m["speedup_b1"] = round(m["deit_b1"] / m["sac_b1"], 3)
    m["speedup_b32"] = round(m["deit_b32"] / m["sac_b32"], 3)
    out[style] = m
    print(style, json.dumps(m))
import shutil
shutil.rmtree(tmp, ignore_errors=True)
if args.json:
    args.json.write_text(json.dumps(out, indent=2))
