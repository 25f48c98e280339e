"""TensorRT backend: engine headers everywhere; parity only where TensorRT and a GPU exist."""

import pytest

from sacvit_edge.errors import BackendError
from sacvit_edge.runtimes import tensorrt_usable
from sacvit_edge.runtimes.trt import engine_header, header_problems, write_engine

usable, why = tensorrt_usable()


def test_engine_header_round_trip(tmp_path):
    write_engine(tmp_path / "e.engine", {"tensorrt": "10.3.0", "stage": "ee"}, b"\x00\x01blob")
    assert engine_header(tmp_path / "e.engine") == {"tensorrt": "10.3.0", "stage": "ee"}
    (tmp_path / "raw.engine").write_bytes(b"plain TensorRT plan bytes")
    with pytest.raises(BackendError, match="not a sacvit-edge TensorRT engine"):
        engine_header(tmp_path / "raw.engine")
    whole = (tmp_path / "e.engine").read_bytes()
    (tmp_path / "cut.engine").write_bytes(whole[:20])  # header cut short by an interrupted copy
    with pytest.raises(BackendError, match="truncated or corrupt engine header"):
        engine_header(tmp_path / "cut.engine")


def test_engine_for_another_model_trt_version_or_gpu_is_named():
    """Checked before deserialising, so these are refused on any machine, TensorRT or not."""
    built = {"tensorrt": "10.3.0", "checkpoint_fingerprint": "abc", "gpu": "Orin", "stage": "sac", "fp16": False}
    assert header_problems(built, dict(built)) == []
    here = {**built, "tensorrt": "10.7.0", "checkpoint_fingerprint": "def", "gpu": "NVIDIA H100"}
    problems = "; ".join(header_problems(built, here))
    assert "TensorRT 10.3.0, this is 10.7.0" in problems
    assert "another checkpoint" in problems and "built on Orin, this GPU is NVIDIA H100" in problems
    assert len(header_problems(built, {**built, "stage": "ee", "fp16": True})) == 2


def test_profile_shapes_cover_the_manifest(random_export):
    from sacvit_edge.export.tensorrt import profile_shapes
    from sacvit_edge.manifest import read_manifest

    m = read_manifest(random_export)
    shapes = profile_shapes(m, "sac")
    k_lo, k_hi = m.k_range
    assert shapes["target_idx"][0] == (1, k_lo) and shapes["target_idx"][2] == (64, k_hi)
    assert shapes["nontarget_idx"][0][1] == 49 - k_hi and shapes["nontarget_idx"][2][1] == 49 - k_lo
    assert profile_shapes(m, "ee")["image"][2] == (64, 3, 112, 112)


@pytest.mark.gpu
@pytest.mark.skipif(not usable, reason=f"TensorRT backend unavailable: {why}")
def test_tensorrt_parity_with_onnxruntime(random_export):
    from sacvit_edge import EdgeClassifier
    from sacvit_edge.data import ClutteredFashionMNIST

    x, _ = next(ClutteredFashionMNIST("test", limit=16).batches(16))
    images = list(x.permute(0, 2, 3, 1).numpy())
    a = EdgeClassifier(random_export, backend="tensorrt", eta=0.5).predict_batch(images)
    b = EdgeClassifier(random_export, backend="onnxruntime", eta=0.5).predict_batch(images)
    for p, q in zip(a, b):
        assert p.class_id == q.class_id and abs(p.confidence - q.confidence) < 1e-3
