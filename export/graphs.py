"""ONNX graphs derived from an export without torch: the device crop and the fp16 variants.

Installed as `sacvit_edge.export.graphs`; needs the `onnx` package (the [export] or [tensorrt]
extra), not torch, so `sacvit-edge build-engine` works on a Jetson that has no PyTorch.

crop.onnx is what the SAC-input builder's host half (tokens.crop_target_patches plus the row
selection of the EE features) computes, as a graph a device backend runs where the image and
the features already are:
    image (B,3,H,W), ee_final (B,n,D), ee_hidden (B,n,D), rows (G,), target_idx (G,k)
      -> target_patches (G,4k,C*p*p), group_final (G,n,D), group_hidden (G,n,D)

Same layout as tokens.crop_target_patches (coarse cell (i, j) -> fine patches (2i+a, 2j+b) in
(a, b) order, each flattened (C, p, p)); test_tensorrt checks the two agree exactly with ONNX
Runtime on every machine. On a GPU the graph's one image-sized Transpose is microseconds; the
host crop avoids it only because a CPU pays for it.

The fp16 graphs (`fp16_graph`) are what TensorRT 11 needs for reduced precision: it builds
strongly typed networks only, taking every tensor's type from the graph. The conversion is ONNX
Runtime's float16 converter with inputs and outputs kept fp32 and, by default, LayerNorm,
Softmax, the reductions and the classifier heads kept fp32 (FP16_KEEP_FP32_OPS; scripts/fp16_check.py
measures the agreement with fp32 on the test split).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from sacvit_edge.atomic import add_derived_files, scratch_file, writable_dir
from sacvit_edge.errors import ExportError
from sacvit_edge.extras import MissingExtraError
from sacvit_edge.manifest import CROP_FILE, FINGERPRINT_KEY, MANIFEST_DIGEST_KEY, read_manifest
from sacvit_edge.tokens import crop_target_patches

log = logging.getLogger(__name__)

# ops whose range or accumulation fp16 does not hold well enough for the exit gate and the
# clustering scores; ONNX Runtime's converter inserts the casts around them
FP16_KEEP_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp", "Log",
                      "Erf", "Div")


def _onnx():
    if importlib.util.find_spec("onnx") is None:
        raise MissingExtraError("deriving ONNX graphs (the device crop, fp16) needs onnx, which is not installed: "
                                "pip install 'sacvit-edge[tensorrt]' (or [export])")
    import onnx

    return onnx


def head_nodes(model) -> list[str]:
    """Nodes of the classifier heads: the Gemm/MatMul nodes that produce a logits output."""
    outputs = {o.name for o in model.graph.output if o.name.endswith("logits")}
    producers = {out: n for n in model.graph.node for out in n.output}
    names = []
    for out in outputs:
        node = producers.get(out)
        # logits = MatMul -> Add (bias): walk back through an Add to the product
        while node is not None and node.op_type not in ("MatMul", "Gemm"):
            node = next((producers[i] for i in node.input if i in producers), None)
        if node is not None:
            names.append(node.name)
    return names


def _set_metadata(model, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)


def crop_graph(path: Path, *, in_chans: int, img_size: int, patch_size: int, num_coarse: int, embed_dim: int,
               metadata: dict[str, str], opset: int = 17) -> Path:
    """Write crop.onnx (see the module doc) for a model geometry."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    c, p = in_chans, patch_size
    gc = img_size // (2 * p)
    if gc * gc != num_coarse or gc * 2 * p != img_size:
        raise ExportError(f"crop graph: image {img_size} px with patch {p} does not give {num_coarse} coarse tokens")

    def const(name: str, values: list[int]):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.INT64,
                                                                                  [len(values)], values))

    nodes = [
        helper.make_node("Gather", ["image", "rows"], ["img_g"], axis=0),
        const("cells_shape", [-1, c, gc, 2, p, gc, 2, p]),
        helper.make_node("Reshape", ["img_g", "cells_shape"], ["cells"]),
        # (G, C, i, a, py, j, b, px) -> (G, i, j, a, b, C, py, px)
        helper.make_node("Transpose", ["cells"], ["cells_t"], perm=[0, 2, 5, 3, 6, 1, 4, 7]),
        const("tok_shape", [-1, num_coarse, 4 * c * p * p]),
        helper.make_node("Reshape", ["cells_t", "tok_shape"], ["tokens"]),
        const("last_axis", [-1]),
        helper.make_node("Unsqueeze", ["target_idx", "last_axis"], ["t_nd"]),
        helper.make_node("GatherND", ["tokens", "t_nd"], ["picked"], batch_dims=1),  # (G, k, 4*C*p*p)
        const("patch_shape", [0, -1, c * p * p]),
        helper.make_node("Reshape", ["picked", "patch_shape"], ["target_patches"]),
        helper.make_node("Gather", ["ee_final", "rows"], ["group_final"], axis=0),
        helper.make_node("Gather", ["ee_hidden", "rows"], ["group_hidden"], axis=0),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes, "sacvit_edge_crop",
        [helper.make_tensor_value_info("image", f32, ["batch", c, img_size, img_size]),
         helper.make_tensor_value_info("ee_final", f32, ["batch", num_coarse, embed_dim]),
         helper.make_tensor_value_info("ee_hidden", f32, ["batch", num_coarse, embed_dim]),
         helper.make_tensor_value_info("rows", i64, ["group"]),
         helper.make_tensor_value_info("target_idx", i64, ["group", "k"])],
        [helper.make_tensor_value_info("target_patches", f32, ["group", "four_k", c * p * p]),
         helper.make_tensor_value_info("group_final", f32, ["group", num_coarse, embed_dim]),
         helper.make_tensor_value_info("group_hidden", f32, ["group", num_coarse, embed_dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sacvit-edge")
    _set_metadata(model, {**metadata, "sacvit_edge.stage": "crop"})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def fp16_graph(src: Path, dst: Path, keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS,
               keep_heads: bool = True) -> list[str]:
    """Write an fp16 copy of an fp32 graph with fp32 inputs and outputs; returns the nodes kept
    fp32 by name. Metadata (fingerprint, manifest digest, stage) carry over, so the fp16 graph is
    checked against the manifest like the fp32 one."""
    onnx = _onnx()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    blocked = head_nodes(model) if keep_heads else []
    try:
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32_ops),
                                        node_block_list=blocked, disable_shape_infer=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises what onnx raises
        raise ExportError(f"fp16 conversion of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    _set_metadata(half, {**meta, "sacvit_edge.precision": "fp16"})
    _toposort(half.graph)  # the converter appends its Casts at the end; TensorRT's parser wants order
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return blocked


def _toposort(graph) -> None:
    """Reorder graph.node so that every node comes after the producers of its inputs (Kahn)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph {graph.name!r} has a cycle or an input nothing produces "
                              f"({rest[0].name}: {list(rest[0].input)})")
        pending = rest
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def crop_reference(image: np.ndarray, final: np.ndarray, hidden: np.ndarray, rows: np.ndarray,
                   target_idx: np.ndarray, patch: int) -> dict[str, np.ndarray]:
    """What crop.onnx must compute, on the host (the SAC-input builder's NumPy half)."""

    return {"target_patches": crop_target_patches(image[rows], target_idx, patch),
            "group_final": final[rows], "group_hidden": hidden[rows]}


def ensure_crop_graph(manifest):
    """The export's crop.onnx, written (and recorded in its manifest) on first need."""

    if manifest.derived.crop is not None:
        return manifest
    cfg = manifest.config
    writable_dir(manifest.directory, CROP_FILE)
    tmp = scratch_file(manifest.directory, CROP_FILE)
    crop_graph(tmp, in_chans=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size, num_coarse=cfg.num_coarse,
               embed_dim=cfg.embed_dim, opset=manifest.opset or 17,
               metadata={FINGERPRINT_KEY: manifest.fingerprint, MANIFEST_DIGEST_KEY: manifest.content_sha256})
    add_derived_files(manifest.directory, {CROP_FILE: tmp}, lambda d: d.__setitem__("crop", CROP_FILE))
    return read_manifest(manifest.directory)


def ensure_fp16_graphs(manifest):
    """The export's fp16 graphs (ee.fp16.onnx, sac.fp16.onnx), made from the fp32 ones and recorded
    in its manifest on first need."""

    if "fp16" in manifest.derived.graphs:
        return manifest
    writable_dir(manifest.directory, "fp16 graphs")
    made = {}
    for stage, src in zip(("ee", "sac"), manifest.engine_files("fp32")):
        name = f"{stage}.fp16.onnx"
        made[name] = scratch_file(manifest.directory, name)
        kept = fp16_graph(manifest.path(src), made[name])
        log.info("%s: fp16 graph %s (kept fp32: ops %s, nodes %s)", manifest.directory, name,
                 ", ".join(FP16_KEEP_FP32_OPS), ", ".join(kept))

    def record(derived: dict) -> None:
        derived.setdefault("graphs", {})["fp16"] = {"ee": "ee.fp16.onnx", "sac": "sac.fp16.onnx"}

    add_derived_files(manifest.directory, made, record)
    return read_manifest(manifest.directory)
