"""Two exports of the same checkpoint (made by two versions of the exporter) against each other,
interleaved in one process, on the graphs ONNX Runtime runs (issue 21):

    .venv/bin/python scripts/latency_ab/exports.py BEFORE_DIR AFTER_DIR [--rounds 10] [--threads 1]
                                                    [--json out.json]

Make BEFORE_DIR with the previous code's exporter (`sacvit-edge export` before editing, or from a venv
with the previous commit installed: `git archive HEAD | tar -x -C /tmp/base`, `pip install /tmp/base`)
and AFTER_DIR with the working tree's; both then run on the working tree's library. Frames follow
the shipped model's exit decisions and target counts on 256 test canvases at its eta
(ImposedDecisions, the same for both). Per round: 64 frames with that pattern, 16 no-exit frames at
k_max, 16 at k = 9, 32 exit frames, 8 batches of 32; ms per image (the first round is warm-up).
Every call is timed on both variants back to back, the order alternating, so the machine's drift
(tens of percent between minutes here) cancels in the pairs; the table gives the means and the
median of the per-pair ratios. The script also reports the largest probability difference.
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
pairs = list(clfs.items())


def paired(key, call, n, per=1):
    """Each call timed on both variants back to back, the order alternating: drift cancels in the pairs."""
    for i in range(n):
        for name, clf in (pairs if i % 2 == 0 else pairs[::-1]):
            t = time.perf_counter()
            call(clf, i)
            res[name][key].append((time.perf_counter() - t) / per * 1e3)


def imposed(e, k):
    return ImposedDecisions(np.array([e]), np.array([k]))


for r in range(args.rounds):
    paired("frame_b1", lambda c, i: c.run(one[(r * 64 + i) % 256], imposed=ImposedDecisions(
        exited[(r * 64 + i) % 256][None], counts[(r * 64 + i) % 256][None])), 64)
    paired("no_exit_kmax_b1", lambda c, i: c.run(one[i], imposed=imposed(False, hi)), 16)
    paired("no_exit_k9_b1", lambda c, i: c.run(one[i], imposed=imposed(False, 9)), 16)
    paired("exit_b1", lambda c, i: c.run(one[i], imposed=imposed(True, 0)), 32)
    paired("b32_per_image", lambda c, i: c.run(x[(i % 8) * 32:(i % 8 + 1) * 32], imposed=ImposedDecisions(
        exited[(i % 8) * 32:(i % 8 + 1) * 32], counts[(i % 8) * 32:(i % 8 + 1) * 32])), 8, per=32)
out = {"threads": args.threads, "rounds": args.rounds, "exit_rate": float(exited.mean()),
       "max_prob_diff": diff}
print(f"exit rate {exited.mean():.3f}, max probability difference {diff:.2e}; ms per image, calls paired")
print(f"{'':18s} {'mean before':>11s} {'mean after':>11s} {'after/before':>12s} {'median pair ratio':>18s}")
for k in keys:
    b, a = (np.asarray(res[n][k][len(res[n][k]) // args.rounds:]) for n in ("before", "after"))  # first round: warm-up
    ratio = float(np.median(a / b))
    out[k] = {"before_mean": round(float(b.mean()), 4), "after_mean": round(float(a.mean()), 4),
              "before_p50": round(float(np.median(b)), 4), "after_p50": round(float(np.median(a)), 4),
              "mean_ratio": round(float(a.mean() / b.mean()), 3), "median_pair_ratio": round(ratio, 3)}
    print(f"{k:18s} {b.mean():11.3f} {a.mean():11.3f} {a.mean() / b.mean():12.3f} {ratio:18.3f}")
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
