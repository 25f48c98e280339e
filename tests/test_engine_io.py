"""The engine I/O contract (sacvit_edge.engine_io) is the one the exporter writes and every
backend checks at load, with the same error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sacvit_edge.engine_io import STAGES, check_engine, dimensions
from sacvit_edge.errors import BackendError
from sacvit_edge.manifest import read_manifest

onnx = pytest.importorskip("onnx", reason="the [export] extra is not installed")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
ONNX_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_}


def declared(path: Path) -> dict:
    graph = onnx.load(str(path)).graph

    def one(v, is_input):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return v.name, (is_input, np.dtype(ONNX_DTYPES[t.elem_type]), shape)

    return dict([one(v, True) for v in graph.input] + [one(v, False) for v in graph.output])


@pytest.mark.parametrize("export", ["bundled", "fresh"])
def test_exported_graphs_are_the_contract(export, random_export):
    directory = BUNDLED if export == "bundled" else random_export
    m = read_manifest(directory)
    for stage in ("ee", "sac"):
        got = declared(directory / f"{stage}.onnx")
        assert list(got) == STAGES[stage].input_names + STAGES[stage].output_names  # names and order
        check_engine(stage, stage, got, dimensions(m.config))
        assert list(m.engines[stage].inputs) == STAGES[stage].input_names


def test_the_check_names_every_difference():
    good = {t.name: (True, t.dtype, [None] * len(t.shape)) for t in STAGES["sac"].inputs}
    good.update({t.name: (False, t.dtype, [None, 10]) for t in STAGES["sac"].outputs})
    dims = {"c": 3, "h": 112, "w": 112, "n": 49, "d": 64, "px": 192, "classes": 10}
    check_engine("sac", "x", good, dims)
    for change, words in ((("target_idx", (True, np.dtype(np.int32), None)), "target_idx is int32, the pipeline feeds int64"),
                          (("sac_logits", (True, np.dtype(np.float32), None)), "sac_logits should be an output"),
                          (("sac_logits", (False, np.dtype(np.float32), [1, 7])), "(classes) is 7, the model needs 10")):
        bad = {**good, change[0]: change[1]}
        with pytest.raises(BackendError, match=words.replace("(", r"\(").replace(")", r"\)")):
            check_engine("sac", "x", bad, dims)
    with pytest.raises(BackendError, match=r"missing \['ee_final', 'ee_hidden', 'ee_logits', 'gca'\]"):
        check_engine("ee", "x", {"image": (True, np.float32, None)}, None)


def _renamed_output(tmp_path: Path) -> Path:
    """A copy of the bundled EE graph whose `gca` output is called `gca2` (a valid graph)."""
    model = onnx.load(str(BUNDLED / "ee.onnx"))
    for node in model.graph.node:
        node.output[:] = ["gca2" if o == "gca" else o for o in node.output]
    for out in model.graph.output:
        if out.name == "gca":
            out.name = "gca2"
    path = tmp_path / "ee.onnx"
    onnx.save(model, str(path))
    shutil.copy(BUNDLED / "sac.onnx", tmp_path / "sac.onnx")
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_backend_refuses_a_foreign_engine_with_the_same_error(tmp_path, backend):
    ee = _renamed_output(tmp_path)
    if backend == "onnxruntime":
        from sacvit_edge.runtimes.ort import OrtBackend as Backend
    else:
        pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
        from sacvit_edge.runtimes.openvino import OpenVinoBackend as Backend
    with pytest.raises(BackendError, match=r"ee\.onnx: not the ee engine .*missing \['gca'\], unexpected \['gca2'\]"):
        Backend(ee, tmp_path / "sac.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "pytorch"])
def test_a_closed_backend_is_the_projects_error(backend):
    from sacvit_edge.runtimes import open_backend
    from sacvit_edge.tokens import build_sac_group

    if backend == "openvino":
        pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    m = read_manifest(BUNDLED)
    b = open_backend(backend, m) if backend != "pytorch" else None
    if b is None:
        pytest.importorskip("torch", reason="the [export] extra is not installed")
        from sacvit_edge.runtimes.torch_backend import TorchBackend

        b = TorchBackend(REPO / "checkpoints" / "sacvit_tiny_112.pt")
    x = np.zeros((1, 3, 112, 112), np.float32)
    ee = b.run_ee(x)
    order = np.arange(49)[None]
    group = build_sac_group(order, np.array([9]))
    assert b.run_sac(ee, np.array([0]), group).shape == (1, 10)
    with b:
        pass  # the context manager closes it
    assert b.closed
    b.close()  # twice is harmless
    for call in (lambda: b.run_ee(x), lambda: b.run_sac(ee, np.array([0]), group)):
        with pytest.raises(BackendError, match=f"the {b.name} backend is closed"):
            call()
