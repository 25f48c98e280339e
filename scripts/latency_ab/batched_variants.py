"""Graph rewrites for the batched (dynamic-batch) graphs, paired against the shipped graphs (issue 21):

    .venv/bin/python scripts/latency_ab/batched_variants.py [--export DIR] --deit DEIT.onnx
                                                           [--batch 32] [--rounds 30] [--json out.json]

Two rewrites, each applied alike to the export's ee.attention.onnx, sac.attention.onnx,
sac.unpadded.attention.onnx and to DeiT's opset-23 graph (DEIT.onnx: `export_single(...,
attention="onnx")`), written to a temporary folder:
- rows: every MatMul by a 2-D weight followed by a bias Add as Reshape(-1, D) -> Gemm -> Reshape
  back (static token count where known, else Shape -> Concat), the rewrite the frame graph's SAC
  branch gained at batch 1 (export/frame._gemm_on_rows);
- skipln: ONNX Runtime's own SkipLayerNormalization fusion (onnxruntime.transformers), with its
  shape check off: its symbolic shape inference fails on the opset-23 Attention op, which it takes
  for the com.microsoft one.
Each pair (shipped, rewritten) runs the same random feeds in alternating blocks of 5 calls (the EE
and DeiT graphs at --batch images, the SAC graphs at 2/3 of it with k = 9 and 25); outputs must
agree to 1e-5 first. Ratios below 1 mean the rewrite is faster.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, shape_inference
from onnxruntime.transformers.fusion_skiplayernorm import FusionSkipLayerNormalization
from onnxruntime.transformers.onnx_model import OnnxModel

REPO = Path(__file__).resolve().parents[2]


def rows_rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list] = {}
    for nd in g.node:
        for name in nd.input:
            users.setdefault(name, []).append(nd)
    consts: dict[str, onnx.TensorProto] = {}
    fused, absorbed = {}, set()
    for nd in g.node:
        if nd.op_type != "MatMul" or nd.input[1] not in inits or len(inits[nd.input[1]].dims) != 2:
            continue
        after = users.get(nd.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            continue
        add, (k, n) = after[0], inits[nd.input[1]].dims
        bias = [x for x in add.input if x != nd.output[0]]
        if len(bias) != 1 or bias[0] not in inits or list(inits[bias[0]].dims) != [n]:
            continue
        x_shape = shapes.get(nd.input[0])
        if x_shape is None:
            continue

        def const(name: str, value: list[int]) -> str:
            consts.setdefault(name, numpy_helper.from_array(np.array(value, np.int64), name))
            return name

        flat, gemm = f"{nd.name}/rows", f"{nd.name}/gemm"
        new = [helper.make_node("Reshape", [nd.input[0], const(f"rows_{k}", [-1, k])], [flat]),
               helper.make_node("Gemm", [flat, nd.input[1], bias[0]], [gemm])]
        if all(d is not None for d in x_shape[1:-1]):
            middle = [int(d) for d in x_shape[1:-1]]
            new.append(helper.make_node("Reshape", [gemm, const("tokens_" + "_".join(map(str, middle + [n])),
                                                                 [-1, *middle, n])], [add.output[0]]))
        else:
            new += [helper.make_node("Shape", [nd.input[0]], [f"{nd.name}/lead"], end=-1),
                    helper.make_node("Concat", [f"{nd.name}/lead", const(f"last_{n}", [n])], [f"{nd.name}/shape"], axis=0),
                    helper.make_node("Reshape", [gemm, f"{nd.name}/shape"], [add.output[0]])]
        fused[id(nd)] = new
        absorbed.add(id(add))
    nodes = [m for nd in g.node if id(nd) not in absorbed for m in fused.get(id(nd), [nd])]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(consts.values())
    onnx.checker.check_model(model)
    return model


def skipln_rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    wrapped = OnnxModel(model)
    FusionSkipLayerNormalization(wrapped, shape_infer=False).apply()
    wrapped.prune_graph()
    wrapped.topological_sort()
    return wrapped.model


def feeds(kind: str, batch: int, k: int, rng: np.random.Generator, size: int, n: int, dim: int, patch: int) -> dict:
    if kind in ("ee", "deit"):
        return {"image": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
    perm = np.stack([rng.permutation(n) for _ in range(batch)])
    out = {"target_patches": rng.standard_normal((batch, 4 * k, 3 * patch * patch)).astype(np.float32),
           "target_idx": perm[:, :k].astype(np.int64), "nontarget_idx": perm[:, k:].astype(np.int64),
           "ee_final": rng.standard_normal((batch, n, dim)).astype(np.float32),
           "ee_hidden": rng.standard_normal((batch, n, dim)).astype(np.float32)}
    if kind == "sac":
        out |= {"target_keep": np.ones((batch, k), bool), "nontarget_keep": np.ones((batch, n - k), bool)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, default=REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112")
    ap.add_argument("--deit", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = json.loads((args.export / "manifest.json").read_text())["model_config"]
    size, patch, dim = cfg["img_size"], cfg["patch_size"], cfg["embed_dim"]
    n = (size // patch // 2) ** 2
    graphs = {"deit": args.deit, "ee": args.export / "ee.attention.onnx", "sac": args.export / "sac.attention.onnx",
              "sac_unpadded": args.export / "sac.unpadded.attention.onnx"}
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rewrite_name, rewrite in (("rows", rows_rewrite), ("skipln", skipln_rewrite)):
            for kind, path in graphs.items():
                variant = Path(tmp) / f"{kind}.{rewrite_name}.onnx"
                onnx.save(rewrite(onnx.load(str(path))), str(variant))
                sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (path, variant)]
                names = [i.name for i in sessions[0].get_inputs()]
                cases = [(args.batch, 0)] if kind in ("ee", "deit") else [(args.batch * 2 // 3, 9), (args.batch * 2 // 3, 25)]
                for batch, k in cases:
                    f = feeds(kind, batch, k, rng, size, n, dim, patch)
                    f = {name: f[name] for name in names}
                    a, b = (s.run(None, f)[0] for s in sessions)
                    if np.abs(a - b).max() > 1e-5:
                        raise SystemExit(f"{rewrite_name} changed {kind}'s output by {np.abs(a - b).max():.1e}")
                    times: list[list[float]] = [[], []]
                    for r in range(args.rounds + 1):
                        for i in ((0, 1) if r % 2 else (1, 0)):
                            t = time.perf_counter()
                            for _ in range(5):
                                sessions[i].run(None, f)
                            if r:
                                times[i].append((time.perf_counter() - t) / 5 * 1e3)
                    ratio = float(np.median(np.array(times[1]) / np.array(times[0])))
                    row = {"rewrite": rewrite_name, "graph": kind, "batch": batch, "k": k or None,
                           "shipped_ms": float(np.median(times[0])), "rewritten_ms": float(np.median(times[1])), "ratio": ratio}
                    results.append(row)
                    print(f"{rewrite_name:6s} {kind:12s} batch {batch:2d}{f' k {k:2d}' if k else '     '}: "
                          f"{row['shipped_ms']:7.2f} -> {row['rewritten_ms']:7.2f} ms ({ratio:.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"export": str(args.export), "deit": str(args.deit), "rounds": args.rounds, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
