"""Batch-32 SAC-stage grouping: group_overhead_tokens against the shipped 64 (issue 21):

    .venv/bin/python scripts/latency_ab/group_overhead.py [--values 0,16,64,160,100000] [--rounds 12]

tokens.plan_sac_groups splits a batch's SAC images into padded groups, trading one engine call's
fixed cost (group_overhead_tokens tokens' worth) against padding: 0 is one call per distinct
target count, 100000 one padded call for all. One EdgeClassifier per value on the bundled export,
each running the shipped model's own exit decisions and target counts on 256 test canvases
(8 batches of 32, imposed), in alternating rounds; the ratio is each value's time over 64's.
"""
import argparse
import json
import time

import numpy as np

from sacvit_edge.bench.run import eval_images
from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.pipeline import ImposedDecisions
from sacvit_edge.tokens import plan_sac_groups

EXPORT = "sacvit_edge/assets/sacvit_tiny_112"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", default="0,16,64,160,100000")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json")
    args = ap.parse_args()
    values = [float(v) for v in args.values.split(",")]
    small = load_checkpoint("checkpoints/sacvit_tiny_112.pt")
    x, _ = eval_images(256, small.mean, small.std)
    probe = EdgeClassifier(EXPORT, backend="onnxruntime")
    r = probe.run(x, eta=small.eta)
    batches = [(x[i:i + 32], ImposedDecisions(r.exited[i:i + 32], r.counts[i:i + 32])) for i in range(0, 256, 32)]
    groups = {v: float(np.mean([len(plan_sac_groups(imp.counts[~imp.exited], probe.manifest.config.num_coarse, v))
                                for _, imp in batches])) for v in values}
    probe.close()
    clfs = {v: EdgeClassifier(EXPORT, backend="onnxruntime", group_overhead_tokens=v) for v in values}
    times: dict[float, list[float]] = {v: [] for v in values}
    for rnd in range(args.rounds + 1):
        for v in (values if rnd % 2 else values[::-1]):
            t = time.perf_counter()
            for b, imp in batches:
                clfs[v].run(b, imposed=imp)
            if rnd:
                times[v].append((time.perf_counter() - t) / len(batches) * 1e3)
    base = np.array(times[64.0]) if 64.0 in times else np.array(times[values[0]])
    rows = [{"group_overhead_tokens": v, "sac_calls_per_batch": groups[v], "ms_per_batch": float(np.median(times[v])),
             "ratio_to_64": float(np.median(np.array(times[v]) / base))} for v in values]
    for row in rows:
        print(f"group_overhead_tokens {row['group_overhead_tokens']:>8g}: {row['sac_calls_per_batch']:.1f} SAC calls per "
              f"batch, {row['ms_per_batch']:.2f} ms per batch of 32 ({row['ratio_to_64']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
