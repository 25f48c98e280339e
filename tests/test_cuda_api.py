"""runtimes/cuda.py against the REAL cuda-python API (tests/fixtures/cuda_python_api.json, recorded
by scripts/record_cuda_api.py from cuda-python 12.4, 12.9 and 13.4.4), and run over the
cuda-python-level test double (tests/doubles/fake_cudart.py). Nothing here runs CUDA."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from doubles.fake_cudart import make_cudart
from sacvit_edge.errors import BackendError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "cuda_python_api.json").read_text())["versions"]
USED = sorted(set(re.findall(r"self\.rt\.([A-Za-z_]+(?:\.[A-Za-z_]+)?)", (ROOT / "runtimes" / "cuda.py").read_text())))


@pytest.mark.parametrize("version", sorted(FIXTURE))
def test_every_runtime_call_exists_with_the_real_values(version):
    """Each function and constant runtimes/cuda.py uses exists in every recorded cuda-python (in
    cuda.cudart for 12.4, cuda.bindings.runtime after: _cudart tries both), and the double has the
    real enum values."""
    api = FIXTURE[version]
    assert set(USED) <= set(api["members"]), sorted(set(USED) - set(api["members"]))
    assert all(api["members"][name] for name in USED), [n for n in USED if not api["members"][n]]
    rt = make_cudart()
    for name, value in api["values"].items():
        obj = rt
        for part in name.split("."):
            obj = getattr(obj, part)
        assert int(obj) == value, (version, name)
    for name in USED:  # and the double has every member the runtime uses
        obj = rt
        for part in name.split("."):
            obj = getattr(obj, part)


@pytest.mark.parametrize("version", sorted(FIXTURE))
def test_without_a_driver_each_version_is_handled(version, monkeypatch):
    """What cudaSetDevice did with no NVIDIA driver in each recorded cuda-python (12.4: raises
    RuntimeError; 12.9 / 13.4: returns (cudaErrorInsufficientDriver,)), replayed through the double
    into the real CudaRuntime: a BackendError saying why, never a raw error."""
    import builtins

    import sacvit_edge.runtimes.cuda as cuda_mod

    seen = FIXTURE[version]["cudaSetDevice_without_driver"]
    rt = make_cudart()
    if "raises" in seen:
        def set_device(device):
            raise getattr(builtins, seen["raises"])(seen["message"])
    else:
        assert seen["returns"] == "tuple" and seen["length"] == 1
        code = rt.cudaError_t.cudaErrorInvalidValue  # the double's stand-in for the recorded error code
        set_device = lambda device: (code,)  # noqa: E731
    rt.cudaSetDevice = set_device
    monkeypatch.setattr(cuda_mod, "_cudart", lambda: rt)
    with pytest.raises(BackendError, match="cudaSetDevice"):
        cuda_mod.CudaRuntime()


@pytest.fixture
def runtime(monkeypatch):
    import sacvit_edge.runtimes.cuda as cuda_mod

    rt = make_cudart()
    monkeypatch.setattr(cuda_mod, "_cudart", lambda: rt)
    return cuda_mod.CudaRuntime(), rt


def test_the_real_cuda_runtime_wrapper_runs_over_the_double(runtime):
    """runtimes/cuda.CudaRuntime itself (not tests/doubles/fake_cuda): pinned and device memory, an
    asynchronous round trip made visible by the event wait, a captured graph replayed after its
    source changed, and everything freed."""
    cuda, rt = runtime
    assert cuda.properties()["name"].startswith("FakeGPU")
    n = 4096
    src_ptr, src = cuda.host_alloc(n)
    dst_ptr, dst = cuda.host_alloc(n)
    dev = cuda.malloc(n)
    stream, event = cuda.stream(), cuda.event()
    src[:] = np.arange(n) % 251
    cuda.copy_to_device(dev, src_ptr, n, stream)
    cuda.copy_to_host(dst_ptr, dev, n, stream)
    assert not (dst == src).all()  # queued, not run: the stream is asynchronous
    cuda.record_and_wait(event, stream)
    assert (dst == src).all()
    cuda.begin_capture(stream)
    cuda.copy_to_device(dev, src_ptr, n, stream)
    cuda.copy_to_host(dst_ptr, dev, n, stream)
    graph = cuda.end_capture(stream)
    src[:], dst[:] = 7, 0
    cuda.launch(graph, stream)
    cuda.record_and_wait(event, stream)
    assert (dst == 7).all()
    for fn, arg in ((cuda.destroy_graph, graph), (cuda.free, dev), (cuda.host_free, src_ptr), (cuda.host_free, dst_ptr),
                    (cuda.destroy_event, event), (cuda.destroy_stream, stream)):
        fn(arg)
    assert rt.live() == 0


@pytest.mark.parametrize("call", ["cudaMalloc", "cudaMallocHost", "cudaMemcpyAsync", "cudaSetDevice"])
def test_an_error_code_is_a_backend_error_naming_the_call(monkeypatch, call):
    import sacvit_edge.runtimes.cuda as cuda_mod

    rt = make_cudart(fail=(call,))
    monkeypatch.setattr(cuda_mod, "_cudart", lambda: rt)
    with pytest.raises(BackendError, match=f"CUDA call {call}"):
        cuda = cuda_mod.CudaRuntime()
        ptr, _ = cuda.host_alloc(64)
        dev = cuda.malloc(64)
        cuda.copy_to_device(dev, ptr, 64, cuda.stream())


def test_tensorrt_backend_runs_over_the_real_cuda_wrapper(runtime, random_export, tmp_path, monkeypatch):
    """The TensorRT backend (slot pool, buffers at the profile maxima, pinned staging, copies, events)
    over the REAL runtimes/cuda.CudaRuntime, with the cuda-python double beneath it and the TensorRT
    double above it (which reaches device buffers by cudaMemcpy, as it does on a GPU in
    scripts/gpu_check.py): the same answers as ONNX Runtime. Still no TensorRT and no CUDA."""
    import shutil

    from doubles.fake_tensorrt import make_tensorrt
    from sacvit_edge import EdgeClassifier
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    import sacvit_edge.runtimes as runtimes
    import sacvit_edge.runtimes.trt as trt_mod
    from sacvit_edge.runtimes.trt import TrtApi

    cuda, rt = runtime
    d = shutil.copytree(random_export, tmp_path / "e")
    api = TrtApi(trt=make_tensorrt("10.16.1", cuda), cuda=cuda)
    m = build_engines(read_manifest(d), "fp32", api=api)
    x = np.random.default_rng(0).standard_normal((5, 3, 112, 112)).astype(np.float32)
    want = EdgeClassifier(d, backend="onnxruntime").run(x, eta="never")
    monkeypatch.setattr(trt_mod, "load_api", lambda: api)
    monkeypatch.setattr(runtimes, "tensorrt_usable", lambda: (True, "test doubles of TensorRT and cuda-python"))
    clf = EdgeClassifier(m.directory, backend="tensorrt")
    assert clf.backend.name == "tensorrt" and clf.backend.cuda is cuda
    got = clf.run(x, eta="never")
    assert np.abs(got.probs - want.probs).max() < 1e-4 and (got.counts == want.counts).all()
    clf.close()
