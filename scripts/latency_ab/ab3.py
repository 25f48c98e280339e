"""Batch-1 twin sessions (batch axis fixed) against dynamic ones, interleaved in one process:

    .venv/bin/python scripts/latency_ab/ab3.py EXPORT_DIR DEIT_ONNX THREADS(0=default) ROUNDS

See make_inputs.py. Behind the "batch-1 twin sessions" row of docs/latency.md.
"""
import time, sys, numpy as np
import onnxruntime as ort
from pathlib import Path
from sacvit_edge.runtimes.ort import session_options
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
d = Path(sys.argv[1]); deit_path = sys.argv[2]; threads = None if sys.argv[3] == "0" else int(sys.argv[3])
def o(b1, spin=False):
    x = session_options(threads, spinning=spin)
    if b1: x.add_free_dimension_override_by_name("batch", 1)
    return x
clfs = {}
for b1 in (False, True):
    c = EdgeClassifier(d, backend="onnxruntime", threads=threads)
    c.backend.ee1 = c.backend.sac1 = None  # the sessions under test serve batch 1 (these runs predate the twins)
    c.backend.ee = ort.InferenceSession(str(d / "ee.onnx"), o(b1), providers=["CPUExecutionProvider"])
    c.backend.sac = ort.InferenceSession(str(d / "sac.onnx"), o(b1), providers=["CPUExecutionProvider"])
    clfs[b1] = (c, ort.InferenceSession(deit_path, o(b1, True), providers=["CPUExecutionProvider"]))
size = clfs[False][0].manifest.size
rng = np.random.default_rng(0)
x = [rng.standard_normal((1,3,size,size)).astype(np.float32) for _ in range(8)]
pat = np.load("/tmp/pattern.npz"); ex, ks = pat["exited"], pat["counts"]
out = {b1: {"sac": [], "deit": [], "ee": [], "kmax": []} for b1 in clfs}
for rnd in range(int(sys.argv[4])):
    for b1, (clf, deit) in clfs.items():
        n = 20
        t = time.perf_counter()
        for i in range(n):
            j = (rnd * n + i) % len(ex)
            clf.run(x[i % 8], imposed=ImposedDecisions(ex[j][None], ks[j][None]))
        out[b1]["sac"].append((time.perf_counter() - t) / n * 1e3)
        t = time.perf_counter()
        for i in range(n): deit.run(None, {"image": x[i % 8]})
        out[b1]["deit"].append((time.perf_counter() - t) / n * 1e3)
        t = time.perf_counter()
        for i in range(n): clf.run(x[i % 8], imposed=ImposedDecisions(np.array([True]), np.array([0])))
        out[b1]["ee"].append((time.perf_counter() - t) / n * 1e3)
        t = time.perf_counter()
        for i in range(5): clf.run(x[i % 8], imposed=ImposedDecisions(np.array([False]), np.array([25])))
        out[b1]["kmax"].append((time.perf_counter() - t) / 5 * 1e3)
for b1, r in out.items():
    print("static b1" if b1 else "dynamic  ", {k: round(float(np.median(v[1:])), 2) for k, v in r.items()}, "speedup", round(np.median(r["deit"][1:]) / np.median(r["sac"][1:]), 2))
