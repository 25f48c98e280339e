"""What serving builds on, without a server: encoded bytes as an image input, an opened Backend
handed to EdgeClassifier, and TritonStageBackend's engine calls (over a stand-in for Triton's
BLS request, named as such: the real server is tests/test_serving.py's)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sacvit_edge import EdgeClassifier
from sacvit_edge.errors import BackendError, ConfigError, ImageError
from sacvit_edge.images import load_image
from sacvit_edge.runtimes.ort import OrtBackend
from sacvit_edge.runtimes.triton import TritonStageBackend

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))


def test_encoded_bytes_decode_as_the_file_does():
    for path in SAMPLES:
        np.testing.assert_array_equal(load_image(path.read_bytes()), load_image(path))
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(buf, format="JPEG")
    assert load_image(memoryview(buf.getvalue())).shape == (30, 40, 3)


@pytest.mark.parametrize("payload, why", [(b"", "0 bytes"), (b"GIF89a\x00", "corrupt|not an image"),
                                           (b"plain text", "not an image pillow can read")])
def test_bad_bytes_are_an_image_error_naming_them(payload, why):
    with pytest.raises(ImageError, match=why):
        load_image(payload)


def test_bytes_above_max_pixels_are_refused_from_the_header():
    big = io.BytesIO()
    Image.new("L", (300, 300)).save(big, format="PNG")
    with pytest.raises(ImageError, match=r"encoded image .*max_pixels|exceeds"):
        load_image(big.getvalue(), max_pixels=300 * 299)


class StageCallsOverOrt:
    """Test double of Triton's BLS request (`infer(model, inputs, outputs)`): the two stage
    models answered by ONNX Runtime sessions in this process, with a call log."""

    def __init__(self) -> None:
        from sacvit_edge.manifest import read_manifest

        self.ort = OrtBackend.from_manifest(read_manifest(EXPORT))
        self.calls: list[tuple[str, int]] = []

    def __call__(self, model, inputs, outputs):
        session = {"sacvit_ee": self.ort.ee, "sacvit_sac": self.ort.sac}[model]
        self.calls.append((model, len(next(iter(inputs.values())))))
        return dict(zip(outputs, session.run(list(outputs), dict(inputs))))


def test_stage_backend_gives_edgeclassifiers_answers_and_calls_sac_only_for_what_did_not_exit():
    infer = StageCallsOverOrt()
    files = [p.read_bytes() for p in SAMPLES]
    with EdgeClassifier(EXPORT, backend="onnxruntime") as reference, \
            EdgeClassifier(EXPORT, backend=TritonStageBackend(infer, "sacvit_ee", "sacvit_sac")) as served:
        want, got = reference.predict_batch(files), served.predict_batch(files)
        assert served.backend_name == "triton"
    assert [(p.class_id, p.exited_early, p.num_target_tokens) for p in got] == \
        [(p.class_id, p.exited_early, p.num_target_tokens) for p in want]
    np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in want], atol=1e-5)
    assert infer.calls[0] == ("sacvit_ee", len(files))
    assert sum(n for m, n in infer.calls if m == "sacvit_sac") == sum(not p.exited_early for p in want) > 0


def test_stage_backend_names_a_model_that_answers_without_an_output():
    backend = TritonStageBackend(lambda model, inputs, outputs: {}, "ee_x", "sac_x")
    with pytest.raises(BackendError, match="ee_x.*ee_logits"):
        backend.run_ee(np.zeros((1, 3, 112, 112), np.float32))


def test_an_opened_backend_is_taken_only_alone():
    with pytest.raises(ConfigError, match="backend name or a runtimes.base.Backend"):
        EdgeClassifier(EXPORT, backend=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threads and backend_options"):
        EdgeClassifier(EXPORT, backend=TritonStageBackend(StageCallsOverOrt(), "sacvit_ee", "sacvit_sac"), threads=1)
    with pytest.raises(ImageError, match="sequence of images"):
        EdgeClassifier(EXPORT, backend="onnxruntime").predict_batch(SAMPLES[0].read_bytes())
