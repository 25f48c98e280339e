"""What the Python around one batch-1 frame costs, layer by layer (issue 21):

    .venv/bin/python scripts/latency_ab/host_overhead.py EXPORT_DIR [--rounds 61] [--threads 1]

Arms, all on the same frame graph session and the export's own exit pattern on 256 test
canvases: the raw `InferenceSession.run` with prepared feeds; `OrtBackend.run_frame`; the
pipeline's `_run_frame`; `EdgeClassifier.run` (with ImposedDecisions, as the benchmark calls it).
Blocks of 64 calls per arm, alternating order; each arm's median paired difference to the raw
call is the Python it adds. Every NumPy or Python step right after an engine call runs on the
caches the engine evicted, so steps that take a microsecond warm take tens here.
"""
import argparse
import logging
import math
import time

import numpy as np

from sacvit_edge.bench.run import eval_images
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions

ap = argparse.ArgumentParser()
ap.add_argument("export")
ap.add_argument("--rounds", type=int, default=61)
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
logging.disable(logging.WARNING)

clf = EdgeClassifier(args.export, backend="onnxruntime", threads=args.threads)
if not clf.backend.has_frame:
    raise SystemExit(f"{args.export} has no frame graph (export it with this version)")
x, _ = eval_images(256, clf.manifest.mean, clf.manifest.std)
pattern = clf.run(x)
one = [np.ascontiguousarray(x[i][None]) for i in range(256)]
backend, pipeline = clf.backend, clf.pipeline
session = backend._frame_session()
imposed = [ImposedDecisions(pattern.exited[i][None], pattern.counts[i][None].astype(np.int64)) for i in range(256)]
eta_k = [(0.0, 0) if pattern.exited[i] else (math.inf, int(pattern.counts[i])) for i in range(256)]
feeds = [{"image": one[i], "eta": np.array(e, np.float32), "force_k": np.array(k, np.int64)} for i, (e, k) in enumerate(eta_k)]
arms = {"session.run": lambda i: session.run(None, feeds[i]),
        "backend.run_frame": lambda i: backend.run_frame(one[i], *eta_k[i]),
        "pipeline._run_frame": lambda i: pipeline._run_frame(one[i], clf.eta, imposed[i]),
        "EdgeClassifier.run": lambda i: clf.run(one[i], imposed=imposed[i])}
times = {name: [] for name in arms}
items = list(arms.items())
for r in range(args.rounds):
    for name, call in (items if r % 2 == 0 else items[::-1]):
        t = time.perf_counter()
        for i in range(64):
            call((r * 64 + i) % 256)
        if r:
            times[name].append((time.perf_counter() - t) / 64 * 1e3)
base = np.array(times["session.run"])
for name, v in times.items():
    print(f"{name:20s} {np.median(v):.3f} ms  +{np.median(np.array(v) - base) * 1e3:6.1f} us over session.run (paired median)")
