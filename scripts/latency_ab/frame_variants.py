"""Frame graphs against each other, paired, on the raw ONNX Runtime session (issue 21):

    .venv/bin/python scripts/latency_ab/frame_variants.py BASE.onnx OTHER.onnx [...] [--k 9,25,0]
                                                         [--rounds 40] [--block 40] [--threads 1]

For graph-level changes to frame.attention.onnx (the crop's row gather, per-k static SAC
branches): every file is one arm, called with the frame graph's own inputs at a fixed target
count (force_k; 0 means an exit frame, eta 0 against never for the others) on 8 random images.
Each arm runs --block consecutive calls, the arms' blocks back to back in alternating order,
and each round gives one ratio per arm against the first file, so the machine's drift cancels
in the pairs (the first round is warm-up). Outputs must agree to 1e-5 before anything is timed.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("graphs", nargs="+")
ap.add_argument("--k", default="9,25,0", help="target counts to time; 0: an exit frame")
ap.add_argument("--rounds", type=int, default=40)
ap.add_argument("--block", type=int, default=40)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--json")
args = ap.parse_args()

opts = ort.SessionOptions()
opts.intra_op_num_threads = args.threads
sessions = {p: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in args.graphs}
size = next(iter(sessions.values())).get_inputs()[0].shape[2]
rng = np.random.default_rng(0)
images = [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(8)]
out = {"graphs": args.graphs, "threads": args.threads, "rounds": args.rounds, "block": args.block, "k": {}}
for k in (int(v) for v in args.k.split(",")):
    feeds = [{"image": x, "eta": np.array(0.0 if k == 0 else np.inf, np.float32), "force_k": np.array(k, np.int64)}
             for x in images]
    first = [s.run(None, feeds[0])[0] for s in sessions.values()]
    if any(np.abs(f - first[0]).max() > 1e-5 for f in first):
        raise SystemExit(f"k={k}: the graphs' probabilities differ")
    times = {p: [] for p in sessions}
    items = list(sessions.items())
    for r in range(args.rounds + 1):
        for path, sess in (items if r % 2 else items[::-1]):
            t = time.perf_counter()
            for i in range(args.block):
                sess.run(None, feeds[i % len(feeds)])
            if r:
                times[path].append((time.perf_counter() - t) / args.block * 1e6)
    base = np.array(times[args.graphs[0]])
    row = {p: {"median_us": float(np.median(v)), "ratio_to_first": float(np.median(np.array(v) / base))}
           for p, v in times.items()}
    out["k"][str(k)] = row
    print(f"k={k}: " + "  ".join(f"{p} {r['median_us']:.0f} us ({r['ratio_to_first']:.3f})" for p, r in row.items()))
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
