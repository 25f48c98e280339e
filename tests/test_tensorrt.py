"""TensorRT path: version dispatch, profiles, keys, headers, the formats table and the device crop on
every machine; the backend's control flow through a TEST DOUBLE of the TensorRT API (executing
with ONNX Runtime, tests/doubles) on every machine; real TensorRT parity only where TensorRT and
a GPU exist (skipped with the reason elsewhere). Nothing run through the double is TensorRT
verification."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

from doubles.fake_cuda import CudaContractError, FakeCuda
from doubles.fake_tensorrt import make_tensorrt
from sacvit_edge.errors import BackendError, ConfigError, EngineBuildError
from sacvit_edge.export.tensorrt import build_engines, build_recipe, profile_shapes
from sacvit_edge.manifest import read_manifest
from sacvit_edge.runtimes import tensorrt_usable
from sacvit_edge.runtimes.trt import EngineKey, TensorRTBackend, TrtApi, engine_header, write_engine

usable, why = tensorrt_usable()


def fake_api(version: str = "10.3.0", gpu: str = "FakeGPU (test double)", cc: str = "0.0") -> TrtApi:
    cuda = FakeCuda(gpu, cc)
    return TrtApi(trt=make_tensorrt(version, cuda), cuda=cuda)


@pytest.fixture(scope="module")
def canvases():
    from sacvit_edge.data import ClutteredFashionMNIST

    x, y = next(ClutteredFashionMNIST("test", limit=24).batches(24))
    return x.copy(), y


@pytest.fixture
def export_copy(random_export, tmp_path):
    """A private copy of the session's export: engines get added to it."""
    return shutil.copytree(random_export, tmp_path / "export")


@pytest.fixture
def double(monkeypatch):
    """Route EdgeClassifier(backend='tensorrt') to the test double (TensorRT 10.3 on a fake GPU)."""
    import sacvit_edge.runtimes as runtimes
    import sacvit_edge.runtimes.trt as trt_mod

    api = fake_api()
    monkeypatch.setattr(trt_mod, "load_api", lambda: api)
    monkeypatch.setattr(runtimes, "tensorrt_usable", lambda: (True, "test double"))
    return api


# ---- everywhere: dispatch, profiles, keys, headers -----------------------------------------
def test_version_dispatch():
    """10.x: strongly typed graphs (STRONGLY_TYPED flag), FP16 flag only in fp16_mode='flag';
    11.x: no network flags and no precision flags; older than 10: refused."""
    for precision in ("fp32", "fp16", "int8"):
        r10, r11 = build_recipe("10.3.0", precision), build_recipe("11.1.0", precision)
        assert r10.network_flags == ("STRONGLY_TYPED",) and r10.builder_flags == () and r10.graph_precision == precision
        assert r11.network_flags == () and r11.builder_flags == () and r11.strongly_typed and r11.graph_precision == precision
    flag = build_recipe("10.7.0", "fp16", fp16_mode="flag")
    assert flag.builder_flags == ("FP16",) and not flag.strongly_typed and flag.graph_precision == "fp32"
    with pytest.raises(EngineBuildError, match="removed BuilderFlag.FP16"):
        build_recipe("11.0.0", "fp16", fp16_mode="flag")
    with pytest.raises(EngineBuildError, match="too old"):
        build_recipe("8.6.2", "fp32")


def test_profile_shapes_cover_the_manifest(random_export):
    m = read_manifest(random_export)
    k_lo, k_hi = m.k_range
    b_hi = m.batch_range[1]
    sac = profile_shapes(m, "sac")
    assert sac["target_idx"][0] == (1, k_lo) and sac["target_idx"][2] == (b_hi, k_hi)
    assert sac["nontarget_idx"][0] == (1, 49 - k_hi) and sac["nontarget_idx"][2] == (b_hi, 49 - k_lo)
    assert sac["target_patches"][2] == (b_hi, 4 * k_hi, 3 * 8 * 8)
    assert profile_shapes(m, "ee")["image"] == ((1, 3, 112, 112), (1, 3, 112, 112), (b_hi, 3, 112, 112))
    crop = profile_shapes(m, "crop", batch_opt=8)
    assert crop["rows"] == ((1,), (8,), (b_hi,)) and crop["target_idx"][2] == (b_hi, k_hi)


def test_engine_key_changes_with_every_field(random_export):
    m = read_manifest(random_export)
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    shapes = profile_shapes(m, "ee")
    base = EngineKey.for_build(m, "ee.onnx", "10.3.0", gpu, "fp16", shapes, build_recipe("10.3.0", "fp16"))
    variants = [EngineKey.for_build(m, "ee.onnx", "10.7.0", gpu, "fp16", shapes, build_recipe("10.7.0", "fp16")),
                EngineKey.for_build(m, "ee.onnx", "10.3.0", {**gpu, "name": "H100"}, "fp16", shapes, build_recipe("10.3.0", "fp16")),
                EngineKey.for_build(m, "ee.onnx", "10.3.0", {**gpu, "compute_capability": "9.0"}, "fp16", shapes,
                                    build_recipe("10.3.0", "fp16")),
                EngineKey.for_build(m, "ee.onnx", "10.3.0", gpu, "fp32", shapes, build_recipe("10.3.0", "fp32")),
                EngineKey.for_build(m, "ee.onnx", "10.3.0", gpu, "fp16", profile_shapes(m, "ee", batch_opt=8),
                                    build_recipe("10.3.0", "fp16")),
                EngineKey.for_build(m, "sac.onnx", "10.3.0", gpu, "fp16", shapes, build_recipe("10.3.0", "fp16"))]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == 1 + len(variants)
    assert base.file_name("ee") == f"ee.fp16.{base.digest}.engine"


def test_engine_header_round_trip(tmp_path):
    write_engine(tmp_path / "e.engine", {"tensorrt": "10.3.0", "stage": "ee"}, b"\x00\x01blob")
    assert engine_header(tmp_path / "e.engine") == {"tensorrt": "10.3.0", "stage": "ee"}
    (tmp_path / "raw.engine").write_bytes(b"plain TensorRT plan bytes")
    with pytest.raises(BackendError, match="not a sacvit-edge TensorRT engine"):
        engine_header(tmp_path / "raw.engine")
    whole = (tmp_path / "e.engine").read_bytes()
    (tmp_path / "cut.engine").write_bytes(whole[:20])
    with pytest.raises(BackendError, match="truncated or corrupt engine header"):
        engine_header(tmp_path / "cut.engine")


def test_formats_table_rejects_what_a_format_does_not_take():
    from sacvit_edge.export.formats import check_export_options, get_format

    onnx, engine = get_format("onnx"), get_format("engine")
    check_export_options(engine, "fp16", {"workspace": 2.0, "batch-opt": 4, "k-min": 3})
    with pytest.raises(ConfigError, match="--format onnx does not take --batch-opt, --workspace"):
        check_export_options(onnx, "fp32", {"workspace": 2.0, "batch-opt": 4})
    with pytest.raises(ConfigError, match="calibrate DIR --int8"):
        check_export_options(onnx, "int8", {})
    with pytest.raises(ConfigError, match="build-engine --format engine does not take --k-min"):
        check_export_options(engine, "fp32", {"k-min": 3}, command="build-engine")
    with pytest.raises(ConfigError, match="choose one of"):
        get_format("tflite")


def test_cli_engine_export_without_tensorrt_names_what_is_missing(random_ckpt, tmp_path):
    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    if usable:
        pytest.skip("TensorRT is usable here; the missing-TensorRT message cannot be seen")
    res = CliRunner().invoke(app, ["export", str(random_ckpt), "--format", "engine", "-o", str(tmp_path / "e")])
    assert res.exit_code != 0 and "tensorrt" in res.output and "build-engine" in res.output
    assert not (tmp_path / "e").exists()  # refused before exporting anything
    res = CliRunner().invoke(app, ["export", str(random_ckpt), "--workspace", "2", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not take --workspace" in res.output


def test_cli_build_engine(export_copy):
    """build-engine --format onnx derives the fp16 and crop graphs anywhere; an option build-engine
    does not take is a usage error."""
    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    res = CliRunner().invoke(app, ["build-engine", str(export_copy), "--format", "onnx", "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    m = read_manifest(export_copy)
    assert m.derived.graphs["fp16"] == ("ee.fp16.onnx", "sac.fp16.onnx") and m.derived.crop == "crop.onnx"
    res = CliRunner().invoke(app, ["build-engine", str(export_copy), "--format", "onnx", "--workspace", "2"])
    assert res.exit_code == 2 and "does not take --workspace" in res.output


@pytest.mark.skipif(usable, reason="TensorRT is usable here; the missing-TensorRT message cannot be seen")
def test_cli_build_engine_without_tensorrt_names_what_is_missing(export_copy):
    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    res = CliRunner().invoke(app, ["build-engine", str(export_copy)])
    assert res.exit_code != 0 and "tensorrt" in res.output and "pip install" in res.output
    assert not list(export_copy.glob("*.engine"))


def test_concurrent_builders_do_not_clobber_each_other(export_copy):
    """Two builders on one directory at once (the double builds in milliseconds, so they overlap in
    the manifest update): both finish, the manifest lists each engine once, no temporary file is left."""
    errors = []

    def build() -> None:
        try:
            build_engines(read_manifest(export_copy), "fp32", api=fake_api())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    m = read_manifest(export_copy)  # every listed file's hash checks out
    assert sorted(r.stage for r in m.derived.tensorrt_engines) == ["crop", "ee", "sac"]
    assert not [p.name for p in export_copy.iterdir() if p.name.endswith(".tmp")]


def test_device_crop_graph_equals_the_numpy_crop(export_copy):
    """crop.onnx (what the TensorRT backend runs on the device) vs tokens.crop_target_patches, run
    with ONNX Runtime: exactly equal, for row subsets in any order and every k of the range."""
    import onnxruntime as ort

    from sacvit_edge.export.graphs import crop_reference, ensure_crop_graph

    m = ensure_crop_graph(read_manifest(export_copy))
    sess = ort.InferenceSession(str(m.path(m.derived.crop)), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    image = rng.standard_normal((6, 3, 112, 112)).astype(np.float32)
    final, hidden = (rng.standard_normal((6, 49, 32)).astype(np.float32) for _ in range(2))
    for k in (m.k_range[0], 9, m.k_range[1]):
        rows = rng.permutation(6)[:4].astype(np.int64)
        t = np.stack([rng.permutation(49)[:k] for _ in rows]).astype(np.int64)
        got = sess.run(None, {"image": image, "ee_final": final, "ee_hidden": hidden, "rows": rows, "target_idx": t})
        want = crop_reference(image, final, hidden, rows, t, 8)
        for name, value in zip(("target_patches", "group_final", "group_hidden"), got):
            np.testing.assert_array_equal(value, want[name])


@pytest.mark.slow
def test_fp16_graph_agrees_with_fp32_on_the_test_split(shipped_export, tmp_path):
    """ONNX Runtime (CPU) on the fp16 graphs vs fp32, the whole built-in test split (10,000)."""
    from sacvit_edge.datasets import BuiltinSource
    from sacvit_edge.calibration.precision import compare_precisions
    from sacvit_edge.export.graphs import ensure_fp16_graphs

    d = shutil.copytree(shipped_export, tmp_path / "e")
    m = ensure_fp16_graphs(read_manifest(d))
    assert m.precisions == ["fp32", "fp16"] and m.content_sha256 == read_manifest(shipped_export).content_sha256
    r = compare_precisions(d, BuiltinSource("test"))
    print("fp16 vs fp32:", r)
    assert r["images"] == 10000
    assert r["same_top1_at_eta"] >= 0.995 and r["same_top1_never_exit"] >= 0.995
    assert 0 < r["max_abs_logit_diff_ee"] < 0.1 and 0 < r["max_abs_logit_diff_sac"] < 0.1  # fp16, not fp32


# ---- everywhere, through the TEST DOUBLE of the TensorRT API -------------------------------
def test_double_build_records_engines_in_the_manifest(export_copy):
    api = fake_api("10.3.0")
    steps = []
    m = build_engines(read_manifest(export_copy), "fp16", api=api, progress=lambda *a: steps.append(a))
    records = {r.stage: r for r in m.derived.tensorrt_engines}
    assert set(records) == {"ee", "crop", "sac"}
    assert records["ee"].precision == "fp16" and records["crop"].precision == "fp32"
    assert records["ee"].tensorrt == "10.3.0" and records["ee"].gpu == "FakeGPU (test double)"
    assert records["sac"].profile["target_idx"][2] == [64, m.k_range[1]]
    assert "fp16" in m.derived.graphs and m.derived.crop == "crop.onnx"
    for r in records.values():
        assert engine_header(m.path(r.file))["key"] == r.key
    # strongly typed on 10.x, no precision flags, TF32 off
    assert all(b["strongly_typed"] and b["builder_flags"] == [] for b in api.trt.builds)
    assert steps and {s[0] for s in steps} == {"ee", "crop", "sac"}
    again = build_engines(m, "fp16", api=api)  # already built for this GPU: kept
    assert len(api.trt.builds) == 3 and again.derived.tensorrt_engines == m.derived.tensorrt_engines


def test_double_trt11_builds_without_flags(export_copy):
    api = fake_api("11.1.0")
    build_engines(read_manifest(export_copy), "fp16", api=api)
    assert [b["network_flags"] for b in api.trt.builds] == [0, 0, 0]
    assert all(b["builder_flags"] == [] for b in api.trt.builds)
    with pytest.raises(EngineBuildError, match="removed BuilderFlag.FP16"):
        build_engines(read_manifest(export_copy), "fp16", api=api, fp16_mode="flag")


@pytest.mark.parametrize("eta", ["median", "never"])
def test_double_backend_matches_onnxruntime(export_copy, double, canvases, eta):
    """The TensorRT backend's orchestration (slots, device crop, buffers by address) gives the ONNX
    Runtime backend's answers: same graphs underneath, so equal to float rounding."""
    from sacvit_edge import EdgeClassifier

    ref = EdgeClassifier(export_copy, backend="onnxruntime", eta="never")
    batch = ref.preprocess(list(canvases[0][:12]))
    if eta == "median":  # about half exit, half go to the SAC stage
        eta = float(np.median(ref.run(batch).ee_probs.max(1)))
    clf = EdgeClassifier(export_copy, backend="tensorrt", eta=eta)
    assert clf.backend.describe()["test_double"] is True
    a, b = ref.run(batch, eta), clf.run(batch)
    assert 0 < (~a.exited).sum() and len(np.unique(a.counts[~a.exited])) > 1  # several SAC groups
    np.testing.assert_array_equal(a.exited, b.exited)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    clf.close()
    assert double.cuda.live() == 0  # close() freed every buffer and stream


def test_double_batch1_cuda_graph_replays(export_copy, double, canvases):
    from sacvit_edge import EdgeClassifier

    ref = EdgeClassifier(export_copy, backend="onnxruntime", eta="never")
    clf = EdgeClassifier(export_copy, backend="tensorrt", eta="never", backend_options={"cuda_graph": True, "slots": 1})
    frames = list(canvases[0][:4])
    for f in frames:
        assert clf.predict(f).class_id == ref.predict(f).class_id
        np.testing.assert_allclose(clf.predict(f).confidence, ref.predict(f).confidence, atol=1e-5)
    assert double.cuda.launches >= 6  # frames after the first replay the captured graph
    # a batch of 3 between frames changes the EE context's shapes; the graph has a context of its own
    np.testing.assert_allclose([p.confidence for p in clf.predict_batch(frames[:3])],
                               [p.confidence for p in ref.predict_batch(frames[:3])], atol=1e-5)
    launches = double.cuda.launches
    np.testing.assert_allclose(clf.predict(frames[3]).confidence, ref.predict(frames[3]).confidence, atol=1e-5)
    assert double.cuda.launches == launches + 1


def test_double_out_of_profile_shape_is_named(export_copy, double):
    backend = TensorRTBackend(read_manifest(export_copy), api=double, builder=build_engines)
    too_big = np.zeros((65, 3, 112, 112), np.float32)
    with pytest.raises(BackendError, match=r"image of shape \(65, 3, 112, 112\).*profile allows \(1, 3, 112, 112\) \.\. \(64, 3, 112, 112\)"):
        backend.run_ee(too_big)
    assert backend.pool._free.qsize() == 2  # the slot went back
    backend.close()


def test_double_dtype_mismatch_is_refused(export_copy, double, monkeypatch):
    m = build_engines(read_manifest(export_copy), "fp32", api=double)
    real = double.trt.Runtime.deserialize_cuda_engine

    def int32_indices(self, blob):
        engine = real(self, blob)
        if "target_idx" in engine.dtypes:
            engine.dtypes["target_idx"] = double.trt.DataType.INT32
        return engine

    monkeypatch.setattr(double.trt.Runtime, "deserialize_cuda_engine", int32_indices)
    with pytest.raises(BackendError, match="target_idx is int32, the pipeline feeds int64"):
        TensorRTBackend(m, api=double)


def test_double_concurrent_predict_uses_the_slot_pool(export_copy, double, canvases):
    from sacvit_edge import EdgeClassifier

    clf = EdgeClassifier(export_copy, backend="tensorrt", eta="never", backend_options={"slots": 2})
    frames = list(canvases[0][:8])
    want = [clf.predict(f).confidence for f in frames]
    got: dict[int, float] = {}

    def worker(i: int) -> None:
        for _ in range(3):
            got[i] = clf.predict(frames[i]).confidence

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(8)] == pytest.approx(want, abs=1e-6)
    assert clf.backend.pool._free.qsize() == 2  # every slot returned
    clf.close()


def test_double_stream_overlap_returns_every_slot(export_copy, double, canvases):
    """EdgeClassifier.stream runs frame t+1's EE stage in a second thread while frame t is in its SAC
    stage, each holding a slot; stopping the stream early hands back the slots of staged frames."""
    from sacvit_edge import EdgeClassifier

    ref = EdgeClassifier(export_copy, backend="onnxruntime", eta="never")
    clf = EdgeClassifier(export_copy, backend="tensorrt", eta="never", backend_options={"slots": 2})
    frames = list(canvases[0][:10])
    got = [(i, p.confidence) for i, _, p in clf.stream(frames, overlap=True)]
    want = [p.confidence for p in ref.predict_batch(frames)]
    assert [i for i, _ in got] == list(range(10))
    np.testing.assert_allclose([c for _, c in got], want, atol=1e-5)
    assert clf.backend.pool._free.qsize() == 2
    stream = iter(clf.stream(frames, overlap=True))
    next(stream), next(stream)
    stream.close()  # the consumer stops with a frame staged by the EE thread
    assert clf.backend.pool._free.qsize() == 2
    clf.close()


def test_double_engine_built_elsewhere_is_refused_or_rebuilt(export_copy, monkeypatch):
    build_engines(read_manifest(export_copy), "fp32", api=fake_api("10.3.0", "Orin", "8.7"))
    here = fake_api("11.1.0", "NVIDIA H100", "9.0")
    m = read_manifest(export_copy)
    with pytest.raises(BackendError, match=r"built with TensorRT 10.3.0, this is 11.1.0; built on Orin \(sm 8.7\), "
                                           r"this GPU is NVIDIA H100 \(sm 9.0\)"):
        TensorRTBackend(m, rebuild=False, api=here)
    backend = TensorRTBackend(m, rebuild=True, api=here, builder=build_engines)  # rebuilt under its own key, beside the others
    backend.close()
    records = read_manifest(export_copy).derived.tensorrt_engines
    assert sorted((r.stage, r.gpu) for r in records) == sorted(
        [(s, g) for s in ("ee", "crop", "sac") for g in ("Orin", "NVIDIA H100")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_double_read_only_directory_is_a_clear_error(export_copy):
    m = read_manifest(export_copy)
    os.chmod(export_copy, 0o555)
    try:
        with pytest.raises(BackendError, match="read-only"):
            TensorRTBackend(m, api=fake_api(), builder=build_engines)
    finally:
        os.chmod(export_copy, 0o755)


TORCH_FREE_PROBE = """
import sys
sys.path.insert(0, sys.argv[3])
import sacvit_edge.runtimes as runtimes, sacvit_edge.runtimes.trt as trt_mod
from doubles.fake_cuda import FakeCuda
from doubles.fake_tensorrt import make_tensorrt
cuda = FakeCuda()
trt_mod.load_api = lambda: trt_mod.TrtApi(make_tensorrt("10.3.0", cuda), cuda)
runtimes.tensorrt_usable = lambda: (True, "test double")
from sacvit_edge import EdgeClassifier
clf = EdgeClassifier(sys.argv[1], backend="tensorrt", eta="never", backend_options={"rebuild": False})
pred = clf.predict(sys.argv[2])
print(pred.label, "heavy=" + ",".join(sorted(m for m in ("torch", "onnx") if m in sys.modules)))
"""


def test_double_tensorrt_runtime_imports_neither_torch_nor_onnx(export_copy):
    """Engines built ahead: loading and predicting on the TensorRT backend needs neither torch nor
    onnx (the Jetson install). Through the test double, in a fresh interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    build_engines(read_manifest(export_copy), "fp32", api=fake_api())
    sample = sorted((Path(__file__).resolve().parents[1] / "sacvit_edge" / "assets" / "samples").glob("*.png"))[0]
    out = subprocess.run([sys.executable, "-c", TORCH_FREE_PROBE, str(export_copy), str(sample),
                          str(Path(__file__).resolve().parent)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("heavy="), out.stdout


def test_double_engine_tuned_for_another_batch_is_used_not_rebuilt(export_copy):
    """build-engine --batch-opt 8: the runtime loads those engines (opt is a tuning choice, not a
    compatibility condition) instead of rebuilding for opt 1 or refusing them."""
    api = fake_api()
    build_engines(read_manifest(export_copy), "fp32", batch_opt=8, api=api)
    backend = TensorRTBackend(read_manifest(export_copy), rebuild=False, api=api)
    assert len(api.trt.builds) == 3  # nothing rebuilt
    assert backend.files["ee"] == next(r.file for r in read_manifest(export_copy).derived.tensorrt_engines if r.stage == "ee")
    backend.close()


def test_damaged_derived_section_names_the_field(export_copy, tmp_path):
    """The manifest's derived section (fp16 graphs, crop graph, engine records) is validated like the
    rest: a damaged entry is an ExportError naming the field and the file, never a KeyError."""
    import json
    import re

    from sacvit_edge.errors import ExportError
    from sacvit_edge.export.graphs import ensure_fp16_graphs

    build_engines(ensure_fp16_graphs(read_manifest(export_copy)), "fp16", api=fake_api())
    cases = [
        (lambda d: d["tensorrt_engines"][0].update(file="other.engine"), "derived.tensorrt_engines[0].file"),
        (lambda d: d["tensorrt_engines"][1].pop("gpu"), "derived.tensorrt_engines[1].gpu"),
        (lambda d: d["tensorrt_engines"][2].update(stage="decoder"), "stage 'decoder'"),
        (lambda d: d.update(tensorrt_engines={"ee": "x"}), "derived.tensorrt_engines must be a list"),
        (lambda d: d["graphs"].update(int8={"ee": "ee.onnx", "sac": "sac.onnx"}), "derived.graphs.int8"),
        (lambda d: d["graphs"]["fp16"].pop("sac"), "derived.graphs.fp16.sac"),
        (lambda d: d.update(crop="../crop.onnx"), "derived.crop"),
    ]
    for i, (edit, field) in enumerate(cases):
        d = shutil.copytree(export_copy, tmp_path / f"m{i}")
        data = json.loads((d / "manifest.json").read_text())
        edit(data["derived"])
        (d / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ExportError, match=re.escape(field)) as info:
            read_manifest(d)
        assert str(d / "manifest.json") in str(info.value)
    engine = next(export_copy.glob("sac.fp16.*.engine"))  # a listed engine replaced: its hash says so
    engine.write_bytes(engine.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ExportError, match="contents do not match the manifest"):
        read_manifest(export_copy)


def test_double_read_only_directory_simulated(export_copy, monkeypatch):
    """The same check where the tests run as root (who may write anywhere): os.access is made to
    answer "not writable" for the export directory, a stand-in for a read-only mount."""
    import sacvit_edge.atomic as atomic

    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, mode: False if str(p) == str(export_copy) else real(p, mode))
    with pytest.raises(BackendError, match=r"read-only, cannot add TensorRT engines there|read-only, cannot add crop.onnx"):
        TensorRTBackend(read_manifest(export_copy), api=fake_api(), builder=build_engines)
    assert not list(export_copy.glob("*.engine"))


def test_double_enforces_the_contract(export_copy):
    """The double is strict where TensorRT is: executing with an unset input shape reports False (as
    the real execute_async_v3 does, the reason in last_error), and a buffer too small faults."""
    api = fake_api()
    m = build_engines(read_manifest(export_copy), "fp32", api=api)
    runtime = api.trt.Runtime(api.trt.ILogger())
    from sacvit_edge.runtimes.trt import read_plan

    ee = next(r for r in m.derived.tensorrt_engines if r.stage == "ee")
    engine = runtime.deserialize_cuda_engine(read_plan(m.path(ee.file)))
    ctx = engine.create_execution_context()
    assert ctx.execute_async_v3(0) is False and "set_input_shape" in ctx.last_error
    assert ctx.set_input_shape("image", (2, 3, 112, 112)) and not ctx.set_input_shape("image", (2, 3, 64, 64))
    assert ctx.set_input_shape("gca", (2, 49)) is False  # not an input: False, as in TensorRT
    stream = api.cuda.stream()
    for name in ("image", "ee_logits", "gca", "ee_final", "ee_hidden"):
        ctx.set_tensor_address(name, api.cuda.malloc(16))  # far too small
    with pytest.raises(CudaContractError, match="not inside one allocation"):
        ctx.execute_async_v3(stream.handle)


# ---- where TensorRT and a GPU exist ----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not usable, reason=f"TensorRT backend unavailable: {why}")
def test_tensorrt_fp32_parity_with_pytorch(export_copy, canvases):  # pragma: no cover - needs TensorRT
    from sacvit_edge import EdgeClassifier

    batch_clf = EdgeClassifier(export_copy, backend="tensorrt", eta="never")
    ref = EdgeClassifier(export_copy, backend="pytorch", eta="never")
    x = ref.preprocess(list(canvases[0][:16]))
    ea, eb = batch_clf.backend.run_ee(x), ref.backend.run_ee(x)
    assert np.abs(ea.logits - eb.logits).max() <= 1e-3
    batch_clf.backend.release(ea)
    a, b = batch_clf.run(x), ref.run(x)
    assert np.abs(np.log(a.probs) - np.log(b.probs)).max() <= 2e-3


@pytest.mark.gpu
@pytest.mark.skipif(not usable, reason=f"TensorRT backend unavailable: {why}")
def test_tensorrt_profile_boundaries_run(export_copy):  # pragma: no cover - needs TensorRT
    from sacvit_edge import EdgeClassifier
    from sacvit_edge.classifier import ImposedDecisions

    clf = EdgeClassifier(export_copy, backend="tensorrt")
    ref = EdgeClassifier(export_copy, backend="onnxruntime")
    lo, hi = clf.k_range
    b = clf.manifest.batch_range[1]
    x = np.random.default_rng(0).standard_normal((b, 3, 112, 112)).astype(np.float32)
    for k in (lo, hi):
        imposed = ImposedDecisions(np.zeros(b, bool), np.full(b, k))
        np.testing.assert_allclose(clf.run(x, imposed=imposed).probs, ref.run(x, imposed=imposed).probs, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not usable, reason=f"TensorRT backend unavailable: {why}")
def test_tensorrt_fp16_same_top1_on_test_split(shipped_export, tmp_path):  # pragma: no cover - needs TensorRT
    from sacvit_edge import EdgeClassifier
    from sacvit_edge.datasets import BuiltinSource

    d = shutil.copytree(shipped_export, tmp_path / "e")
    build_engines(read_manifest(d), "fp16")
    fp16 = EdgeClassifier(d, backend="tensorrt", precision="fp16")
    ref = EdgeClassifier(d, backend="pytorch", eta=fp16.eta)
    same = n = 0
    for items, _ in BuiltinSource("test").items(64):
        x = ref.preprocess(items)
        same += int((fp16.run(x).probs.argmax(1) == ref.run(x).probs.argmax(1)).sum())
        n += len(x)
    assert same / n >= 0.995


@pytest.mark.gpu
@pytest.mark.skipif(not usable, reason=f"TensorRT backend unavailable: {why}")
def test_tensorrt_foreign_engine_refused(export_copy):  # pragma: no cover - needs TensorRT
    build_engines(read_manifest(export_copy), "fp32", api=fake_api("10.3.0", "Orin", "8.7"))
    with pytest.raises(BackendError, match="built on Orin"):
        TensorRTBackend(read_manifest(export_copy), rebuild=False)
