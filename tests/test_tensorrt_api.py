"""The TensorRT test double and the project's TensorRT call sites against the REAL bindings' API.

tests/fixtures/tensorrt_api.json was recorded by scripts/record_tensorrt_api.py from NVIDIA's real
Python bindings (tensorrt-cu12-bindings 10.16.1.11 and 11.4.0.106) loaded over placeholder
libraries: enum values, method signatures, trt.nptype's table, constructor refusals. No TensorRT
ran to make it, and nothing here runs TensorRT: these tests keep the double (tests/doubles) honest
where a difference would let a real bug pass the TensorRT tests, and check that every TensorRT call
the project makes exists, with the argument and return types it assumes, in both major versions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from doubles.fake_cuda import FakeCuda
from doubles.fake_tensorrt import FAILURES, make_tensorrt

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "tensorrt_api.json").read_text())["versions"]
VERSIONS = sorted(FIXTURE)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=VERSIONS)
def real(request):
    return request.param, FIXTURE[request.param]


def test_fixture_covers_a_10x_and_an_11x_surface():
    assert {v.split(".")[0] for v in VERSIONS} >= {"10", "11"}


@pytest.mark.parametrize("enum", ["NetworkDefinitionCreationFlag", "BuilderFlag", "DataType", "TensorIOMode",
                                  "MemoryPoolType"])
def test_double_enums_have_the_real_members_and_values(real, enum):
    version, api = real
    trt = make_tensorrt(version, FakeCuda())
    double = {m.name: int(m) for m in getattr(trt, enum)}
    truth = api["enums"][enum]
    assert double, enum
    for name, value in double.items():  # every member the double has is real, with the real value
        assert truth.get(name) == value, f"{enum}.{name}: double {value}, TensorRT {version} {truth.get(name)}"


def test_double_removed_members_are_removed(real):
    version, api = real
    trt = make_tensorrt(version, FakeCuda())
    for name in ("FP16", "INT8"):
        assert hasattr(trt.BuilderFlag, name) == (name in api["enums"]["BuilderFlag"])
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (
        "EXPLICIT_BATCH" in api["enums"]["NetworkDefinitionCreationFlag"])
    severities = {n: int(getattr(trt.Logger, n)) for n in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")}
    assert severities == api["enums"]["Logger.Severity"]


def test_double_nptype_is_the_real_table(real):
    version, api = real
    trt = make_tensorrt(version, FakeCuda())
    for name, expected in api["nptype"].items():
        member = getattr(trt.DataType, name)
        if expected == "TypeError":
            with pytest.raises(TypeError):
                trt.nptype(member)
        else:
            assert np.dtype(trt.nptype(member)).name == expected, name


def test_double_constructors_refuse_what_the_bindings_refuse(real):
    version, api = real
    trt = make_tensorrt(version, FakeCuda())
    probes = {"Runtime(None)": lambda: trt.Runtime(None), "Builder(None)": lambda: trt.Builder(None),
              "OnnxParser(object(), Logger())": lambda: trt.OnnxParser(object(), trt.ILogger())}
    assert set(api["refuses"]) == set(probes)
    for probe, expected in api["refuses"].items():
        if expected == "TypeError":
            with pytest.raises(TypeError):
                probes[probe]()
        else:  # the real bindings accepted it: so must the double
            probes[probe]()


def _returns(api, member: str) -> set[str]:
    sigs = api["members"][member]["signatures"]
    return {s.rsplit("->", 1)[1].strip().rsplit(".", 1)[-1] for s in sigs if "->" in s}


@pytest.mark.parametrize("member,returns", [
    ("IExecutionContext.set_input_shape", {"bool"}), ("IExecutionContext.set_tensor_address", {"bool"}),
    ("IExecutionContext.execute_async_v3", {"bool"}), ("IOptimizationProfile.set_shape", {"None"}),
    ("IExecutionContext.set_optimization_profile_async", {"bool"}),
    ("ICudaEngine.get_tensor_profile_shape", {"list[tensorrt_bindings.tensorrt.Dims]", "Dims]", "list[Dims]"}),
    ("Builder.build_serialized_network", {"IHostMemory"}),
    ("ICudaEngine.get_tensor_dtype", {"DataType"}), ("ICudaEngine.get_tensor_mode", {"TensorIOMode"}),
])
def test_return_conventions_the_project_relies_on(real, member, returns):
    """The project checks set_input_shape / set_tensor_address / execute_async_v3 for False (the
    real API reports by return value), so those must return bool in every version."""
    version, api = real
    got = _returns(api, member)
    assert got and (got & returns or any(r in g for g in got for r in returns)), (member, version, got)


def test_every_tensorrt_call_of_the_project_exists_in_both_versions(real):
    """Each method the project calls on a TensorRT object (runtimes/trt.py, export/tensorrt.py) is a
    member of the real API in every recorded version (the recorder's list covers the call sites)."""
    version, api = real
    missing = [m for m, v in api["members"].items() if v is None]
    assert not missing, (version, missing)
    sources = "\n".join((ROOT / f).read_text() for f in ("runtimes/trt.py", "export/tensorrt.py"))
    recorded = {m.split(".")[1] for m in api["members"]}
    called = set(re.findall(r"\.(set_input_shape|set_tensor_address|execute_async_v3|get_tensor_profile_shape|"
                            r"build_serialized_network|deserialize_cuda_engine|create_network|create_execution_context|"
                            r"create_optimization_profile|add_optimization_profile|set_flag|clear_flag|"
                            r"set_memory_pool_limit|get_tensor_dtype|get_tensor_mode|get_tensor_shape|get_tensor_name|"
                            r"create_builder_config|set_shape|get_error|set_optimization_profile_async)\(", sources))
    assert called and called <= recorded, called - recorded


def test_strongly_typed_network_flag_is_the_real_bit(real, random_export):
    """create_network takes a bit mask: on 10.x STRONGLY_TYPED is bit 1 (bit 0, EXPLICIT_BATCH, is
    ignored), so `1 << STRONGLY_TYPED` = 2; 11.x networks are always strongly typed. A hard-coded
    create_network(1) would build a weakly typed network on real 10.x: the double now says so."""
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.trt import TrtApi

    version, api = real
    cuda = FakeCuda()
    trt = make_tensorrt(version, cuda)
    import shutil, tempfile  # noqa: E401

    with tempfile.TemporaryDirectory() as tmp:
        d = shutil.copytree(random_export, Path(tmp) / "e")
        build_engines(read_manifest(d), "fp16", api=TrtApi(trt=trt, cuda=cuda))
    flag_value = api["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"]
    if version.startswith("10"):
        assert {b["network_flags"] for b in trt.builds} == {1 << flag_value} == {2}
    else:  # 11.x: no creation flags at all (STRONGLY_TYPED is 0 there and ignored)
        assert {b["network_flags"] for b in trt.builds} == {0}
    assert all(b["strongly_typed"] for b in trt.builds)


@pytest.mark.parametrize("failure", FAILURES)
def test_each_false_or_none_of_the_real_api_is_a_named_backend_error(random_export, failure, tmp_path):
    """Real TensorRT reports these failures by return value (None / False), not by raising: each
    one becomes the project's BackendError naming the call's object; removing a check fails here."""
    import shutil

    from sacvit_edge.errors import BackendError
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.trt import TensorRTBackend, TrtApi

    d = shutil.copytree(random_export, tmp_path / "e")
    cuda = FakeCuda()
    m = build_engines(read_manifest(d), "fp32", api=TrtApi(trt=make_tensorrt("10.16.1", cuda), cuda=cuda))
    cuda = FakeCuda()
    api = TrtApi(trt=make_tensorrt("10.16.1", cuda, fail=(failure,)), cuda=cuda)
    expected = {"deserialize_cuda_engine": "could not deserialise", "create_execution_context": "execution context",
                "set_optimization_profile_async": "refused optimisation profile 0",
                "set_tensor_address": "refused the address", "execute_async_v3": "failed to enqueue"}[failure]
    with pytest.raises(BackendError, match=expected):
        backend = TensorRTBackend(m, api=api, rebuild=False)
        backend.run_ee(np.zeros((1, 3, 112, 112), np.float32))


def test_unmapped_engine_dtype_is_refused_naming_the_tensor(random_export, tmp_path, monkeypatch):
    """trt.nptype raises TypeError for BF16 (and FP8, INT4, ...): an engine with such an I/O tensor is
    a BackendError naming the stage and tensor, not a raw TypeError."""
    import shutil

    from sacvit_edge.errors import BackendError
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.trt import TensorRTBackend, TrtApi

    d = shutil.copytree(random_export, tmp_path / "e")
    cuda = FakeCuda()
    trt = make_tensorrt("10.16.1", cuda)
    api = TrtApi(trt=trt, cuda=cuda)
    m = build_engines(read_manifest(d), "fp32", api=api)

    def runtime_with_bf16(logger):
        runtime = trt_runtime(logger)
        load = runtime.deserialize_cuda_engine

        def deserialize(blob):
            engine = load(blob)
            if engine is not None and "gca" in engine.dtypes:
                engine.dtypes["gca"] = trt.DataType.BF16
            return engine

        runtime.deserialize_cuda_engine = deserialize
        return runtime

    trt_runtime = trt.Runtime
    monkeypatch.setattr(trt, "Runtime", runtime_with_bf16)
    with pytest.raises(BackendError, match="ee engine tensor gca: TensorRT dtype BF16"):
        TensorRTBackend(m, api=api, rebuild=False)


def test_inconsistent_profile_shapes_are_an_engine_build_error(random_export, tmp_path, monkeypatch):
    """The real set_shape raises ValueError for min > opt or opt > max: the builder names the file and tensor."""
    import shutil

    import sacvit_edge.export.tensorrt as builder
    from sacvit_edge.errors import EngineBuildError
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.trt import TrtApi

    d = shutil.copytree(random_export, tmp_path / "e")
    real_shapes = builder.profile_shapes

    def swapped(*args, **kwargs):
        shapes = real_shapes(*args, **kwargs)
        return {name: (hi, opt, lo) for name, (lo, opt, hi) in shapes.items()}

    monkeypatch.setattr(builder, "profile_shapes", swapped)
    cuda = FakeCuda()
    with pytest.raises(EngineBuildError, match="refused the optimisation profile of image"):
        builder.build_engines(read_manifest(d), "fp32", api=TrtApi(trt=make_tensorrt("10.16.1", cuda), cuda=cuda))


def test_cuda_python_without_a_driver_means_tensorrt_unavailable(monkeypatch):
    """TEST DOUBLE of cuda-python 12.4 on a machine with no NVIDIA driver: cudaSetDevice raises
    RuntimeError('Failed to dlopen libcuda.so.1') (the behaviour issue 23 recorded). TensorRT is
    then unavailable with the reason, available_backends() still answers, and auto picks ONNX Runtime."""
    import types

    import sacvit_edge.runtimes as runtimes
    import sacvit_edge.runtimes.cuda as cuda_mod

    cudart = types.SimpleNamespace(cudaSetDevice=lambda d: (_ for _ in ()).throw(
        RuntimeError("Failed to dlopen libcuda.so.1")))
    monkeypatch.setattr(cuda_mod, "_cudart", lambda: cudart)
    real_find = runtimes.importlib.util.find_spec
    monkeypatch.setattr(runtimes.importlib.util, "find_spec",
                        lambda name, *a: types.SimpleNamespace() if name in ("tensorrt", "cuda") else real_find(name, *a))
    ok, why = runtimes.tensorrt_usable()
    assert not ok and "Failed to dlopen libcuda.so.1" in why
    names = runtimes.available_backends()
    assert "tensorrt" not in names and names[0] == "onnxruntime"


def test_the_double_streams_are_asynchronous_enough_to_expose_a_missing_wait(random_export, tmp_path):
    """FakeCuda runs queued work only when the host waits: the backend's results are right with its
    event wait, and stale (the staging buffers' old zeros) when the wait is removed."""
    import shutil

    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.trt import TensorRTBackend, TrtApi

    d = shutil.copytree(random_export, tmp_path / "e")
    cuda = FakeCuda()
    api = TrtApi(trt=make_tensorrt("10.16.1", cuda), cuda=cuda)
    m = build_engines(read_manifest(d), "fp32", api=api)
    image = np.random.default_rng(0).standard_normal((2, 3, 112, 112)).astype(np.float32)
    backend = TensorRTBackend(m, api=api, rebuild=False)
    first = backend.run_ee(image)
    waited = first.logits.copy()
    backend.release(first)
    assert np.abs(waited).max() > 0
    cuda.record_and_wait = lambda event, stream: None  # the missing synchronisation
    second = backend.run_ee(image)
    assert not np.allclose(second.logits, waited), "a missing wait must show"
    backend.release(second)
    backend.close()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_every_execution_context_has_an_optimisation_profile_of_its_own(random_export, tmp_path, cuda_graph):
    """TensorRT's guide: each execution context in use needs a profile index no other context holds.
    Engines are built with runtimes.trt.PROFILES identical profiles; slot i's contexts take profile i
    and, with cuda_graph, its EE graph context takes profile slots + i. More slots than profiles is a
    BackendError saying how many fit, before any context is made."""
    import shutil

    from sacvit_edge.errors import BackendError
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.trt import PROFILES, TensorRTBackend, TrtApi

    d = shutil.copytree(random_export, tmp_path / "e")
    cuda = FakeCuda()
    trt = make_tensorrt("10.16.1", cuda)
    api = TrtApi(trt=trt, cuda=cuda)
    m = build_engines(read_manifest(d), "fp32", api=api)
    assert {b["profiles"] for b in trt.builds} == {PROFILES}
    backend = TensorRTBackend(m, api=api, rebuild=False, slots=2, cuda_graph=cuda_graph)
    for stage in ("ee", "crop", "sac"):
        held = [slot.contexts[stage].profile_index for slot in backend.pool.slots]
        if stage == "ee" and cuda_graph:
            held += [slot.contexts["ee_graph"].profile_index for slot in backend.pool.slots]
        assert sorted(held) == list(range(len(held))), (stage, held)
    out = backend.run_ee(np.zeros((1, 3, 112, 112), np.float32))
    assert np.isfinite(out.logits).all()
    backend.release(out)
    backend.close()
    too_many = PROFILES // 2 + 1 if cuda_graph else PROFILES + 1
    with pytest.raises(BackendError, match=f"needs {too_many * (2 if cuda_graph else 1)} optimisation profiles"):
        TensorRTBackend(m, api=api, rebuild=False, slots=too_many, cuda_graph=cuda_graph)
