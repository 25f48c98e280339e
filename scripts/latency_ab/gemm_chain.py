"""How fast this CPU's ONNX Runtime GEMMs run at SAC-ViT's token counts against DeiT's (issue 21):

    .venv/bin/python scripts/latency_ab/gemm_chain.py [--rounds 14] [--json out.json]

The EE stage runs every block's linear layers (qkv, proj, fc1, fc2) on 50 tokens (49 coarse + CLS),
DeiT on 197. Their FLOPs are in the ratio 50/197 = 0.254, so if a GEMM cost what its FLOPs say,
the EE stage's GEMMs would take 0.254 of DeiT's. This builds those GEMMs alone, chained block
after block as in the model (bias in the Gemm, a Relu where the GELU is; nothing else), at
M = 50 and M = 197 rows for the shipped width (64, depth 6) and DeiT-Ti / DeiT-S (192 / 384,
depth 12), and times the two chains in alternating blocks at 1 and 2 intra-op threads. The
efficiency at 50 rows is 0.254 x time(197) / time(50): the share of DeiT's GEMM speed that the
same weights reach on the EE stage's token count. It bounds SAC-ViT's realised / FLOP-ideal
speedup at batch 1 whatever the graph around the GEMMs does.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TOKEN_RATIO = 50 / 197


def chain(rows: int, width: int, depth: int) -> bytes:
    """depth x (qkv -> slice q -> proj -> fc1 -> relu -> fc2) as Gemms on a (rows, width) input."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for b in range(depth):
        for name, (k, n) in (("qkv", (width, 3 * width)), ("proj", (width, width)), ("fc1", (width, 4 * width)),
                             ("fc2", (4 * width, width))):
            w = f"{name}{b}"
            inits += [numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), w),
                      numpy_helper.from_array(np.zeros(n, np.float32), w + ".bias")]
        nodes += [helper.make_node("Gemm", [x, f"qkv{b}", f"qkv{b}.bias"], [f"qkv_out{b}"]),
                  helper.make_node("Slice", [f"qkv_out{b}", "zero", "width", "one"], [f"q{b}"]),
                  helper.make_node("Gemm", [f"q{b}", f"proj{b}", f"proj{b}.bias"], [f"proj_out{b}"]),
                  helper.make_node("Gemm", [f"proj_out{b}", f"fc1{b}", f"fc1{b}.bias"], [f"fc1_out{b}"]),
                  helper.make_node("Relu", [f"fc1_out{b}"], [f"act{b}"]),
                  helper.make_node("Gemm", [f"act{b}", f"fc2{b}", f"fc2{b}.bias"], [f"fc2_out{b}"])]
        x = f"fc2_out{b}"
    inits += [numpy_helper.from_array(np.array([v], np.int64), name) for name, v in
              (("zero", 0), ("width", width), ("one", 1))]
    graph = helper.make_graph(nodes, "gemm_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [rows, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--calls", type=int, default=20, help="calls per block")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = []
    for width, depth in ((64, 6), (192, 12), (384, 12)):
        for threads in (1, 2):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
            sessions = {m: ort.InferenceSession(chain(m, width, depth), opts, providers=["CPUExecutionProvider"])
                        for m in (50, 197)}
            feeds = {m: {"x": np.random.default_rng(m).random((m, width), dtype=np.float32)} for m in sessions}
            times: dict[int, list[float]] = {m: [] for m in sessions}
            for r in range(args.rounds + 1):  # the first round warms up
                for m in ((50, 197) if r % 2 else (197, 50)):
                    t = time.perf_counter()
                    for _ in range(args.calls):
                        sessions[m].run(None, feeds[m])
                    if r:
                        times[m].append((time.perf_counter() - t) / args.calls * 1e3)
            small, big = float(np.median(times[50])), float(np.median(times[197]))
            row = {"width": width, "depth": depth, "threads": threads, "ms_50_rows": small, "ms_197_rows": big,
                   "time_ratio": small / big, "efficiency_at_50_rows": TOKEN_RATIO * big / small}
            out.append(row)
            print(f"width {width:3d} depth {depth:2d} threads {threads}: 50 rows {small:7.3f} ms, 197 rows {big:7.3f} ms, "
                  f"ratio {small / big:.3f} (FLOPs {TOKEN_RATIO:.3f}) -> efficiency at 50 rows {row['efficiency_at_50_rows']:.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "calls": args.calls, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
