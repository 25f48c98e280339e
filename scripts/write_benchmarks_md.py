"""Render BENCHMARKS.md from a bench run's JSON (so every number there comes from that run).

    .venv/bin/python scripts/write_benchmarks_md.py results/bench/bench.json > BENCHMARKS.md
"""

import json
import sys
from pathlib import Path

from sacvit_edge.bench.report import BenchReport, markdown, markdown_latency, markdown_paper

res = json.loads(Path(sys.argv[1]).read_text())
rows = [r for r in res["rows"] if r["backend"] == "onnxruntime"]
deit = next(r for r in rows if r["method"] == "deit")
sac = sorted((r for r in rows if r["method"] == "sac"), key=lambda r: r["eta"])
default_eta = json.loads(Path("results/eval_sacvit_tiny_112.json").read_text())["eta"]
d = min(sac, key=lambda r: abs(r["eta"] - default_eta))
low = sac[0]
best = max(sac, key=lambda r: (r["top1"], r["images_per_s"]))
floor = res["targets"]["accuracy_floor"]
paper = {r["method"]: r for r in res.get("paper_geometry", [])}
ps = paper.get("sac", {})
env = res["environment"]
rr = [r["realised_over_ideal"] for r in sac]
t = res["targets"]
q = t.get("sac_point")  # the fastest SAC-ViT point at or above the accuracy floor, if any
if q:
    n_ok = sum(r["top1"] >= floor for r in sac)
    accuracy_text = (f"{n_ok} of {len(sac)} SAC-ViT points reach the floor {floor:.2f} %; best {best['top1']:.2f} % "
                     f"(eta {best['eta']:.2f}), default eta {d['eta']:.2f}: {d['top1']:.2f} %")
    speed_text = f"fastest point at the floor: eta {q['eta']:.2f}, {q['top1']:.2f} %, {q['realised_speedup']:.2f}x; "
else:
    accuracy_text = (f"best SAC-ViT point {best['top1']:.2f} % (eta {best['eta']:.2f}): the floor {floor:.2f} % "
                     f"is missed by {floor - best['top1']:.2f} pt")
    speed_text = "no point qualifies; "
print(f"""# Benchmarks

One run of `sacvit-edge bench -o results/bench --speed-images 1024` on the development machine
({env['cpu']}, 2 cores, no GPU; ONNX Runtime {env['onnxruntime']} CPU, torch {env['torch']}),
rendered by `scripts/write_benchmarks_md.py`. Raw data: `results/bench/bench.json`; plot:
`docs/benchmarks.png`. Accuracy on the whole cluttered Fashion-MNIST test split
({res['config']['eval_images']:,} canvases); throughput at batch {res['config']['batch']} over the first
{res['config']['speed_images']:,} canvases; latency at batch 1 ({res['config']['latency_iters']} calls after 10 warm-ups); model time
only (decoding and resizing excluded). Speedups are against the DeiT baseline timed on the same
batches in alternation with each row (`paired_deit_images_per_s` in the JSON): this machine's speed
drifts by tens of percent between minutes (earlier runs, which timed DeiT once at the start,
reported 1.76x-2.41x for the pair shipped before stop 32 where the paired measurement gave 1.39x).
Each method runs with its best ONNX Runtime settings:
the DeiT baseline (one session) with spinning threads, the two-engine SAC-ViT without (see
`runtimes/ort.py`). CF-ViT and LF-ViT modes run the trained SAC-ViT weights computing what the
official CF-ViT / LF-ViT code computes (checked against it by `tests/test_peer_golden.py`: CF top
half of the coarse tokens, LF the best 22 of the densest 5x5 window; full attention, layer-0
non-targets, bilinear `align_corners=True` coarse input, GCA from block 3, reuse MLP on the normed
EE features), training-free, like for like on one backbone; the reuse MLP keeps the trained
width and the EE head stays separate, as the weights are SAC-ViT's. TensorRT and CUDA are not
available on this machine and are skipped by the command.

![accuracy vs GFLOPs and vs images/s](docs/benchmarks.png)

## Targets (ONNX Runtime, batch {res['config']['batch']})

| target | measured | met |
| --- | --- | --- |
| SAC-ViT within 0.3 pt of DeiT ({deit['top1']:.2f} %) at some eta | {accuracy_text} | {'yes' if q else 'no'} |
| throughput >= 2.5x DeiT at that accuracy | {speed_text}default eta {d['eta']:.2f}: {d['realised_speedup']:.2f}x ({d['images_per_s']:.0f} vs {deit['images_per_s']:.0f} img/s); eta {low['eta']:.2f}: {low['realised_speedup']:.2f}x | {'yes' if t.get('speedup_met') else 'no'} |
| expected FLOPs <= 38 % of DeiT | {100 / d['flop_ideal_speedup']:.1f} % at eta {d['eta']:.2f}; {100 / low['flop_ideal_speedup']:.1f} % at eta {low['eta']:.2f} | {'yes' if 1 / d['flop_ideal_speedup'] <= 0.38 else 'no'} |
| realised speedup >= 90 % of FLOP-ideal | small model: {min(rr) * 100:.0f}-{max(rr) * 100:.0f} %; paper geometry (DeiT-S 224): {ps.get('realised_over_ideal', 0) * 100:.0f} % ({ps.get('realised_speedup', 0):.2f}x of {ps.get('flop_ideal_speedup', 0):.2f}x) | small: no; DeiT-S: {'yes' if ps.get('realised_over_ideal', 0) >= 0.9 else 'no'} |
| SAC-ViT beats CF-ViT / LF-ViT modes on the accuracy/throughput curve | CF points dominated {t['vs_cf']['peer_points_dominated']}/{t['vs_cf']['peer_points']}, LF points {t['vs_lf']['peer_points_dominated']}/{t['vs_lf']['peer_points']} (a SAC-ViT point at least as accurate and as fast) | {'yes' if t['vs_cf']['peer_points_dominated'] == t['vs_cf']['peer_points'] and t['vs_lf']['peer_points_dominated'] == t['vs_lf']['peer_points'] else 'partly'} |

Host work (gating, clustering, cropping, grouping) is {d['host_share'] * 100:.1f} % of the time at batch
{res['config']['batch']} for the small model and {ps.get('host_share', 0) * 100:.1f} % at DeiT-S geometry. What keeps the small
model from its FLOP-ideal speedup is the engines, not the host: `sacvit-edge profile
exports/sacvit_tiny_112 --batch 32` shows the EE engine close to proportional to its FLOPs and
the SAC engine at about twice its FLOP share: at width 64 the SAC graph's matrices are tiny
(4k + 1 target tokens and 49 - k non-targets, three attention calls per block), so fixed
per-operator costs dominate. The same runtime at DeiT-S width (384) realises the whole
FLOP-ideal speedup.

## Trained small model (tiny_112), cluttered Fashion-MNIST test split

{markdown(BenchReport(**res))}

## Paper geometry (deit_s_224, untrained weights, exit pattern of the trained model)

{markdown_paper(res['paper_geometry'])}

The paper-geometry rows run DeiT-S-sized engines (224 px, patch 16, width 384, depth 12,
untrained weights: throughput does not depend on the weights' values) with the exit decisions
and target counts that the trained small model produced on 256 test canvases at its default
eta (exit rate {ps.get('exit_rate', 0):.3f}, mean {ps.get('mean_target_tokens', 0):.1f} targets of 49).""")
lat = res.get("latency_geometries", [])
if lat:
    goal_rows = []
    for r in lat:
        goal_rows.append(f"| {r['geometry']} | {r['realised_over_ideal_b1']:.2f} ({r['realised_b1']:.2f}x of {r['flop_ideal_speedup']:.2f}x) "
                         f"| {'yes' if r['realised_over_ideal_b1'] >= 0.9 else 'no'} | {r['realised_over_ideal_b32']:.2f} "
                         f"({r['realised_b32']:.2f}x) | {'yes' if r['realised_over_ideal_b32'] >= 0.9 else 'no'} "
                         f"| {r['no_exit_over_deit_b1']:.2f}x DeiT ({r['gflops_no_exit_frame'] / r['gflops_deit']:.2f} of its FLOPs) "
                         f"| {'yes' if r['no_exit_over_deit_b1'] < 1 else 'no'} |")
    print(f"""
## Batch-1 latency by geometry (the camera case)

From the same run: SAC-ViT against DeiT at the shipped geometry (trained models) and at DeiT-Ti-224
and DeiT-S-224 (untrained weights), all with the shipped model's exit decisions and target counts
on 256 test canvases at its eta imposed (exit rate {lat[0]['exit_rate']:.3f}, mean k {lat[0]['mean_target_tokens']:.1f}),
ONNX Runtime with the same session options for both, batch-1 calls on batch-1 sessions
(`runtimes/ort.py`; SAC-ViT's a frame graph where the export has one: one engine call per frame,
`export/frame.py`). Mean over {8 * res['config']['latency_iters']} calls at batch 1 at the shipped geometry
({3 * res['config']['latency_iters']} at 224 px), each method timed in blocks of about 0.1 s and at least 10 calls,
alternating with the other's, as a camera loop keeps one model's caches; the no-exit frame runs the EE stage and the SAC stage at
k_max = 25, the slowest a frame can be.

{markdown_latency(lat)}

| geometry | realised/ideal @1 (goal 0.9) | met | realised/ideal @32 | met | no-exit frame | faster than DeiT |
| --- | --- | --- | --- | --- | --- | --- |
""" + "\n".join(goal_rows) + "\n")
    print(Path("docs/latency.md").read_text())
print(Path("docs/other_machines.md").read_text())
print(Path("docs/ablations.md").read_text())
