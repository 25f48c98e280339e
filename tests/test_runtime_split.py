"""The deployment path: torch-free, one gate, one SAC-input builder, a typed manifest, eta checked
wherever it enters, and a bundled export that is what the shipped checkpoint exports to."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sacvit_edge import EdgeClassifier
from sacvit_edge.errors import ConfigError, ExportError
from sacvit_edge.gate import NEVER_EXIT, gate, validate_eta
from sacvit_edge.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
BUNDLED = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"

RUNTIME_PROBE = """
import sys
from sacvit_edge import EdgeClassifier
clf = EdgeClassifier(sys.argv[1], backend=sys.argv[2])
pred = clf.predict(sys.argv[3])
import sacvit_edge.cli  # the CLI module too stays light
heavy = sorted(m for m in ("torch", "onnx", "matplotlib") if m in sys.modules)
print(pred.label, pred.confidence, "heavy=" + ",".join(heavy))
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_prediction_imports_neither_torch_nor_onnx(random_export, backend):
    out = subprocess.run([sys.executable, "-c", RUNTIME_PROBE, str(random_export), backend, str(SAMPLES[0])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("heavy="), out.stdout  # nothing heavy was imported


def test_missing_extra_is_named_not_an_import_trace(tmp_path, random_ckpt):
    """A core-only install: torch/onnx hidden from the import system (a test double of an
    environment without them, in a subprocess) -> export and train say which extra to install."""
    code = f"""
import sys, importlib.abc
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'matplotlib'):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] in ('torch', 'onnx', 'matplotlib') else _find(name, *a)
from typer.testing import CliRunner
from sacvit_edge.cli import app
r = CliRunner()
for args in (["export", {str(random_ckpt)!r}, "-o", {str(tmp_path / 'x')!r}], ["train", "-o", {str(tmp_path / 't.pt')!r}],
             ["bench"], ["predict", {str(random_ckpt)!r}, {str(SAMPLES[0])!r}]):
    res = r.invoke(app, args)
    print(res.exit_code, res.output.replace(chr(10), " "))
"""
    env = {**os.environ, "SACVIT_EDGE_CACHE": str(tmp_path / "empty-cache")}  # predict on a .pt must export
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4
    for line, extra in zip(lines, ("export", "train", "bench", "export")):
        assert line.startswith("4 "), line  # EXIT_ENVIRONMENT
        assert f"pip install 'sacvit-edge[{extra}]'" in line and "Traceback" not in line, line


def test_manifest_missing_or_mistyped_nested_field_names_it(tmp_path, random_export):
    cases = [
        (lambda m: m["engines"].pop("batch_max"), "engines.batch_max"),
        (lambda m: m["engines"].update(batch_max="1..64"), "engines.batch_max"),
        (lambda m: m["engines"]["sac"].pop("file"), "engines.sac.file"),
        (lambda m: m["input"].update(std=[0.5, 0.0, 0.5]), "input.std"),
        (lambda m: m["input"].pop("mean"), "input.mean"),
        (lambda m: m["model_config"].update(eta="high"), "eta"),
        (lambda m: m["model_config"].update(eta=1.5), "eta"),
        (lambda m: m["files"].pop("sac.onnx"), "hash of engine 'sac.onnx'"),
        (lambda m: m.update(class_names=["a"]), "class_names"),
        (lambda m: m.pop("engines"), "'engines'"),
        (lambda m: m["cost"]["gflops_sac"].pop("7"), "cost.gflops_sac"),
    ]
    for i, (edit, field) in enumerate(cases):
        d = tmp_path / f"m{i}"
        shutil.copytree(random_export, d)
        data = json.loads((d / "manifest.json").read_text())
        edit(data)
        (d / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ExportError, match=re.escape(field)) as info:
            read_manifest(d)
        assert str(d / "manifest.json") in str(info.value)


def test_manifest_round_trip_is_typed(random_export):
    m = read_manifest(random_export)
    assert m.k_range == (4, 25) and m.batch_range == (1, 64) and m.size == 112
    assert m.mean == (0.5, 0.5, 0.5) and isinstance(m.config.embed_dim, int)
    assert m.cost is not None and set(m.cost.sac) == set(range(4, 26))
    assert m.cost.sac[4] < m.cost.sac[25] and m.cost.ee + m.cost.sac[25] < m.cost.full  # SAC grows with k
    assert m.has_checkpoint


@pytest.mark.parametrize("bad", [float("nan"), 2, -1, 1.01, "0.5", True, None, "always", float("-inf")])
def test_eta_is_validated_wherever_it_enters(random_export, bad):
    with pytest.raises(ConfigError, match="eta"):
        validate_eta(bad)
    if bad is None:
        return  # None means "the default" at the API, checked by validate_eta alone
    with pytest.raises(ConfigError, match="eta"):
        EdgeClassifier(random_export, backend="onnxruntime", eta=bad)
    clf = EdgeClassifier(random_export, backend="onnxruntime")
    img = np.zeros((112, 112, 3), np.uint8)
    for call in (lambda: clf.predict(img, eta=bad), lambda: clf.predict_batch([img], eta=bad),
                 lambda: clf.run(clf.preprocess([img]), eta=bad)):
        with pytest.raises(ConfigError, match="eta"):
            call()


def test_cli_eta_is_validated_and_never_is_named(random_export):
    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    runner = CliRunner()
    for bad in ("nan", "2", "-0.1", "soon"):
        r = runner.invoke(app, ["predict", str(random_export), str(SAMPLES[0]), "--backend", "onnxruntime", "--eta", bad])
        assert r.exit_code == 2 and "--eta" in r.output and "Traceback" not in r.output, (bad, r.output)
    r = runner.invoke(app, ["predict", str(random_export), *map(str, SAMPLES[:4]), "--backend", "onnxruntime",
                            "--eta", "never", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["eta"] == NEVER_EXIT and not any(p["exited_early"] for p in data["predictions"])


def test_never_exit_differs_from_eta_one():
    """A saturated softmax (max == 1.0 in float32) exits at eta 1.0 but never at NEVER_EXIT."""
    probs = np.array([[1.0, 0.0], [0.6, 0.4]], np.float32)
    assert gate(probs, 1.0).tolist() == [True, False]
    assert gate(probs, NEVER_EXIT).tolist() == [False, False]
    assert gate(probs, 0.6).tolist() == [True, True] and gate(probs, 0.0).all()


def test_one_gate_in_the_sdk(random_export, monkeypatch):
    """Every exit decision goes through gate.gate: with the gate replaced by a spy that decides
    the opposite of the threshold, every consumer follows the spy. A second gate written anywhere
    (`>= eta`, `> eta`, a max-probability test of its own) would ignore the spy and fail here."""
    import sacvit_edge.calibration.sweep as sweep
    import sacvit_edge.pipeline as pipeline
    from sacvit_edge import gate as gate_module

    calls = []

    def opposite(ee_probs, eta):  # test double of the gate: inverts the real decision
        calls.append(len(ee_probs))
        return ~gate_module.gate(ee_probs, eta)

    clf = EdgeClassifier(random_export, backend="onnxruntime")
    x = clf.preprocess(SAMPLES)
    logits = clf.backend.run_ee(x).logits.astype(np.float64)
    top = (np.exp(logits - logits.max(1, keepdims=True)) / np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)).max(1)
    eta = float(np.median(top))  # half the images exit
    real = clf.run(x, eta=eta).exited
    assert 0 < real.sum() < len(real), "the batch must split for this test to mean anything"
    monkeypatch.setattr(pipeline, "gate", opposite)
    assert clf.run(x, eta=eta).exited.tolist() == (~real).tolist()
    probs = np.random.default_rng(0).dirichlet(np.ones(10) * 0.3, size=50).astype(np.float32)
    records = sweep.ExitRecords(labels=np.zeros(50, np.int64), ee_probs=probs, sac_pred=np.zeros(50, np.int64),
                                counts=np.full(50, 9), raw_counts=np.full(50, 9))
    before = records.exited(0.5)
    monkeypatch.setattr(sweep, "gate", opposite)
    assert records.exited(0.5).tolist() == (~before).tolist()
    assert len(calls) == 2


def test_imposed_decisions_hook(random_export):
    """The benchmark's hook runs exactly the imposed pattern, validated against the engines."""
    clf = EdgeClassifier(random_export, backend="onnxruntime", eta=0.0)  # would exit everything
    from sacvit_edge.classifier import ImposedDecisions

    x = clf.preprocess(SAMPLES[:6])
    exited = np.array([True, False, False, True, False, False])
    counts = np.array([0, 4, 25, 0, 9, 9])
    res = clf.run(x, imposed=ImposedDecisions(exited, counts))
    assert res.exited.tolist() == exited.tolist() and res.counts.tolist() == counts.tolist()
    assert res.target_mask.sum(1).tolist() == counts.tolist()
    # the imposed images' SAC answers equal the same images run with the same k one by one
    for i in np.flatnonzero(~exited):
        one = clf.run(x[i:i + 1], imposed=ImposedDecisions(np.array([False]), counts[i:i + 1]))
        assert np.abs(one.probs[0] - res.probs[i]).max() < 1e-5
    with pytest.raises(ConfigError, match="k range"):
        clf.run(x[:1], imposed=ImposedDecisions(np.array([False]), np.array([30])))
    with pytest.raises(ConfigError, match="imposed decisions"):
        clf.run(x[:2], imposed=ImposedDecisions(np.array([False]), np.array([5])))


def test_bundled_export_is_the_shipped_checkpoint_exported(tmp_path, shipped_sac):
    """The export that ships in the wheel (for `demo` without torch) comes from the shipped
    checkpoint and answers as a fresh export of it does."""
    from sacvit_edge.export.bundle import export_checkpoint
    from sacvit_edge.manifest import sha256_file

    bundled = read_manifest(BUNDLED)
    assert bundled.fingerprint == sha256_file(shipped_sac), \
        "bundled export is stale: run scripts/make_bundled_export.sh"
    assert not bundled.has_checkpoint and not (BUNDLED / "model.pt").exists()
    fresh = export_checkpoint(shipped_sac, tmp_path / "fresh", include_checkpoint=False)
    assert fresh.config == bundled.config and fresh.eta == bundled.eta and fresh.class_names == bundled.class_names
    a = EdgeClassifier(BUNDLED, backend="onnxruntime").predict_batch(SAMPLES)
    b = EdgeClassifier(fresh.directory, backend="onnxruntime").predict_batch(SAMPLES)
    for p, q in zip(a, b):
        assert (p.class_id, p.exited_early, p.num_target_tokens) == (q.class_id, q.exited_early, q.num_target_tokens)
        assert abs(p.confidence - q.confidence) < 1e-5


def test_pytorch_backend_needs_the_checkpoint_in_the_export():
    from sacvit_edge.errors import BackendError

    with pytest.raises(BackendError, match="carries no model.pt"):
        EdgeClassifier(BUNDLED, backend="pytorch")
