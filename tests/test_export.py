"""Two-engine export: manifest, graph hygiene, atomic writes and ORT-vs-PyTorch parity."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.errors import ConfigError, ExportError
from sacvit_edge.export import bundle
from sacvit_edge.export.bundle import MANIFEST_VERSION, export_checkpoint, read_manifest
from sacvit_edge.export.torch2onnx import TRAINING_ONLY_OPS
from helpers import op_histogram, random_split
from sacvit_edge.runtimes.ort import OrtBackend
from sacvit_edge.engine_io import STAGES

ATOL = 1e-4  # fp32 logits, ONNX Runtime vs PyTorch


def test_manifest_contents(random_export, random_ckpt):
    m = read_manifest(random_export)
    ck = load_checkpoint(random_ckpt)
    assert m.fingerprint == ck.fingerprint and len(m.fingerprint) == 64
    assert m.class_names == ck.class_names and m.size == 112 and m.eta == ck.eta
    assert m.k_range == (ck.config.k_min, ck.config.k_max) and m.batch_range == (1, 64)
    assert m.config == ck.config
    assert m.opset == 17 and m.versions["torch"] == torch.__version__
    for name in ("ee.onnx", "sac.onnx"):
        model = onnx.load(str(random_export / name))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["sacvit_edge.checkpoint_fingerprint"] == ck.fingerprint
        assert not set(op_histogram(random_export / name)) & TRAINING_ONLY_OPS


def test_sac_graph_has_dynamic_batch_and_token_axes(random_export):
    graph = onnx.load(str(random_export / "sac.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["target_idx"] == ["batch", "k"]
    assert dims["nontarget_idx"] == ["batch", "n_rest"]
    assert dims["target_keep"] == ["batch", "k"] and dims["nontarget_keep"] == ["batch", "n_rest"]
    assert dims["target_patches"] == ["batch", "four_k", 192]
    # selection stays on the host: no TopK / sort in the graphs
    assert "TopK" not in op_histogram(random_export / "sac.onnx")


def _feeds(*arrays):
    """The SAC engine's named inputs, in the protocol's order (runtimes.base.SAC_FEEDS)."""
    from sacvit_edge.runtimes.base import SAC_FEEDS

    return dict(zip(SAC_FEEDS, arrays))


GRAPH_SETS = {"opset17": ("ee.onnx", "sac.onnx"), "attention": ("ee.attention.onnx", "sac.attention.onnx")}


def _parity(export_dir, ckpt_path, batches=(1, 5), graphs=GRAPH_SETS["opset17"]):
    model = load_checkpoint(ckpt_path).model
    cfg = model.cfg
    backend = OrtBackend(export_dir / graphs[0], export_dir / graphs[1])
    worst = {"ee": 0.0, "sac": 0.0}
    for b in batches:
        img = np.random.default_rng(b).standard_normal((b, 3, 112, 112)).astype(np.float32)
        ee = backend.run_ee(img)
        with torch.no_grad():
            ref = model.forward_ee(torch.from_numpy(img))
        for got, want in zip((ee.logits, ee.gca, ee.final, ee.hidden), (ref.logits, ref.gca, ref.final, ref.hidden)):
            worst["ee"] = max(worst["ee"], float(np.abs(got - want.numpy()).max()))
        for k in range(cfg.k_min, cfg.k_max + 1):
            t, nt = random_split(cfg, b, k, seed=k)
            from sacvit_edge.tokens import crop_target_patches

            got = backend.run_sac_feeds(_feeds(crop_target_patches(img, t, cfg.patch_size), t, nt, ee.final, ee.hidden,
                                               np.ones(t.shape, bool), np.ones(nt.shape, bool)))
            with torch.no_grad():
                tt = torch.from_numpy(t)
                want = model.forward_sac(model.crop_targets(torch.from_numpy(img), tt), tt, torch.from_numpy(nt),
                                         ref.final, ref.hidden).numpy()
            assert got.shape == (b, cfg.num_classes)
            worst["sac"] = max(worst["sac"], float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize("graphs", list(GRAPH_SETS))
def test_parity_random_model_every_k(random_export, random_ckpt, graphs):
    worst = _parity(random_export, random_ckpt, graphs=GRAPH_SETS[graphs])
    assert worst["ee"] <= ATOL and worst["sac"] <= ATOL, worst


@pytest.mark.parametrize("graphs", list(GRAPH_SETS))
def test_parity_shipped_model_every_k(shipped_export, shipped_sac, graphs):
    worst = _parity(shipped_export, shipped_sac, batches=(1, 8), graphs=GRAPH_SETS[graphs])
    assert worst["ee"] <= ATOL and worst["sac"] <= ATOL, worst


def test_attention_graphs_are_one_attention_node_per_call(random_export, random_ckpt):
    """The ONNX Runtime graphs: opset 23, every attention call one standard Attention node (EE: one
    per block, the GCA readout from its probabilities output; SAC: one call per block before the
    non-targets join at the reuse layer, where CLS and the targets attend to the same keys, then
    three: CLS, targets, non-targets), no Softmax left, and far fewer nodes than the opset-17
    graphs; the SAC graph without keep masks likewise, with no mask input; listed in the
    manifest, hashed, carrying the export's metadata; ONNX Runtime runs them."""
    m = read_manifest(random_export)
    cfg = load_checkpoint(random_ckpt).config
    assert 0 < cfg.reuse_layer < cfg.depth  # both kinds of block are in the graph
    assert m.attention_graphs == ("ee.attention.onnx", "sac.attention.onnx")
    assert m.unpadded_sac == "sac.unpadded.attention.onnx"
    assert m.engine_files("fp32", attention_op=True) == m.attention_graphs
    assert m.engine_files("fp32") == ("ee.onnx", "sac.onnx")  # TensorRT / OpenVINO / fp16 / INT8 start here
    sac_calls = cfg.reuse_layer + 3 * (cfg.depth - cfg.reuse_layer)
    expected_calls = {"ee": cfg.depth, "sac": sac_calls, "sac_unpadded": sac_calls}
    for stage, name, old in (("ee", m.attention_graphs[0], "ee.onnx"), ("sac", m.attention_graphs[1], "sac.onnx"),
                             ("sac_unpadded", m.unpadded_sac, "sac.onnx")):
        assert name in m.files
        model = onnx.load(str(random_export / name))
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain: o.version for o in model.opset_import}[""] >= 23
        ops = op_histogram(random_export / name)
        assert ops["Attention"] == expected_calls[stage], ops
        assert "Softmax" not in ops
        assert sum(ops.values()) < 0.8 * sum(op_histogram(random_export / old).values())
        meta = {p.key: p.value for p in model.metadata_props}
        assert m.engine_problems(stage, meta) == []
        if stage == "sac_unpadded":  # no keep masks in, none built: the masks' Unsqueeze/Expand are gone
            assert [i.name for i in model.graph.input] == list(STAGES["sac_unpadded"].input_names)
            assert ops["Expand"] < op_histogram(random_export / m.attention_graphs[1])["Expand"]
    backend = OrtBackend.from_manifest(m)
    assert backend.describe()["graphs"] == [*m.attention_graphs, m.unpadded_sac, m.frame]


def test_unpadded_calls_run_the_graph_without_masks_and_answer_alike(random_export):
    """Calls whose images share one target count (every batch-1 call) run sac.unpadded.attention.onnx
    and give the masked graph's logits; padded groups run the masked graph and give each image's
    logits as it alone, unpadded, would."""
    import onnxruntime

    from sacvit_edge.clustering import select_targets
    from sacvit_edge.runtimes.base import host_sac_feeds
    from sacvit_edge.tokens import build_sac_group

    m = read_manifest(random_export)
    backend = OrtBackend.from_manifest(m)
    calls = []
    for name in ("sac", "sac_unpadded"):
        session = getattr(backend, name)
        real_run = session.run
        setattr(backend, name, type("CountingSession", (), {
            "run": lambda self, out, feeds, _run=real_run, _name=name: calls.append(_name) or _run(out, feeds)})())
    backend.sac1 = backend.sac_unpadded1 = None  # every call through the two sessions counted above
    masked = onnxruntime.InferenceSession(str(random_export / m.attention_graphs[1]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((4, 3, m.size, m.size)).astype(np.float32)
    ee = backend.run_ee(x)
    order = select_targets(ee.gca, m.config).order
    lo, hi = m.k_range
    for counts in (np.full(4, lo), np.full(4, hi), np.array([lo, hi, lo + 1, hi])):  # unpadded twice, then padded
        group = build_sac_group(order, counts)
        got = backend.run_sac(ee, np.arange(4), group)
        # the reference: each image alone at its own count, unpadded, through the masked graph itself
        want = np.concatenate([masked.run(["sac_logits"], host_sac_feeds(
            ee, np.array([i]), build_sac_group(order[i:i + 1], counts[i:i + 1])))[0] for i in range(4)])
        assert np.abs(got - want).max() <= ATOL
    assert calls == ["sac_unpadded", "sac_unpadded", "sac"]


def test_export_without_attention_graphs(tmp_path, random_ckpt):
    """--no-attention-graphs (or a torch that cannot write them): the opset-17 graphs alone, which
    ONNX Runtime then runs."""
    m = export_checkpoint(random_ckpt, tmp_path / "e", attention_graphs=False)
    assert m.attention_graphs is None and m.unpadded_sac is None and not list((tmp_path / "e").glob("*.attention.onnx"))
    assert OrtBackend.from_manifest(m).describe()["graphs"] == ["ee.onnx", "sac.onnx"]


def test_manifest_refuses_unhashed_or_swapped_attention_graphs(tmp_path, random_export, shipped_export):
    from sacvit_edge.errors import BackendError

    d = tmp_path / "e"
    shutil.copytree(random_export, d)
    data = json.loads((d / "manifest.json").read_text())
    data["files"].pop("sac.attention.onnx")
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="files lacks the hash of engine 'sac.attention.onnx'"):
        read_manifest(d)
    data["files"]["sac.attention.onnx"] = bundle.sha256_file(d / "sac.attention.onnx")
    data["files"].pop("sac.unpadded.attention.onnx")
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="files lacks the hash of engine 'sac.unpadded.attention.onnx'"):
        read_manifest(d)
    # an attention graph of another export, its hash updated: its embedded digest gives it away
    shutil.rmtree(d)
    shutil.copytree(random_export, d)
    shutil.copyfile(shipped_export / "ee.attention.onnx", d / "ee.attention.onnx")
    data = json.loads((d / "manifest.json").read_text())
    data["files"]["ee.attention.onnx"] = bundle.sha256_file(d / "ee.attention.onnx")
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BackendError, match="ee.attention.onnx"):
        OrtBackend.from_manifest(read_manifest(d))
    shutil.copyfile(random_export / "ee.attention.onnx", d / "ee.attention.onnx")  # back to this export's own
    shutil.copyfile(shipped_export / "sac.unpadded.attention.onnx", d / "sac.unpadded.attention.onnx")
    data["files"]["ee.attention.onnx"] = bundle.sha256_file(d / "ee.attention.onnx")
    data["files"]["sac.unpadded.attention.onnx"] = bundle.sha256_file(d / "sac.unpadded.attention.onnx")
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BackendError, match="sac.unpadded.attention.onnx"):
        OrtBackend.from_manifest(read_manifest(d))


def test_interrupted_export_leaves_nothing_that_loads(tmp_path, random_ckpt, monkeypatch):
    out = tmp_path / "exp"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "export_stages", boom)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(random_ckpt, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory was removed too


def test_reexport_replaces_atomically(tmp_path, random_ckpt, monkeypatch):
    out = tmp_path / "exp"
    first = export_checkpoint(random_ckpt, out)
    monkeypatch.setattr(bundle, "export_stages", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        export_checkpoint(random_ckpt, out)
    assert read_manifest(out).fingerprint == first.fingerprint  # the old export is intact


def test_k_override_and_bad_options(tmp_path, random_ckpt):
    m = export_checkpoint(random_ckpt, tmp_path / "k", k_min=6, k_max=12, batch_max=8)
    assert m.k_range == (6, 12) and m.batch_range == (1, 8)
    with pytest.raises(ConfigError, match="k_max"):
        export_checkpoint(random_ckpt, tmp_path / "k2", k_max=49)
    with pytest.raises(ConfigError, match="opset"):
        export_checkpoint(random_ckpt, tmp_path / "k3", opset=13)


def test_deit_checkpoint_is_refused(tmp_path):
    from sacvit_edge.checkpoint import save_checkpoint
    from sacvit_edge.config import preset
    from sacvit_edge.model import build_model

    path = save_checkpoint(tmp_path / "deit.pt", build_model(preset("tiny_112", arch="deit", embed_dim=32)), list("abcdefghij"))
    with pytest.raises(ExportError, match="deit"):
        export_checkpoint(path, tmp_path / "out")


def test_broken_export_directories(tmp_path, random_export):
    with pytest.raises(ExportError, match="not an export directory"):
        read_manifest(tmp_path / "nothing")
    d = tmp_path / "copy"
    shutil.copytree(random_export, d)
    (d / "sac.onnx").write_bytes((d / "sac.onnx").read_bytes()[:-100])  # truncated engine
    with pytest.raises(ExportError, match="sac.onnx.*do not match"):
        read_manifest(d)
    shutil.rmtree(d)
    shutil.copytree(random_export, d)
    (d / "ee.onnx").unlink()
    with pytest.raises(ExportError, match="ee.onnx is missing"):
        read_manifest(d)
    shutil.rmtree(d)
    shutil.copytree(random_export, d)
    data = json.loads((d / "manifest.json").read_text())
    data["format_version"] = MANIFEST_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="format version"):
        read_manifest(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="corrupt manifest"):
        read_manifest(d)
    (d / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest.json is missing"):
        read_manifest(d)


def test_padded_group_equals_unpadded_calls(random_export, random_ckpt):
    """One SAC call with padding + keep masks == one call per image at its own count."""
    from sacvit_edge.tokens import crop_target_patches

    backend = OrtBackend(random_export / "ee.onnx", random_export / "sac.onnx")
    img = np.random.default_rng(0).standard_normal((3, 3, 112, 112)).astype(np.float32)
    ee = backend.run_ee(img)
    order = np.stack([np.random.default_rng(i).permutation(49) for i in range(3)])
    counts = np.array([5, 9, 14])
    ranks = np.arange(49)[None]
    k_lo, k_hi = 5, 14
    t = np.ascontiguousarray(order[:, :k_hi])
    padded = backend.run_sac_feeds(_feeds(crop_target_patches(img, t, 8), t, np.ascontiguousarray(order[:, k_lo:]),
                                          ee.final, ee.hidden, ranks[:, :k_hi] < counts[:, None],
                                          ranks[:, k_lo:] >= counts[:, None]))
    for b, k in enumerate(counts):
        tb = np.ascontiguousarray(order[b:b + 1, :k])
        nb = np.ascontiguousarray(order[b:b + 1, k:])
        one = backend.run_sac_feeds(_feeds(crop_target_patches(img[b:b + 1], tb, 8), tb, nb, ee.final[b:b + 1],
                                           ee.hidden[b:b + 1], np.ones(tb.shape, bool), np.ones(nb.shape, bool)))
        assert np.abs(padded[b] - one[0]).max() <= ATOL
