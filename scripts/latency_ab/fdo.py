"""Node counts after ONNX Runtime's optimisation and SAC/EE call times with the batch (and k)
axes fixed by free-dimension overrides, and with 1 or 2 threads, spinning on or off:

    .venv/bin/python scripts/latency_ab/fdo.py EXPORT_DIR

Behind the node counts (361 -> 219, 505 -> 332) in docs/latency.md.
"""
import time, sys, numpy as np, onnxruntime as ort
from pathlib import Path
from sacvit_edge.runtimes.ort import session_options
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
d = Path(sys.argv[1])
def sess(p, over=None, spin=False, path=None):
    o = session_options(None, spinning=spin)
    for k, v in (over or {}).items(): o.add_free_dimension_override_by_name(k, v)
    if path: o.optimized_model_filepath = path
    return ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"])
def bench(s, feeds, n=300):
    for _ in range(20): s.run(None, feeds)
    t = []
    for _ in range(n):
        a = time.perf_counter(); s.run(None, feeds); t.append((time.perf_counter()-a)*1e3)
    return round(float(np.mean(t)),3), round(float(np.median(t)),3)
clf = EdgeClassifier(d, backend="onnxruntime")
size = clf.manifest.size
x = np.random.default_rng(0).standard_normal((1,3,size,size)).astype(np.float32)
rec = []
orig = clf.backend.run_sac_feeds
clf.backend.run_sac_feeds = lambda feeds: (rec.append(feeds), orig(feeds))[1]
clf.run(x, imposed=ImposedDecisions(np.array([False]), np.array([9])))
names = ["target_patches", "target_idx", "nontarget_idx", "ee_final", "ee_hidden", "target_keep", "nontarget_keep"]
sac1 = rec[-1]
import onnx
for label, over in (("dyn", {}), ("b1", {"batch": 1}), ("b1k9", {"batch": 1, "k": 9, "four_k": 36, "n_rest": 40})):
    for stage, feeds in (("ee", {"image": x}), ("sac", sac1)):
        if stage == "ee" and "k" in over: continue
        p = f"/tmp/o_{stage}_{label}.onnx"
        s = sess(d / f"{stage}.onnx", over, path=p)
        print(stage, label, "nodes", len(onnx.load(p).graph.node), bench(s, feeds), "spin", bench(sess(d / f"{stage}.onnx", over, True), feeds))
print("---- threads")
for th in (1, 2):
    for spin in (False, True):
        o = session_options(th, spinning=spin)
        for stage, feeds in (("ee", {"image": x}), ("sac", sac1)):
            s = ort.InferenceSession(str(d / f"{stage}.onnx"), o, providers=["CPUExecutionProvider"])
            print(stage, "threads", th, "spin", spin, bench(s, feeds))
