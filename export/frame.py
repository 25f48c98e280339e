"""The batch-1 frame graph: one ONNX Runtime call per camera frame (issue 21).

    frame.attention.onnx  image (1,3,H,W), eta (), force_k () ->
        probs (1,C), ee_probs (1,C), exited (1,), counts (1,), raw_counts (1,), target_mask (1,n)

At batch 1 a frame that reaches the SAC stage used to cost two engine calls with the host
between them (softmax and gate, sort, 2-means split, crop, feeds): on the shipped model that host
work and the second session's cold caches were a fifth of the frame. This graph is the EE graph,
the exit gate, the split, the crop and the unpadded SAC graph composed into one, the SAC part
inside an `If` that only runs when the gate says so. It is made from the two exported graphs
(ee.attention.onnx, sac.unpadded.attention.onnx), not traced again, so the arithmetic of both
stages is theirs node for node. It also gives what the caller reports (both softmaxes, the target
mask), so the host does next to nothing after the call: every NumPy call there runs on caches the
engine has just evicted.

The split is clustering.select_targets' rule, written in ONNX operators: TopK over the n scores
(sorted, ties to the lower index: the stable argsort), the log of max(score, 1e-12) in float32
where cluster_space is "log", then the exact 1-D 2-means over every split point with prefix sums
in float64 (CumSum, ArgMin: the first minimum, as NumPy's), clipped to [k_min, k_max]. Float64 and
`If` make this an ONNX Runtime graph: TensorRT and the fp16/INT8 derivations keep the two-stage
graphs, and this file is derived from them like sac.unpadded.attention.onnx. Only the "sac" and
"topalpha" selection rules have it (the LF-ViT window rule runs the two-stage path).

Where the graph and the host could differ: the softmax and the log are ONNX Runtime's float32
kernels, the host's are NumPy's; both are within an ulp, so a frame whose confidence is within an
ulp of eta, or whose two best split points tie to an ulp, may be decided differently, and the
probabilities differ by float rounding. The tests check decisions, counts, masks and
probabilities against the two-stage pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sacvit_edge.extras import require_extra

require_extra("export", "ONNX export")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sacvit_edge.config import ModelConfig  # noqa: E402
from sacvit_edge.engine_io import STAGES  # noqa: E402
from sacvit_edge.errors import ExportError  # noqa: E402
from sacvit_edge.tokens import crop_target_patches  # noqa: E402

FRAME_INPUTS, FRAME_OUTPUTS = STAGES["frame"].input_names, STAGES["frame"].output_names
_SAC = "sac/"  # prefix of the SAC graph's own names inside the If branch
_C = "frame/"  # prefix of this module's constants


def has_frame_graph(config: ModelConfig) -> bool:
    """Whether the frame graph can express this model's selection rule."""
    return config.arch == "sacvit" and config.selection in ("sac", "topalpha")


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), _C + name)


def _copy(proto):
    return type(proto).FromString(proto.SerializeToString())


def _split_nodes(config: ModelConfig, node) -> tuple[list, list[TensorProto]]:
    """gca (1, n) -> order (1, n) by descending score, counts / raw_counts (1,), target_idx, nontarget_idx.

    The rule of clustering.select_targets; `force_k` > 0 replaces the count (the benchmark's
    imposed decisions)."""
    n = config.num_coarse
    lo, hi = config.target_range()
    consts = [_const("n", np.array([n], np.int64)), _const("gshape", np.array([1, n], np.int64)),
              _const("zero", np.array([0], np.int64)), _const("one", np.array([1], np.int64)),
              _const("axis1", np.array([1], np.int64)), _const("kmin", np.array(lo, np.int64)),
              _const("kmax", np.array(hi, np.int64)), _const("zero_s", np.array(0, np.int64))]
    nodes = [node("Reshape", ["gca", _C + "gshape"], ["gca_1n"]),  # a static (1, n): ORT's If inference needs it
             node("TopK", ["gca_1n", _C + "n"], ["ranked", "order_s"], axis=1, largest=1, sorted=1)]
    if config.selection == "sac":
        consts += [_const("nm1", np.array([n - 1], np.int64)), _const("eps", np.array(1e-12, np.float32)),
                   _const("t", np.arange(1, n, dtype=np.float64)[None]),
                   _const("n_t", (n - np.arange(1, n, dtype=np.float64))[None])]
        space = "ranked"
        if config.cluster_space == "log":
            nodes += [node("Max", ["ranked", _C + "eps"], ["ranked_eps"]), node("Log", ["ranked_eps"], ["ranked_log"])]
            space = "ranked_log"
        nodes += [
            node("Cast", [space], ["s"], to=TensorProto.DOUBLE),
            node("Mul", ["s", "s"], ["s2"]),
            node("CumSum", ["s", _C + "one"], ["csum"]),
            node("CumSum", ["s2", _C + "one"], ["csq"]),
            node("Slice", ["csum", _C + "zero", _C + "nm1", _C + "axis1"], ["top_sum"]),
            node("Slice", ["csq", _C + "zero", _C + "nm1", _C + "axis1"], ["top_sq"]),
            node("Slice", ["csum", _C + "nm1", _C + "n", _C + "axis1"], ["all_sum"]),
            node("Slice", ["csq", _C + "nm1", _C + "n", _C + "axis1"], ["all_sq"]),
            node("Sub", ["all_sum", "top_sum"], ["rest_sum"]),
            node("Sub", ["all_sq", "top_sq"], ["rest_sq"]),
            node("Mul", ["top_sum", "top_sum"], ["top_sum2"]), node("Div", ["top_sum2", _C + "t"], ["top_mean_sq"]),
            node("Sub", ["top_sq", "top_mean_sq"], ["sse_top"]),
            node("Mul", ["rest_sum", "rest_sum"], ["rest_sum2"]), node("Div", ["rest_sum2", _C + "n_t"], ["rest_mean_sq"]),
            node("Sub", ["rest_sq", "rest_mean_sq"], ["sse_rest"]),
            node("Add", ["sse_top", "sse_rest"], ["sse"]),
            node("ArgMin", ["sse"], ["best"], axis=1, keepdims=0, select_last_index=0),
            node("Add", ["best", _C + "one"], ["split_raw"]),
            node("Clip", ["split_raw", _C + "kmin", _C + "kmax"], ["split_k"]),
        ]
    else:  # topalpha: a constant count
        consts += [_const("k_const", np.array([lo], np.int64))]
        nodes += [node("Identity", [_C + "k_const"], ["split_raw"]), node("Identity", [_C + "k_const"], ["split_k"])]
    nodes += [  # force_k > 0: the caller's count instead (raw as well, as ImposedDecisions does)
        node("Greater", ["force_k", _C + "zero_s"], ["forced"]),
        node("Unsqueeze", ["force_k", _C + "zero"], ["force_1"]),
        node("Where", ["forced", "force_1", "split_k"], ["k_1"]),
        node("Where", ["forced", "force_1", "split_raw"], ["raw_1"]),
        node("Slice", ["order_s", _C + "zero", "k_1", _C + "axis1"], ["target_idx"]),
        node("Slice", ["order_s", "k_1", _C + "n", _C + "axis1"], ["nontarget_idx"]),
        node("Shape", ["target_idx"], ["target_shape"]),
        node("Expand", [_C + "true", "target_shape"], ["target_true"]),
        node("ScatterElements", [_C + "no_mask", "target_idx", "target_true"], ["mask_1"], axis=1),
    ]
    consts += [_const("true", np.array(True))]
    return nodes, consts


def _crop_nodes(config: ModelConfig, node) -> tuple[list, list[TensorProto]]:
    """image, target_idx -> target_patches (1, 4k, C*p*p), as tokens.crop_target_patches cuts them.

    A coarse cell is C x 2p rows of 2p contiguous pixels. A table of each cell's row numbers in the
    image seen as (C*H*W/2p, 2p) turns the crop into a Gather of whole rows (a per-pixel Gather was
    ~85 us of a 3 ms frame at the shipped geometry, ONNX Runtime copying one float at a time), then
    a fixed Transpose puts the four p x p quarters in the patch layout. The layout is checked
    against crop_target_patches itself when the graph is made, so the two cannot drift apart."""
    c, size, p, n = config.in_chans, config.img_size, config.patch_size, config.num_coarse
    grid = size // (2 * p)
    cell, ch, y = np.meshgrid(np.arange(n), np.arange(c), np.arange(2 * p), indexing="ij")
    table = ch * size * grid + ((cell // grid) * 2 * p + y) * grid + cell % grid  # (n, C, 2p)
    table = table.reshape(n, c * 2 * p)
    order = (0, 1, 3, 5, 2, 4, 6)  # (1, k, C, 2, p, 2, p) -> (1, k, 2, 2, C, p, p)
    offsets = np.arange(c * size * size, dtype=np.int64).reshape(1, c, size, size)
    gathered = offsets.reshape(-1, 2 * p)[table].reshape(1, n, c, 2, p, 2, p).transpose(order)
    if not np.array_equal(gathered.reshape(1, 4 * n, c * p * p), crop_target_patches(offsets, np.arange(n)[None], p)):
        raise ExportError("the frame graph's crop layout differs from tokens.crop_target_patches")  # pragma: no cover
    consts = [_const("cell_rows", table.astype(np.int32)), _const("rows", np.array([-1, 2 * p], np.int64)),
              _const("quarters", np.array([1, -1, c, 2, p, 2, p], np.int64)),
              _const("patches", np.array([1, -1, c * p * p], np.int64))]
    nodes = [node("Reshape", ["image", _C + "rows"], ["image_rows"]),
             node("Gather", [_C + "cell_rows", "target_idx"], ["target_rows"], axis=0),
             node("Gather", ["image_rows", "target_rows"], ["target_values"], axis=0),
             node("Reshape", ["target_values", _C + "quarters"], ["target_quarters"]),
             node("Transpose", ["target_quarters"], ["target_fine"], perm=list(order)),
             node("Reshape", ["target_fine", _C + "patches"], ["target_patches"])]
    return nodes, consts


def split_model(config: ModelConfig) -> onnx.ModelProto:
    """The frame graph's split alone: gca (1, n), force_k () -> counts, raw_counts (1,), target_mask
    (1, n). The same nodes compose_frame_graph puts into the graph; the tests hold them against
    clustering.select_targets on adversarial scores (ties, zeros, denormals)."""
    counter = iter(range(1_000_000))

    def node(op: str, inputs: list[str], outputs: list[str], **attrs):
        return helper.make_node(op, inputs, outputs, name=f"{_C}{op}_{next(counter)}", **attrs)

    nodes, consts = _split_nodes(config, node)
    n = config.num_coarse
    consts.append(_const("no_mask", np.zeros((1, n), bool)))
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "sacvit_split", [info("gca", TensorProto.FLOAT, [1, n]), info("force_k", TensorProto.INT64, [])],
        [info("k_1", TensorProto.INT64, [1]), info("raw_1", TensorProto.INT64, [1]), info("mask_1", TensorProto.BOOL, [1, n])],
        initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _gemm_on_rows(nodes: list, inits: dict[str, TensorProto]) -> tuple[list, list[TensorProto]]:
    """Each MatMul by a 2-D weight whose only consumer adds a 1-D bias, as Reshape -> Gemm -> Reshape.

    ONNX Runtime fuses MatMul + Add into one Gemm only where the token count is known when the
    session is made; the SAC stage's is k-dependent, so in the frame graph's branch each linear
    layer ran as a MatMul and a separate Add over its output. A frame is one image, so its tokens
    are the rows of a 2-D view: (1, L, D) -> (L, D) -> Gemm -> (1, L, D'). 26 rewrites at the
    shipped geometry; paired A/B in docs/latency.md (the frame at k = 9 0.91)."""
    consumers: dict[str, list] = {}
    for nd in nodes:
        for name in nd.input:
            consumers.setdefault(name, []).append(nd)

    def dims(name: str) -> list[int] | None:
        return list(inits[name].dims) if name in inits else None

    fused: dict[int, list] = {}  # id of a MatMul -> its replacement; the Adds it absorbs are dropped
    absorbed: set[int] = set()
    shapes: dict[str, TensorProto] = {}
    for nd in nodes:
        weight = dims(nd.input[1]) if nd.op_type == "MatMul" and len(nd.input) == 2 else None
        users = consumers.get(nd.output[0], []) if weight is not None and len(weight) == 2 else []
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = [x for x in add.input if x != nd.output[0]]
        if len(bias) != 1 or dims(bias[0]) != [weight[1]]:
            continue
        rows, out = f"{_C}rows_{weight[0]}", f"{_C}tokens_{weight[1]}"
        shapes.setdefault(rows, numpy_helper.from_array(np.array([-1, weight[0]], np.int64), rows))
        shapes.setdefault(out, numpy_helper.from_array(np.array([1, -1, weight[1]], np.int64), out))
        x2, y2 = f"{nd.name}/rows", f"{nd.name}/gemm"
        fused[id(nd)] = [helper.make_node("Reshape", [nd.input[0], rows], [x2], name=f"{nd.name}/Reshape_rows"),
                         helper.make_node("Gemm", [x2, nd.input[1], bias[0]], [y2], name=f"{nd.name}/Gemm"),
                         helper.make_node("Reshape", [y2, out], [add.output[0]], name=f"{nd.name}/Reshape_tokens")]
        absorbed.add(id(add))
    rewritten = []
    for nd in nodes:
        if id(nd) not in absorbed:
            rewritten.extend(fused.get(id(nd), [nd]))
    return rewritten, list(shapes.values())


def compose_frame_graph(ee_path: Path, sac_path: Path, config: ModelConfig, out: Path,
                        metadata: dict[str, str] | None = None) -> Path:
    """Write the frame graph of an export's ee.attention.onnx and sac.unpadded.attention.onnx.

    Raises:
        ExportError: the selection rule has no frame graph, or the composed graph fails onnx.checker.
    """
    if not has_frame_graph(config):
        raise ExportError(f"selection {config.selection!r} has no frame graph (only 'sac' and 'topalpha')")
    ee, sac = onnx.load(str(ee_path)), onnx.load(str(sac_path))
    counter = iter(range(1_000_000))

    def node(op: str, inputs: list[str], outputs: list[str], **attrs):
        return helper.make_node(op, inputs, outputs, name=f"{_C}{op}_{next(counter)}", **attrs)

    # one copy of every weight both stages hold (the blocks): the SAC graph's initializers keep their
    # name where the EE graph has the same name with the same bytes, and are renamed otherwise
    inits = {t.name: t for t in ee.graph.initializer}
    rename: dict[str, str] = {}
    for t in sac.graph.initializer:
        same = t.name in inits and inits[t.name].data_type == t.data_type and \
            np.array_equal(numpy_helper.to_array(inits[t.name]), numpy_helper.to_array(t))
        if same:
            rename[t.name] = t.name
            continue
        u = _copy(t)
        u.name = rename[t.name] = _SAC + t.name
        inits[u.name] = u
    sac_inputs = {i.name for i in sac.graph.input}

    def sac_name(name: str) -> str:
        return name if name == "" or name in sac_inputs else rename.get(name, _SAC + name)

    sac_nodes = []
    for n in sac.graph.node:
        m = _copy(n)
        m.name = _SAC + n.name
        m.input[:] = [sac_name(x) for x in n.input]
        m.output[:] = [sac_name(x) for x in n.output]
        sac_nodes.append(m)
    sac_nodes, gemm_shapes = _gemm_on_rows(sac_nodes, inits)
    sac_info = []
    for v in sac.graph.value_info:  # ONNX Runtime's inference inside If needs the declared shapes
        u = _copy(v)
        u.name = sac_name(v.name)
        sac_info.append(u)

    split, split_consts = _split_nodes(config, node)
    crop, crop_consts = _crop_nodes(config, node)
    n, classes = config.num_coarse, config.num_classes
    consts = split_consts + crop_consts + gemm_shapes + [_const("no_mask", np.zeros((1, n), bool)),
                                           _const("no_count", np.zeros(1, np.int64))]
    info = helper.make_tensor_value_info
    sac_branch = helper.make_graph(
        split + crop + sac_nodes + [node("Softmax", [sac_name(sac.graph.output[0].name)], ["sac_probs"], axis=-1),
                                    node("Identity", ["mask_1"], ["mask_out"]), node("Identity", ["k_1"], ["k_out"]),
                                    node("Identity", ["raw_1"], ["raw_out"])],
        "sac_stage", [], [info("sac_probs", TensorProto.FLOAT, [1, classes]), info("mask_out", TensorProto.BOOL, [1, n]),
                          info("k_out", TensorProto.INT64, [1]), info("raw_out", TensorProto.INT64, [1])],
        value_info=sac_info)
    exit_branch = helper.make_graph(
        [node("Identity", ["ee_probs"], ["exit_probs"]), node("Identity", [_C + "no_mask"], ["exit_mask"]),
         node("Identity", [_C + "no_count"], ["exit_k"]), node("Identity", [_C + "no_count"], ["exit_raw"])],
        "early_exit", [], [info("exit_probs", TensorProto.FLOAT, [1, classes]), info("exit_mask", TensorProto.BOOL, [1, n]),
                           info("exit_k", TensorProto.INT64, [1]), info("exit_raw", TensorProto.INT64, [1])])
    gate = [  # the exit gate of gate.gate: the largest EE probability reaches eta
        node("Softmax", ["ee_logits"], ["ee_probs"], axis=-1),
        node("ReduceMax", ["ee_probs"], ["confidence"], keepdims=0),
        node("GreaterOrEqual", ["confidence", "eta"], ["exit_now"]),
        node("Unsqueeze", ["exit_now", _C + "zero"], ["exited"]),
        node("If", ["exit_now"], ["probs", "target_mask", "counts", "raw_counts"], then_branch=exit_branch,
             else_branch=sac_branch),
    ]
    c, size = config.in_chans, config.img_size
    graph = helper.make_graph(
        list(ee.graph.node) + gate, "sacvit_frame",
        [info("image", TensorProto.FLOAT, [1, c, size, size]), info("eta", TensorProto.FLOAT, []),
         info("force_k", TensorProto.INT64, [])],
        [info("probs", TensorProto.FLOAT, [1, classes]), info("ee_probs", TensorProto.FLOAT, [1, classes]),
         info("exited", TensorProto.BOOL, [1]), info("counts", TensorProto.INT64, [1]),
         info("raw_counts", TensorProto.INT64, [1]), info("target_mask", TensorProto.BOOL, [1, n])],
        initializer=list(inits.values()) + consts,
        value_info=list(ee.graph.output) + list(ee.graph.value_info))
    model = helper.make_model(graph, opset_imports=list(ee.opset_import), ir_version=ee.ir_version,
                              producer_name="sacvit-edge")
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the frame graph composed from {ee_path.name} and {sac_path.name} is invalid: {exc}") from exc
    declared = [i.name for i in graph.input], [o.name for o in graph.output]
    if declared != (list(FRAME_INPUTS), list(FRAME_OUTPUTS)):  # pragma: no cover - the contract and this module agree
        raise ExportError(f"frame graph tensors {declared} differ from engine_io's {FRAME_INPUTS}, {FRAME_OUTPUTS}")
    onnx.save(model, str(out))
    return out
