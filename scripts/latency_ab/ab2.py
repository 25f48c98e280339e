"""Session options at batch 1, one process per variant (global thread pools are process-wide):

    .venv/bin/python scripts/latency_ab/ab2.py EXPORT_DIR DEIT_ONNX VARIANT ROUNDS

VARIANT: now, spin, 1thread, global_spin, global_nospin, 1thread_b1, global_spin_b1. Prints SAC-ViT's
mean per frame over the shipped exit pattern, DeiT's, and the no-exit frame (alternating blocks).
See make_inputs.py. Behind the thread / spinning / global-pool rows of docs/latency.md.
"""
import time, sys, json, numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as C
variant = sys.argv[3]
V = {"now": dict(), "spin": dict(spin=True), "1thread": dict(threads=1), "global_spin": dict(spin=True, glob=True),
     "global_nospin": dict(glob=True), "1thread_b1": dict(threads=1, b1=True), "global_spin_b1": dict(spin=True, glob=True, b1=True)}
kw = V[variant]
if kw.get("glob"): C.set_global_thread_pool_sizes(2, 1)
from pathlib import Path
from sacvit_edge.runtimes.ort import session_options
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
d = Path(sys.argv[1]); deit_path = sys.argv[2]
o = session_options(kw.get("threads"), spinning=kw.get("spin", False))
if kw.get("b1"): o.add_free_dimension_override_by_name("batch", 1)
if kw.get("glob"): o.use_per_session_threads = False
import sacvit_edge.runtimes.ort as m
_orig = m.session_options
m.session_options = lambda threads=None, spinning=False: o
clf = EdgeClassifier(d, backend="onnxruntime")
clf.backend.ee1 = clf.backend.sac1 = None  # the sessions under test serve batch 1 too (these runs predate the twins)
deit = ort.InferenceSession(deit_path, o, providers=["CPUExecutionProvider"])
size = clf.manifest.size
rng = np.random.default_rng(0)
x = [rng.standard_normal((1,3,size,size)).astype(np.float32) for _ in range(16)]
pat = np.load("/tmp/pattern.npz"); ex, ks = pat["exited"], pat["counts"]
res, resd, kmax = [], [], []
for rnd in range(int(sys.argv[4])):
    t = time.perf_counter()
    for i in range(40):
        j = (rnd * 40 + i) % len(ex)
        clf.run(x[i % 16], imposed=ImposedDecisions(ex[j][None], ks[j][None]))
    res.append((time.perf_counter() - t) / 40 * 1e3)
    t = time.perf_counter()
    for i in range(40):
        deit.run(None, {"image": x[i % 16]})
    resd.append((time.perf_counter() - t) / 40 * 1e3)
    t = time.perf_counter()
    for i in range(10):
        clf.run(x[i % 16], imposed=ImposedDecisions(np.array([False]), np.array([clf.k_range[1]])))
    kmax.append((time.perf_counter() - t) / 10 * 1e3)
a, b, c = np.median(res[2:]), np.median(resd[2:]), np.median(kmax[2:])
print(json.dumps({"variant": variant, "sac_mean_ms": round(a, 3), "deit_ms": round(b, 3), "kmax_ms": round(c, 3), "speedup": round(b / a, 2)}))
