"""Serving on a real Triton Inference Server (the tritonserver nvidia-pytriton bundles), queried
with tritonclient over HTTP and gRPC on loopback, every answer compared with EdgeClassifier's."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytriton", reason="the [serve] extra (nvidia-pytriton) is not installed")
pytest.importorskip("tritonclient.grpc", reason="the [serve] extra (tritonclient[grpc]) is not installed")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from sacvit_edge import EdgeClassifier  # noqa: E402
from sacvit_edge.data import ClutteredFashionMNIST  # noqa: E402
from sacvit_edge.engine_io import DYNAMIC, STAGES, dimensions  # noqa: E402
from sacvit_edge.errors import ConfigError, ExportError  # noqa: E402
from sacvit_edge.manifest import read_manifest  # noqa: E402
from sacvit_edge.serving.repository import OUTPUTS, ServingOptions, build_repository  # noqa: E402
from sacvit_edge.serving.server import (TritonServer, find_tritonserver, free_ports, interpreter_libdir,  # noqa: E402
                                        server_environment)

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
MAX_PIXELS = 1_000_000
pytestmark = pytest.mark.slow


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def unseen() -> list[bytes]:
    """Canvases of the test split at a layout seed the model was not tuned on, as PNG files."""
    x, _ = next(ClutteredFashionMNIST("test", seed=11, offset=3000, limit=40).batches(40))
    return [_png(a) for a in x]


@pytest.fixture(scope="module")
def reference():
    with EdgeClassifier(EXPORT, backend="onnxruntime", max_pixels=MAX_PIXELS) as clf:
        yield clf


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a repository path, a port option)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_repository(EXPORT, tmp_path_factory.mktemp("triton") / "repo",
                            ServingOptions(max_batch=16, max_queue_delay_us=20_000, max_pixels=MAX_PIXELS))
    http, grpc, metrics = free_ports(3)
    srv = TritonServer(repo.path, http_port=http, grpc_port=grpc, metrics_port=metrics, address="127.0.0.1")
    srv.start(timeout_s=120)
    yield srv
    stubs = dict(srv.stubs)
    srv.stop()
    time.sleep(0.5)
    assert len(stubs) == 3 and _processes_mentioning(str(repo.path)) == []  # the server and its model stubs are gone
    assert not [r for r in stubs.values() if (Path("/dev/shm") / r).exists()]  # and their shared memory


def _http_infer(url: str, items: list[bytes], model: str = "sacvit"):
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("image", [len(items), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b] for b in items], dtype=np.object_))
    return client.infer(model, [inp])


def _assert_same(result, predictions) -> None:
    """class and exit decision equal, confidence within 1e-4, top-k equal: the issue's bar."""
    assert result.as_numpy("class_id").ravel().tolist() == [p.class_id for p in predictions]
    assert result.as_numpy("exited_early").ravel().tolist() == [p.exited_early for p in predictions]
    assert result.as_numpy("num_target_tokens").ravel().tolist() == [p.num_target_tokens for p in predictions]
    assert [x.decode() for x in result.as_numpy("label").ravel()] == [p.label for p in predictions]
    np.testing.assert_allclose(result.as_numpy("confidence").ravel(), [p.confidence for p in predictions], atol=1e-4)
    assert result.as_numpy("topk_class_ids").tolist() == [[c for c, _, _ in p.topk] for p in predictions]
    np.testing.assert_allclose(result.as_numpy("topk_probs"), [[q for _, _, q in p.topk] for p in predictions],
                               atol=1e-4)


# ---- the repository ----------------------------------------------------------------------------
@pytest.mark.parametrize("stage_backend", ["python", "onnxruntime", "inline"])
def test_configs_parse_with_tritons_schema_and_follow_the_engine_contract(tmp_path, stage_backend):
    repo = build_repository(EXPORT, tmp_path / "repo", ServingOptions(stage_backend=stage_backend, max_batch=8))
    manifest = read_manifest(EXPORT)
    dims = dimensions(manifest.config)
    configs = {}
    for model in repo.models:
        cfg = model_config_pb2.ModelConfig()
        text_format.Parse((repo.path / model / "config.pbtxt").read_text(), cfg)  # strict: unknown fields fail
        configs[model] = cfg
        assert cfg.name == model and cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    bls = configs["sacvit"]
    assert bls.backend == "python" and (repo.path / "sacvit" / "1" / "model.py").is_file()
    assert [o.name for o in bls.output] == list(OUTPUTS)
    assert all(i.optional for i in bls.input) and [i.name for i in bls.input] == ["image", "frame"]
    assert bls.parameters["engines"].string_value == ("inline" if stage_backend == "inline" else "models")
    if stage_backend == "inline":  # no stage models: the BLS model runs both engines
        assert repo.models == ["sacvit"] and sorted(p.name for p in repo.path.iterdir() if p.is_dir()) == ["sacvit"]
        return
    for stage in ("ee", "sac"):
        cfg = configs[f"sacvit_{stage}"]
        assert cfg.backend == stage_backend
        assert (repo.path / f"sacvit_{stage}" / "1" / "model.onnx").is_file()
        assert (repo.path / f"sacvit_{stage}" / "1" / "model.py").is_file() == (stage_backend == "python")
        for declared, spec in zip([*cfg.input, *cfg.output], [*STAGES[stage].inputs, *STAGES[stage].outputs]):
            assert declared.name == spec.name
            want = [-1 if s in DYNAMIC else dims[s] for s in spec.shape[1:]]  # the batch axis is Triton's
            assert list(declared.dims) == want, (stage, spec.name)
        # and against the graph Triton will load: same rank (batch axis dropped), and every
        # dimension the graph fixes is the config's (a symbolic one may be fixed by the config)
        import onnxruntime as ort

        graph = ort.InferenceSession(str(repo.path / f"sacvit_{stage}" / "1" / "model.onnx"),
                                     providers=["CPUExecutionProvider"])
        for declared, arg in zip([*cfg.input, *cfg.output], [*graph.get_inputs(), *graph.get_outputs()]):
            assert declared.name == arg.name
            graph_dims = arg.shape[1:]
            assert len(declared.dims) == len(graph_dims), (stage, arg.name)
            assert all(c == g for c, g in zip(declared.dims, graph_dims) if isinstance(g, int)), (stage, arg.name)
    # the SAC model's token axes are dynamic: any k in the engines' range
    sac_inputs = {i.name: list(i.dims) for i in configs["sacvit_sac"].input}
    assert sac_inputs["target_idx"] == [-1] and sac_inputs["target_patches"][0] == -1


def test_repository_is_written_only_where_nothing_of_the_users_is_lost(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="notes.txt"):
        build_repository(EXPORT, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    repo = build_repository(EXPORT, tmp_path / "repo")
    (repo.path / "users_model").mkdir()  # a model the user added to the repository beside ours
    (repo.path / "users_model" / "config.pbtxt").write_text('name: "users_model"')
    again = build_repository(EXPORT, tmp_path / "repo", ServingOptions(model_name="fashion"))  # its own: replaced
    assert sorted(p.name for p in again.path.iterdir() if p.is_dir()) == ["fashion", "fashion_ee", "fashion_sac",
                                                                          "users_model"]
    assert (again.path / "users_model" / "config.pbtxt").read_text() == 'name: "users_model"'
    assert repo.path == again.path and not [p for p in tmp_path.iterdir() if p.name.startswith(".repo")]
    with pytest.raises(ConfigError, match="--max-batch"):
        build_repository(EXPORT, tmp_path / "other", ServingOptions(max_batch=10_000))
    with pytest.raises(ConfigError, match="--model-name"):
        build_repository(EXPORT, tmp_path / "other", ServingOptions(model_name="../up"))
    assert not (tmp_path / "other").exists()


def test_server_environment_puts_this_interpreters_libpython_first_and_leaves_ours_alone():
    before = dict(os.environ)
    env = server_environment(find_tritonserver(), {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(interpreter_libdir())
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[-1] == "/opt/x"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert dict(os.environ) == before


# ---- a real server ---------------------------------------------------------------------------------
def test_ready_only_with_every_model_loaded(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_ready()
    assert all(client.is_model_ready(m) for m in ("sacvit", "sacvit_ee", "sacvit_sac"))


def test_http_and_grpc_answer_as_edgeclassifier(server, reference, unseen):
    items = [p.read_bytes() for p in SAMPLES] + unseen
    want = reference.predict_batch(items)
    assert 0 < sum(p.exited_early for p in want) < len(want)  # both paths are exercised
    for at in range(0, len(items), 16):
        _assert_same(_http_infer(server.http_url, items[at:at + 16]), want[at:at + 16])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("image", [len(SAMPLES), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[p.read_bytes()] for p in SAMPLES], dtype=np.object_))
    _assert_same(client.infer("sacvit", [inp]), want[:len(SAMPLES)])


def test_raw_bgr_frames_answer_as_edgeclassifier(server, reference):
    rng = np.random.default_rng(0)
    frames = np.stack([np.asarray(Image.open(p).convert("RGB").resize((160, 120)))[..., ::-1] for p in SAMPLES[:4]])
    frames = np.ascontiguousarray(frames) ^ rng.integers(0, 3, frames.shape, dtype=np.uint8)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("frame", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    _assert_same(client.infer("sacvit", [inp], parameters={"color": "bgr"}), reference.predict_batch(list(frames), color="bgr"))


def _metric(server, name: str, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    found = re.findall(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def test_eight_concurrent_clients_are_batched_and_answered_as_edgeclassifier(server, reference, unseen):
    items = ([p.read_bytes() for p in SAMPLES] + unseen) * 5  # 250 requests of one image
    items = items[:200]
    want = reference.predict_batch(items)
    requests0, executions0 = _metric(server, "nv_inference_request_success", "sacvit"), \
        _metric(server, "nv_inference_exec_count", "sacvit")
    got: dict[int, object] = {}
    errors: list = []

    def client(worker: int) -> None:
        try:
            for i in range(worker, len(items), 8):
                got[i] = _http_infer(server.http_url, [items[i]])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 200
    for i in range(200):
        _assert_same(got[i], want[i:i + 1])
    requests = _metric(server, "nv_inference_request_success", "sacvit") - requests0
    executions = _metric(server, "nv_inference_exec_count", "sacvit") - executions0
    assert requests == 200 and executions < requests, (requests, executions)  # Triton's dynamic batcher at work


def test_bad_requests_get_a_named_error_and_the_server_goes_on(server, reference):
    good = SAMPLES[0].read_bytes()
    cases = {b"not an image at all": "not an image pillow can read", good[: len(good) // 3]: "corrupt or truncated",
             b"": "0 bytes", _png(np.zeros((1000, 1001, 3), np.uint8)): "max_pixels"}
    for payload, why in cases.items():
        with pytest.raises(InferenceServerException, match=why) as bad:
            _http_infer(server.http_url, [payload])
        assert bad.value.status() == "400", bad.value
        _assert_same(_http_infer(server.http_url, [good]), [reference.predict(good)])  # and the next is served
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="0 inputs|no input"):  # Triton refuses it itself
        client.infer("sacvit", [])
    wrong = httpclient.InferInput("image", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1), np.float32))
    with pytest.raises(InferenceServerException, match="(?i)data.?type|TYPE_STRING|BYTES"):
        client.infer("sacvit", [wrong])
    frame = httpclient.InferInput("frame", [1, 8, 8, 3], "UINT8")
    frame.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="color"):
        client.infer("sacvit", [frame], parameters={"color": "yuv"})


def test_one_bad_request_does_not_fail_the_good_ones_batched_with_it(server, reference):
    """Eight requests at once (the batcher holds them up to 20 ms): the corrupt one gets its
    error, the seven others their answers."""
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    payloads = [p.read_bytes() for p in SAMPLES[:7]]
    payloads.insert(3, b"\x89PNG\r\n\x1a\n garbage")
    executions0 = _metric(server, "nv_inference_exec_count", "sacvit")
    pending = []
    for b in payloads:
        inp = httpclient.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b]], dtype=np.object_))
        pending.append(client.async_infer("sacvit", [inp]))
    want = reference.predict_batch(payloads[:3] + payloads[4:])
    answers = []
    for i, p in enumerate(pending):
        if i == 3:
            with pytest.raises(InferenceServerException, match="corrupt or truncated") as bad:
                p.get_result()
            assert bad.value.status() == "400"  # the client's fault, said so
        else:
            answers.append(p.get_result())
    for a, w in zip(answers, want):
        _assert_same(a, [w])
    assert _metric(server, "nv_inference_exec_count", "sacvit") - executions0 < len(payloads)  # batched together


def test_engines_inline_answer_as_edgeclassifier(tmp_path, reference, unseen):
    repo = build_repository(EXPORT, tmp_path / "repo", ServingOptions(stage_backend="inline", max_batch=16,
                                                                       max_pixels=MAX_PIXELS))
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo.path, http_port=http, grpc_port=grpc, metrics_port=metrics, address="127.0.0.1") as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        assert client.is_model_ready("sacvit") and not client.is_model_ready("sacvit_ee")
        _assert_same(_http_infer(srv.http_url, unseen[:16]), reference.predict_batch(unseen[:16]))


# ---- the command ------------------------------------------------------------------------------------
def test_serve_command_is_ready_answers_and_stops_on_sigterm(tmp_path, reference):
    http, grpc, metrics = free_ports(3)
    shm_before = set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()
    cli = Path(sys.executable).parent / "sacvit-edge"
    proc = subprocess.Popen([str(cli), "serve", str(EXPORT), "--http-port", str(http), "--grpc-port", str(grpc),
                             "--metrics-port", str(metrics), "--address", "127.0.0.1", "--max-batch", "8"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        start = time.monotonic()
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        while time.monotonic() - start < 60:
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            pytest.fail("serve was not ready within 60 s")
        good = SAMPLES[1].read_bytes()
        _assert_same(_http_infer(f"127.0.0.1:{http}", [good]), [reference.predict(good)])
        # a request in flight when SIGTERM arrives is finished, not dropped
        in_flight = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        batch = [p.read_bytes() for p in SAMPLES[:8]]
        inp = httpclient.InferInput("image", [len(batch), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in batch], dtype=np.object_))
        pending = in_flight.async_infer("sacvit", [inp])
        time.sleep(0.05)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _assert_same(pending.get_result(), reference.predict_batch(batch))
        out, _ = proc.communicate(timeout=30)
        assert time.monotonic() - stopped_at < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "ready" in out and "stopped" in out, out
    with pytest.raises(Exception):
        httpclient.InferenceServerClient(f"127.0.0.1:{http}").is_server_live()
    time.sleep(0.5)
    assert _processes_mentioning(f"--http-port {http} ") == []  # no tritonserver left behind
    # Triton leaves its model processes' shared memory when its exit timeout expires (an idle
    # client connection, as here): serve removes it
    left = (set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()) - shm_before
    assert not [f for f in left if f.startswith("triton_python_backend_shm")], left
    assert os.listdir(tmp_path) == []  # nothing written into the working directory


def test_export_triton_command_with_relative_paths_and_safe_output(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["export-triton", str(EXPORT), "-o", "repo", "--backend", "python", "--max-batch", "8"])
    assert r.exit_code == 0, r.output
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "repo" / "sacvit_sac" / "config.pbtxt").read_text(), cfg)
    assert cfg.max_batch_size == 8 and cfg.backend == "python"
    assert runner.invoke(app, ["export-triton", str(EXPORT), "-o", "repo"]).exit_code == 0  # its own: replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    r = runner.invoke(app, ["export-triton", str(EXPORT), "-o", "notes"])
    assert r.exit_code == 3 and "todo.txt" in r.output and (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    r = runner.invoke(app, ["export-triton", str(EXPORT), "-o", "x", "--max-batch", "0"])
    assert r.exit_code == 2 and "--max-batch" in r.output


def test_serve_bench_reports_the_served_exit_rate_of_the_classifier(tmp_path, reference):
    """The load test's machinery (not its speed): every image answered, the exit rate the served
    model reports is the in-process classifier's on the same images, the batches are Triton's."""
    from typer.testing import CliRunner

    from sacvit_edge.bench.serving import unseen_images
    from sacvit_edge.cli import app

    r = CliRunner().invoke(app, ["serve-bench", str(EXPORT), "--no-deit", "--images", "24", "--rounds", "1",
                                 "--clients", "4", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "serve_bench.json").read_text())
    items, _ = unseen_images(EXPORT, 24, None)
    want = np.mean([p.exited_early for p in reference.predict_batch(items)])
    served = [row for row in report["rows"] if row["name"].startswith("SAC-ViT")]
    assert len(served) == 2 and all(row["images"] == 24 and row["errors"] == 0 for row in served)
    assert all(row["exit_rate"] == pytest.approx(want) for row in served)
    assert all(sum(int(b) * n for b, n in row["batch_sizes"].items()) == 24 for row in served)


def test_tensorrt_stage_models_carry_the_bare_plans_of_the_exports_engines(random_export, tmp_path):
    """Triton's tensorrt backend loads a bare plan: the engine file minus sacvit-edge's header.
    The engines here come from the TensorRT TEST DOUBLE's build (tests/doubles): this checks the
    repository's files and configs, not that Triton runs them (no TensorRT here)."""
    import shutil

    from doubles.fake_cuda import FakeCuda
    from doubles.fake_tensorrt import make_tensorrt
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.runtimes.trt import TrtApi, read_plan

    export = Path(shutil.copytree(random_export, tmp_path / "export"))
    with pytest.raises(ConfigError, match="build-engine"):
        build_repository(export, tmp_path / "none", ServingOptions(stage_backend="tensorrt"))
    cuda = FakeCuda("FakeGPU (test double)", "0.0")
    m = build_engines(read_manifest(export), "fp32", api=TrtApi(trt=make_tensorrt("10.3.0", cuda), cuda=cuda))
    repo = build_repository(export, tmp_path / "repo", ServingOptions(stage_backend="tensorrt", max_batch=8))
    for stage in ("ee", "sac"):
        record = next(r for r in m.derived.tensorrt_engines if r.stage == stage and r.precision == "fp32")
        plan = (repo.path / f"sacvit_{stage}" / "1" / "model.plan").read_bytes()
        assert plan == read_plan(m.path(record.file)) and len(plan) < m.path(record.file).stat().st_size
        engine_file = m.path(record.file).read_bytes()
        assert engine_file.endswith(plan) and engine_file[:8] == b"SACVTRT2" and b"SACVTRT2" not in plan[:8]
        cfg = model_config_pb2.ModelConfig()
        text_format.Parse((repo.path / f"sacvit_{stage}" / "config.pbtxt").read_text(), cfg)
        assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert [t.name for t in cfg.input] == STAGES[stage].input_names
    assert not (repo.path / "sacvit_crop").exists()  # the BLS model cuts the target patches on the host


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc (Linux)")
def test_the_python_backend_stubs_run_this_interpreters_libpython(server):
    """Each model's stub process maps the libpython of the interpreter whose standard library and
    site-packages it imports, not another one the dynamic linker would find first."""
    stubs = [p for p in _children(server.process.pid)
             if "triton_python_backend_stub" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(stubs) == 3  # sacvit, sacvit_ee, sacvit_sac
    for pid in stubs:
        libs = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "libpython3" in line}
        assert libs and all(Path(lib).parent == interpreter_libdir() for lib in libs), libs


def test_serve_bench_gives_deit_the_graph_style_of_the_served_engines(random_export):
    from sacvit_edge.bench.serving import baseline_attention

    with_graphs = read_manifest(random_export)
    assert with_graphs.attention_graphs is not None and baseline_attention(with_graphs) == "onnx"
    older = read_manifest(Path(__file__).parent / "fixtures" / "format3_export")  # opset-17 graphs only
    assert older.attention_graphs is None and baseline_attention(older) == "explicit"


@pytest.mark.parametrize("change, why", [
    ({"threads": 0}, "--threads"), ({"stage_backend": "gpu"}, "--backend"), ({"precision": "fp8"}, "--precision"),
    ({"precision": "int8"}, "no int8 graphs"), ({"topk": 0}, "--topk"), ({"instances": 0}, "--instances"),
    ({"max_queue_delay_us": -1}, "--max-queue-delay-us"), ({"eta": 2.0}, "eta"),
    ({"deadline_ms": 5.0}, "calibrate"), ({"max_pixels": True}, "--max-pixels")])
def test_serving_options_name_the_bad_value_before_anything_is_written(tmp_path, change, why):
    with pytest.raises(ConfigError, match=why):
        build_repository(EXPORT, tmp_path / "repo", ServingOptions(**change))
    assert not (tmp_path / "repo").exists() and list(tmp_path.iterdir()) == []


def test_server_settings_and_binaries_are_checked(tmp_path):
    from sacvit_edge.serving.repository import read_repository

    for bad, why in (({"http_port": 0}, "--http-port"), ({"grpc_port": 8000}, "must differ"),
                     ({"exit_timeout_s": -1}, "--exit-timeout")):
        with pytest.raises(ConfigError, match=why):
            TritonServer(tmp_path, **bad)
    not_executable = tmp_path / "tritonserver"
    not_executable.write_text("")
    with pytest.raises(ConfigError, match="not an executable"):
        find_tritonserver(not_executable)
    not_executable.chmod(0o755)
    with pytest.raises(ConfigError, match="no backends directory"):
        find_tritonserver(not_executable)
    with pytest.raises(ExportError, match="not a model repository"):
        read_repository(tmp_path)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_serve_refuses_a_backend_the_server_lacks_before_writing_anything(tmp_path, backend):
    import tempfile

    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    before = {p.name for p in Path(tempfile.gettempdir()).glob("sacvit-edge-serve-*")}
    r = CliRunner().invoke(app, ["serve", str(EXPORT), "--backend", backend, "--repository", str(tmp_path / "repo")])
    assert r.exit_code == 2 and f"{backend} backend" in r.output, r.output
    assert not (tmp_path / "repo").exists()
    assert {p.name for p in Path(tempfile.gettempdir()).glob("sacvit-edge-serve-*")} == before


def test_a_request_with_both_inputs_is_refused_by_name(server):
    client = httpclient.InferenceServerClient(server.http_url)
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[SAMPLES[0].read_bytes()]], dtype=np.object_))
    frame = httpclient.InferInput("frame", [1, 8, 8, 3], "UINT8")
    frame.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="both 'image' and 'frame'") as bad:
        client.infer("sacvit", [image, frame])
    assert bad.value.status() == "400"
