"""Cluster attention as three calls (the model) vs one call with a block-diagonal mask:

    .venv/bin/python scripts/latency_ab/masked.py CHECKPOINT TAG

Exports the SAC graph both ways, checks equal answers, times the SAC engine alone
(interleaved). Behind the "block-diagonal mask" row of docs/latency.md.
"""
import sys, time, numpy as np, torch
from pathlib import Path
import onnxruntime as ort
from sacvit_edge.model import Attention
from sacvit_edge.export.bundle import export_checkpoint
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
from sacvit_edge.runtimes.ort import session_options

def masked_clusters(self, x, num_targets, keep=None):
    q, k, v = self._qkv(x)
    L = x.shape[1]
    t_end = 1 + num_targets
    idx = torch.arange(L, device=x.device)
    is_t = (idx >= 1) & (idx < t_end)
    is_n = idx >= t_end
    cls = idx == 0
    allowed = cls[:, None] | cls[None, :] | (is_t[:, None] & is_t[None, :]) | (is_n[:, None] & is_n[None, :])  # (L, L)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    m = allowed[None, None]
    if keep is not None:
        m = m & keep[:, None, None, :]
    scores = scores.masked_fill(~m, float("-inf"))
    return self._out(scores.softmax(-1) @ v)

ck = sys.argv[1]; tag = sys.argv[2]
split_dir = export_checkpoint(ck, Path(f"/tmp/att_{tag}_split")).directory
orig = Attention.forward_clusters
Attention.forward_clusters = masked_clusters
masked_dir = export_checkpoint(ck, Path(f"/tmp/att_{tag}_masked")).directory
Attention.forward_clusters = orig
a = EdgeClassifier(split_dir, backend="onnxruntime"); b = EdgeClassifier(masked_dir, backend="onnxruntime")
size = a.manifest.size
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 3, size, size)).astype(np.float32)
for k in (4, 9, 25):
    imp = ImposedDecisions(np.zeros(32, bool), np.full(32, k))
    ra, rb = a.run(x, imposed=imp), b.run(x, imposed=imp)
    print("k", k, "max prob diff", float(np.abs(ra.probs - rb.probs).max()))
# time: SAC engine only, batch 1 and 32, k=9 and k=25, interleaved
rec = {}
for name, clf in (("split", a), ("masked", b)):
    got = []
    orig_run = clf.backend.run_sac_feeds
    clf.backend.run_sac_feeds = lambda feeds, got=got, orig_run=orig_run: (got.append(feeds), orig_run(feeds))[1]
    for bs in (1, 32):
        for k in (9, 25):
            clf.run(x[:bs], imposed=ImposedDecisions(np.zeros(bs, bool), np.full(bs, k)))
    clf.backend.run_sac_feeds = orig_run
    rec[name] = got
names = ["target_patches", "target_idx", "nontarget_idx", "ee_final", "ee_hidden", "target_keep", "nontarget_keep"]
sess = {n: ort.InferenceSession(str(d / "sac.onnx"), session_options(None), providers=["CPUExecutionProvider"]) for n, d in (("split", split_dir), ("masked", masked_dir))}
for ci, label in enumerate(("b1 k9", "b1 k25", "b32 k9", "b32 k25")):
    t = {"split": [], "masked": []}
    reps = 40 if "b1" in label else 4
    for r in range(6):
        for n in ("split", "masked"):
            feeds = rec[n][ci]
            s0 = time.perf_counter()
            for _ in range(reps): sess[n].run(None, feeds)
            t[n].append((time.perf_counter() - s0) / reps * 1e3)
    print(tag, label, {n: round(float(np.median(v[1:])), 3) for n, v in t.items()})
