"""Two exports of the same checkpoint (made by two versions of the exporter) against each other,
interleaved in one process, on the graphs ONNX Runtime runs (issue 21):

    .venv/bin/python scripts/latency_ab/exports.py BEFORE_DIR AFTER_DIR [--rounds 10] [--threads 1]
                                                    [--json out.json]

Make BEFORE_DIR with the previous commit's exporter (`git archive HEAD | tar -x -C /tmp/base`, then
`sacvit-edge export` from there) and AFTER_DIR with the working tree's. Frames follow the shipped
model's exit decisions and target counts on 256 test canvases at its eta (ImposedDecisions, the
same for both). Per round and variant: 64 frames with that pattern, 16 no-exit frames at k_max,
16 at k = 9, 32 exit frames, batch-32 throughput; ms per image, medians over rounds (the first
dropped). Both answer the same: the script also reports the largest probability difference.
"""
import argparse
import json
import logging
import time

import numpy as np

from sacvit_edge.bench.run import eval_images
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions

ap = argparse.ArgumentParser()
ap.add_argument("before")
ap.add_argument("after")
ap.add_argument("--rounds", type=int, default=10)
ap.add_argument("--threads", type=int, default=1, help="intra-op threads; 0: ONNX Runtime's default")
ap.add_argument("--json")
args = ap.parse_args()
logging.disable(logging.WARNING)

threads = args.threads or None
clfs = {name: EdgeClassifier(d, backend="onnxruntime", threads=threads)
        for name, d in (("before", args.before), ("after", args.after))}
first = clfs["before"]
x, _ = eval_images(256, first.manifest.mean, first.manifest.std)
pattern = first.run(x)
exited, counts = pattern.exited, pattern.counts
diff = float(np.abs(pattern.probs - clfs["after"].run(x).probs).max())
hi = first.manifest.k_range[1]
one = [np.ascontiguousarray(x[i][None]) for i in range(len(x))]
keys = ("frame_b1", "no_exit_kmax_b1", "no_exit_k9_b1", "exit_b1", "b32_per_image")
res = {name: {k: [] for k in keys} for name in clfs}


def timed(fn, n):
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n * 1e3


def imposed(e, k):
    return ImposedDecisions(np.array([e]), np.array([k]))


for r in range(args.rounds):
    for name, clf in (clfs.items() if r % 2 == 0 else reversed(clfs.items())):
        R = res[name]
        R["frame_b1"].append(timed(lambda i: clf.run(one[(r * 64 + i) % 256], imposed=ImposedDecisions(
            exited[(r * 64 + i) % 256][None], counts[(r * 64 + i) % 256][None])), 64))
        R["no_exit_kmax_b1"].append(timed(lambda i: clf.run(one[i], imposed=imposed(False, hi)), 16))
        R["no_exit_k9_b1"].append(timed(lambda i: clf.run(one[i], imposed=imposed(False, 9)), 16))
        R["exit_b1"].append(timed(lambda i: clf.run(one[i], imposed=imposed(True, 0)), 32))
        R["b32_per_image"].append(timed(lambda i: clf.run(x[i * 32:(i + 1) * 32], imposed=ImposedDecisions(
            exited[i * 32:(i + 1) * 32], counts[i * 32:(i + 1) * 32])), 8) / 32)
out = {"threads": args.threads, "rounds": args.rounds, "exit_rate": float(exited.mean()),
       "max_prob_diff": diff}
print(f"exit rate {exited.mean():.3f}, max probability difference {diff:.2e}")
print(f"{'ms per image':18s} {'before':>8s} {'after':>8s} {'after/before':>12s}")
for k in keys:
    b, a = (float(np.median(res[n][k][1:])) for n in ("before", "after"))
    out[k] = {"before": round(b, 4), "after": round(a, 4), "ratio": round(a / b, 3)}
    print(f"{k:18s} {b:8.3f} {a:8.3f} {a / b:12.3f}")
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
