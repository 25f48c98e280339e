"""The batch-1 frame graph (export/frame.py): one ONNX Runtime call per frame, the same answers
as the two-stage pipeline (EE engine, host gate and split, SAC engine)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sacvit_edge.bench.run import eval_images
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
from sacvit_edge.clustering import select_targets
from sacvit_edge.config import ModelConfig
from sacvit_edge.engine_io import STAGES
from sacvit_edge.errors import ImageError
from sacvit_edge.export.frame import split_model
from sacvit_edge.manifest import read_manifest

PROB_TOL = 1e-6  # ONNX Runtime's softmax against NumPy's, on the same logits


def _ops(graph) -> dict[str, int]:
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                for k, v in _ops(a.g).items():
                    ops[k] = ops.get(k, 0) + v
    return ops


def test_frame_graph_is_listed_hashed_and_checked(random_export):
    m = read_manifest(random_export)
    assert m.frame == "frame.attention.onnx" and m.frame in m.files
    model = onnx.load(str(random_export / m.frame))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == STAGES["frame"].input_names
    assert [o.name for o in model.graph.output] == STAGES["frame"].output_names
    ops = _ops(model.graph)
    # the EE stage's attention calls and the unpadded SAC stage's, the SAC stage inside the If
    sac_ops = _ops(onnx.load(str(random_export / m.unpadded_sac)).graph)
    ee_ops = _ops(onnx.load(str(random_export / m.attention_graphs[0])).graph)
    assert ops["Attention"] == ee_ops["Attention"] + sac_ops["Attention"]
    assert ops["If"] == 1 and ops["TopK"] == 1 and ops["ArgMin"] == 1
    assert "AveragePool" not in ops  # the 2x2 mean is a depthwise Conv (torch2onnx._pool_as_depthwise_conv)
    meta = {p.key: p.value for p in model.metadata_props}
    assert m.engine_problems("frame", meta) == []
    clf = EdgeClassifier(random_export, backend="onnxruntime")
    assert clf.backend.has_frame and "frame.attention.onnx" in clf.backend.describe()["graphs"]


def _pairs(clf: EdgeClassifier, x: np.ndarray, **kw):
    for i in range(len(x)):
        one = np.ascontiguousarray(x[i:i + 1])
        fused, two = clf.run(one, **kw), clf.run(one, fused=False, **kw)
        assert fused.fused and not two.fused
        yield fused, two


def _same(fused, two) -> None:
    assert fused.exited.tolist() == two.exited.tolist()
    assert fused.counts.tolist() == two.counts.tolist()
    assert fused.raw_counts.tolist() == two.raw_counts.tolist()
    assert (fused.target_mask == two.target_mask).all()
    np.testing.assert_allclose(fused.probs, two.probs, rtol=0, atol=PROB_TOL)
    np.testing.assert_allclose(fused.ee_probs, two.ee_probs, rtol=0, atol=PROB_TOL)


def test_fused_frames_answer_as_the_two_stages(shipped_export):
    """The shipped model's own decisions on 160 test canvases: exits, target counts (before and
    after the clamp), target masks and probabilities."""
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    x, _ = eval_images(160, clf.manifest.mean, clf.manifest.std)
    exited = []
    for fused, two in _pairs(clf, x):
        _same(fused, two)
        exited.append(bool(fused.exited[0]))
    assert 0 < sum(exited) < len(exited)  # both branches of the If were taken
    for eta in (0.0, "never"):
        for fused, two in _pairs(clf, x[:8], eta=eta):
            _same(fused, two)
            assert fused.exited[0] == (eta == 0.0)


def test_fused_frames_take_imposed_decisions(shipped_export):
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    lo, hi = clf.k_range
    x, _ = eval_images(6, clf.manifest.mean, clf.manifest.std)
    for exited, k in ((True, 0), (False, lo), (False, hi), (False, (lo + hi) // 2)):
        for fused, two in _pairs(clf, x, imposed=ImposedDecisions(np.array([exited]), np.array([k]))):
            _same(fused, two)
            assert fused.exited[0] == exited and fused.counts[0] == (0 if exited else k)
            assert fused.target_mask.sum() == (0 if exited else k)


def test_random_model_fused_frames(random_export):
    """Untrained weights: low confidences and scores unlike the trained model's."""
    clf = EdgeClassifier(random_export, backend="onnxruntime")
    x, _ = eval_images(24, clf.manifest.mean, clf.manifest.std)
    for fused, two in _pairs(clf, x, eta="never"):
        _same(fused, two)


def test_fused_frame_refuses_non_finite_input(shipped_export):
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    x, _ = eval_images(1, clf.manifest.mean, clf.manifest.std)
    x[0, 1, 5, 7] = np.nan
    with pytest.raises(ImageError, match="NaN or inf"):
        clf.run(x)
    assert clf.counters["images"] == 0


def test_deadline_and_batches_run_the_two_stages(shipped_export):
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    x, _ = eval_images(2, clf.manifest.mean, clf.manifest.std)
    assert clf.run(x[:1]).fused
    assert not clf.run(x).fused  # two images: the batch engines


def _split_session(config: ModelConfig):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(split_model(config).SerializeToString(), opts, providers=["CPUExecutionProvider"])


CFG = ModelConfig(img_size=112, patch_size=8, embed_dim=64, depth=6, num_heads=2, k_min=4, k_max=25)
SPLIT = {space: _split_session(CFG.replace(cluster_space=space)) for space in ("log", "raw")}
scores = hnp.arrays(np.float32, (1, CFG.num_coarse), elements=st.one_of(
    st.sampled_from([float(np.float32(v)) for v in (0.0, 1e-30, 1e-12, 0.5, 1.0)]), st.floats(0, 1, width=32, allow_subnormal=True)))


def _sse(gca: np.ndarray, space: str) -> np.ndarray:
    """Within-cluster squared error of every split t = 1..n-1 of the sorted scores (float64)."""
    ranked = -np.sort(-gca[0].astype(np.float32))
    s = (np.log(np.maximum(ranked, np.float32(1e-12))) if space == "log" else ranked).astype(np.float64)
    t = np.arange(1, len(s))
    return np.array([((s[:i] - s[:i].mean()) ** 2).sum() + ((s[i:] - s[i:].mean()) ** 2).sum() for i in t])


@settings(max_examples=300, deadline=None)
@given(gca=scores, space=st.sampled_from(["log", "raw"]), force=st.sampled_from([0, 0, 0, 4, 25]))
def test_graph_split_is_select_targets(gca, space, force):
    """The split in ONNX operators (TopK, float64 prefix sums, ArgMin) against the host's rule, on
    scores with ties, zeros and subnormals: the target set is the top-k of the host's order, and
    the count is the host's wherever its best split is better than the next by more than float
    rounding; where several splits tie (equal scores: every split has error 0), each side's
    rounding noise picks one, and the graph's must be as good as the host's within that noise."""
    cfg = CFG.replace(cluster_space=space)
    k, raw, mask = SPLIT[space].run(None, {"gca": gca, "force_k": np.array(force, np.int64)})
    ref = select_targets(gca, cfg)
    assert (mask[0] == np.isin(np.arange(cfg.num_coarse), ref.order[0, :int(k[0])])).all()
    if force:
        assert int(k[0]) == int(raw[0]) == force
        return
    sse = _sse(gca, space)
    noise = 1e-9 * (1.0 + float(np.abs(sse).max()))
    assert sse[int(raw[0]) - 1] <= sse.min() + noise  # an optimal 2-means split
    if np.sort(sse)[1] - sse.min() > noise:  # one best split: exactly the host's
        assert int(raw[0]) == int(ref.raw_counts[0]) and int(k[0]) == int(ref.counts[0])


def test_frame_graph_of_another_export_is_refused(tmp_path, random_export, shipped_export):
    """Unhashed: the manifest is refused; swapped in with its hash updated: its embedded
    fingerprint is refused at the first frame, before any answer."""
    import json
    import shutil

    from sacvit_edge.errors import BackendError, ExportError
    from sacvit_edge.manifest import sha256_file

    d = tmp_path / "e"
    shutil.copytree(random_export, d)
    data = json.loads((d / "manifest.json").read_text())
    data["files"].pop("frame.attention.onnx")
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="files lacks the hash of engine 'frame.attention.onnx'"):
        read_manifest(d)
    shutil.copyfile(shipped_export / "frame.attention.onnx", d / "frame.attention.onnx")
    data["files"]["frame.attention.onnx"] = sha256_file(d / "frame.attention.onnx")
    (d / "manifest.json").write_text(json.dumps(data))
    clf = EdgeClassifier(d, backend="onnxruntime")
    x, _ = eval_images(1, clf.manifest.mean, clf.manifest.std)
    with pytest.raises(BackendError, match="frame.attention.onnx.*another checkpoint"):
        clf.run(x)
    assert not clf.run(x, fused=False).fused  # the two stages still run


def test_export_without_frame_graph_runs_the_two_stages(tmp_path, random_ckpt, monkeypatch):
    """Exports without the frame graph (made before it, or of the LF-ViT window rule) load and run
    batch 1 as two stages."""
    from sacvit_edge.export import bundle

    monkeypatch.setattr(bundle, "has_frame_graph", lambda config: False)
    d = bundle.export_checkpoint(random_ckpt, tmp_path / "old", include_checkpoint=False).directory
    assert read_manifest(d).frame is None and not (d / "frame.attention.onnx").exists()
    clf = EdgeClassifier(d, backend="onnxruntime")
    assert not clf.backend.has_frame
    x, _ = eval_images(1, clf.manifest.mean, clf.manifest.std)
    assert not clf.run(x).fused


def test_imposed_counts_outside_the_k_range_are_refused(random_export):
    """The benchmark hook's counts are checked before any engine call, one frame (scalar path) or many."""
    from sacvit_edge.errors import ConfigError

    clf = EdgeClassifier(random_export, backend="onnxruntime")
    lo, hi = clf.k_range
    x, _ = eval_images(2, clf.manifest.mean, clf.manifest.std)
    for batch in (1, 2):
        bad = ImposedDecisions(np.zeros(batch, bool), np.full(batch, hi + 1))
        with pytest.raises(ConfigError, match=r"lie outside the SAC engine's k range"):
            clf.run(x[:batch], imposed=bad)
    assert clf.counters["images"] == 0


def test_frame_graph_sac_branch_is_built_for_one_frame(random_export):
    """The two rewrites that make the branch cheap at batch 1 are there (docs/latency.md, fourth round):
    every SAC linear layer is one Gemm on the frame's rows (no MatMul by a weight whose output then
    gets a bias Add, which ONNX Runtime leaves unfused for a k-dependent token count), and the crop
    gathers whole pixel rows (its image Gather has C*2p indices per target, not 4*C*p*p)."""
    m = read_manifest(random_export)
    model = onnx.load(str(random_export / m.frame))
    cfg = m.config
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    branch = next(a.g for n in model.graph.node if n.op_type == "If" for a in n.attribute if a.name == "else_branch")
    users: dict[str, list] = {}
    for node in branch.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    unfused = [n.name for n in branch.node if n.op_type == "MatMul" and len(weights.get(n.input[1], [])) == 2
               and any(u.op_type == "Add" and any(len(weights.get(x, [])) == 1 for x in u.input)
                       for u in users.get(n.output[0], []))]
    assert not unfused, unfused
    gemms = [n for n in branch.node if n.op_type == "Gemm" and len(weights.get(n.input[1], [])) == 2]
    assert len(gemms) >= 4 * cfg.depth  # qkv, proj, fc1, fc2 per block (+ the reuse MLP and the head)
    row_table = [t for t in model.graph.initializer if t.name == "frame/cell_rows"]
    assert row_table and list(row_table[0].dims) == [cfg.num_coarse, cfg.in_chans * 2 * cfg.patch_size]
