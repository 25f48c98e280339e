"""Inputs of the interleaved A/B scripts in this folder (run first, from the repository root):

    .venv/bin/python scripts/latency_ab/make_inputs.py

Writes /tmp/pattern.npz (the shipped model's exit decisions and target counts on 256 test
canvases at its eta), /tmp/deit_tiny.onnx (the shipped DeiT baseline), and untrained SAC-ViT
exports plus DeiT graphs at DeiT-Ti-224 (/tmp/geo_ti, /tmp/geo_ti_deit.onnx) and DeiT-S-224
(/tmp/geo_s, /tmp/geo_s_deit.onnx). These scripts are the ad-hoc harnesses behind the
"interleaved A/B" numbers in docs/latency.md, kept so those numbers can be reproduced.
"""

from pathlib import Path

import numpy as np
import torch

from sacvit_edge.bench.run import eval_images
from sacvit_edge.checkpoint import load_checkpoint, save_checkpoint
from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.config import preset
from sacvit_edge.export.bundle import export_checkpoint
from sacvit_edge.export.torch2onnx import export_single
from sacvit_edge.model import build_model

small = load_checkpoint("checkpoints/sacvit_tiny_112.pt")
x, _ = eval_images(256, small.mean, small.std)
r = EdgeClassifier("sacvit_edge/assets/sacvit_tiny_112", backend="onnxruntime").run(x, eta=small.eta)
np.savez("/tmp/pattern.npz", exited=r.exited, counts=r.counts)
export_single(load_checkpoint("checkpoints/deit_tiny_112.pt").model, Path("/tmp/deit_tiny.onnx"))
for geo, kw in (("ti", dict(embed_dim=192, num_heads=3)), ("s", {})):
    torch.manual_seed(0)
    cfg = preset("deit_s_224", num_classes=10, k_min=small.config.k_min, k_max=small.config.k_max, **kw)
    p = save_checkpoint(Path(f"/tmp/geo_{geo}.pt"), build_model(cfg), small.class_names)
    export_checkpoint(p, Path(f"/tmp/geo_{geo}"))
    export_single(build_model(cfg.replace(arch="deit")), Path(f"/tmp/geo_{geo}_deit.onnx"))
print("wrote /tmp/pattern.npz, /tmp/deit_tiny.onnx, /tmp/geo_ti*, /tmp/geo_s*")
