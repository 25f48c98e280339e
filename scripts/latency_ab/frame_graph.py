"""The batch-1 frame graph against the two-stage path, paired, on one export (issue 21):

    .venv/bin/python scripts/latency_ab/frame_graph.py EXPORT_DIR [--rounds 10] [--threads 1]
                                                        [--deit DEIT_ONNX] [--json out.json]

Both arms run the same EdgeClassifier: `run(x)` (one call of frame.attention.onnx at batch 1) and
`run(x, fused=False)` (EE engine, host gate and split, SAC engine). Frames follow the export's own
exit decisions and target counts on 256 test canvases at its eta (ImposedDecisions, the same for
both arms). Per round: 64 frames with that pattern, 16 no-exit frames at k_max, 16 at k = 9, 32 exit
frames. Each arm runs a block of --block consecutive calls (a camera loop calls one path over and
over: alternating single calls would evict each arm's weights from the cache by the other's and
hide what one graph instead of two saves), the arms' blocks back to back with the order
alternating, and each block pair gives one ratio, so the machine's drift cancels in the pairs
(the first round is warm-up). With --deit (an ONNX graph of the baseline, e.g. the bench's
deit_112_onnx.onnx) DeiT's batch-1 call is a third arm (its own best settings: ONNX Runtime's
default threads, spinning), for the speedup columns.
"""
import argparse
import json
import logging
import time

import numpy as np

from sacvit_edge.bench.run import eval_images
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions

ap = argparse.ArgumentParser()
ap.add_argument("export")
ap.add_argument("--rounds", type=int, default=10)
ap.add_argument("--threads", type=int, default=1, help="intra-op threads; 0: ONNX Runtime's default")
ap.add_argument("--block", type=int, default=16, help="consecutive calls per arm")
ap.add_argument("--deit")
ap.add_argument("--json")
args = ap.parse_args()
logging.disable(logging.WARNING)

clf = EdgeClassifier(args.export, backend="onnxruntime", threads=args.threads or None)
if not clf.backend.has_frame:
    raise SystemExit(f"{args.export} has no frame graph (export it with this version)")
deit = None
if args.deit:
    from sacvit_edge.runtimes.ort import OrtSingle

    deit = OrtSingle(args.deit, None)
x, _ = eval_images(256, clf.manifest.mean, clf.manifest.std)
pattern = clf.run(x)
exited, counts = pattern.exited, pattern.counts
one = [np.ascontiguousarray(x[i][None]) for i in range(len(x))]
hi = clf.manifest.k_range[1]
arms = {"frame graph": lambda f, imp: clf.run(f, imposed=imp), "two stages": lambda f, imp: clf.run(f, imposed=imp, fused=False)}
if deit is not None:
    arms["deit"] = lambda f, imp: deit.run(f)
keys = ("frame_b1", "no_exit_kmax_b1", "no_exit_k9_b1", "exit_b1")
res = {name: {k: [] for k in keys} for name in arms}
order = list(arms.items())


def paired(key, frame_of, imposed_of, n):
    for start in range(0, n, args.block):
        calls = range(start, min(n, start + args.block))
        for name, call in (order if (start // args.block) % 2 == 0 else order[::-1]):
            inputs = [(frame_of(i), imposed_of(i)) for i in calls]
            t = time.perf_counter()
            for f, imp in inputs:
                call(f, imp)
            res[name][key].append((time.perf_counter() - t) * 1e3 / len(inputs))


def fixed(e, k):
    return ImposedDecisions(np.array([e]), np.array([k]))


for r in range(args.rounds):
    j = lambda i: (r * 64 + i) % 256  # noqa: E731
    paired("frame_b1", lambda i: one[j(i)], lambda i: ImposedDecisions(exited[j(i)][None], counts[j(i)][None]), 64)
    paired("no_exit_kmax_b1", lambda i: one[i], lambda i: fixed(False, hi), 16)
    paired("no_exit_k9_b1", lambda i: one[i], lambda i: fixed(False, 9), 16)
    paired("exit_b1", lambda i: one[i], lambda i: fixed(True, 0), 32)
out = {"export": args.export, "threads": args.threads, "rounds": args.rounds, "exit_rate": float(exited.mean()),
       "mean_k": float(counts[~exited].mean())}
print(f"exit rate {exited.mean():.3f}, mean k {counts[~exited].mean():.1f}; ms per frame (mean of blocks after the warm-up round)")
print(f"{'':16s} " + " ".join(f"{n:>12s}" for n in arms) + f" {'frame/two (block pairs)':>24s}"
      + (f" {'DeiT/frame':>10s} {'DeiT/two':>9s}" if deit else ""))
for k in keys:
    v = {n: np.asarray(res[n][k][len(res[n][k]) // args.rounds:]) for n in arms}
    ratio = float(np.median(v["frame graph"] / v["two stages"]))
    out[k] = {n: round(float(a.mean()), 4) for n, a in v.items()} | {"frame_over_two_median_pair": round(ratio, 4)}
    line = f"{k:16s} " + " ".join(f"{v[n].mean():12.3f}" for n in arms) + f" {ratio:24.3f}"
    if deit:
        d = v["deit"].mean()
        out[k]["deit_over_frame"] = round(float(d / v["frame graph"].mean()), 4)
        line += f" {d / v['frame graph'].mean():10.2f} {d / v['two stages'].mean():9.2f}"
    print(line)
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
