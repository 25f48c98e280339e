"""The frame path: a camera frame (uint8 HxWx3, RGB or BGR) is fitted and normalised with no
copy of the full frame, and gives the same model input as converting the whole frame first."""

from __future__ import annotations

import numpy as np
import pytest

from PIL import Image

from sacvit_edge.images import RESIZE_MODES, load_image, preprocess

MEAN, STD = (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)


def reference(frame: np.ndarray, color: str, mode: str, size: int = 112) -> np.ndarray:
    """The earlier path: the whole frame converted to RGB first, then fitted with one Pillow
    bilinear pass -> (3, size, size) uint8."""
    rgb = load_image(frame, color=color)
    h, w = rgb.shape[:2]
    side = min(h, w) if mode == "center_crop" else max(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2  # negative for letterbox: the padding
    if mode == "center_crop":
        rgb = rgb[y0:y0 + side, x0:x0 + side]
    elif mode == "letterbox":
        square = np.zeros((side, side, 3), np.uint8)
        square[-y0:-y0 + h, -x0:-x0 + w] = rgb
        rgb = square
    fitted = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR))
    return fitted.transpose(2, 0, 1)


def as_uint8(batch: np.ndarray) -> np.ndarray:
    """The normalised model input back to grey levels."""
    m = np.asarray(MEAN, np.float32).reshape(1, -1, 1, 1) * 255
    s = np.asarray(STD, np.float32).reshape(1, -1, 1, 1) * 255
    return np.round(batch * s + m).astype(int)


@pytest.mark.parametrize("shape", [(480, 640, 3), (1080, 1920, 3), (333, 500, 4), (200, 120, 3), (112, 112, 3)])
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_bgr_frames_swap_after_fitting_bit_for_bit(shape, mode):
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, shape, dtype=np.uint8)  # noise: the hardest case for resampling
    for color in ("bgr", "rgb"):
        geometries: list = []
        got = as_uint8(preprocess([frame], 112, MEAN, STD, color=color, resize=mode, geometries=geometries))[0]
        diff = np.abs(got - reference(frame, color, mode).astype(int))
        assert diff.max() <= 1, f"more than one grey level from the one-pass reference: {diff.max()}"
        if frame.shape[0] * frame.shape[1] < 300_000:  # one pass below the strip threshold: exact
            assert diff.max() == 0
        assert geometries[0].width == shape[1] and geometries[0].height == shape[0]
    swapped = frame.copy()
    swapped[..., :3] = frame[..., 2::-1]  # the same scene delivered as BGR gives the same input
    np.testing.assert_array_equal(preprocess([swapped], 112, MEAN, STD, color="bgr", resize=mode),
                                  preprocess([frame], 112, MEAN, STD, color="rgb", resize=mode))


def test_large_frames_resample_in_two_strips_within_one_grey_level():
    from sacvit_edge.images import resize_uint8

    rng = np.random.default_rng(3)
    for h, w in ((1080, 1920), (1920, 1080), (1944, 2592), (999, 1001)):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        one_pass = np.asarray(Image.fromarray(frame).resize((112, 112), Image.BILINEAR)).astype(int)
        assert np.abs(resize_uint8(frame, 112).astype(int) - one_pass).max() <= 1


def test_the_caller_frame_is_never_modified():
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    before = frame.copy()
    preprocess([frame, frame[:, ::-1]], 112, MEAN, STD, color="bgr", resize="letterbox")
    np.testing.assert_array_equal(frame, before)


# resample="fast": OpenCV's block means, then the same filter (images.resize_uint8)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))


def camera_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A bundled sample enlarged to a camera's size, with sensor noise: what a camera delivers."""
    canvas = Image.open(SAMPLES[seed % len(SAMPLES)]).convert("RGB").resize((width, height), Image.BICUBIC)
    noise = np.random.default_rng(seed).integers(0, 24, (height, width, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.asarray(canvas) // 2 + noise)


@pytest.mark.parametrize("shape", [(720, 1280), (1080, 1920), (1920, 1080), (1944, 2592)])
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_fast_resample_is_within_one_grey_level_on_camera_frames(shape, mode):
    pytest.importorskip("cv2")
    from sacvit_edge import images

    h, w = shape
    for seed in range(2):
        frame = camera_frame(w, h, seed)
        exact, geometry = images.fit_square(frame, 112, mode)
        fast, fast_geometry = images.fit_square(frame, 112, mode, "fast")
        assert fast_geometry == geometry
        assert np.abs(fast.astype(int) - exact.astype(int)).max() <= 1
    # the fast path did run on block means at these sizes (a test that would pass without it
    # would prove nothing)
    assert images._block_means(frame, 112, (0, 0)) is not None
    noise = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)  # the hardest case
    diff = np.abs(images.fit_square(noise, 112, mode, "fast")[0].astype(int)
                  - images.fit_square(noise, 112, mode)[0].astype(int))
    assert diff.max() <= 6 and diff.mean() <= 1.2, (diff.max(), diff.mean())  # docs: resize_uint8


def test_fast_resample_leaves_frames_without_whole_blocks_exact():
    pytest.importorskip("cv2")
    from sacvit_edge.images import fit_square

    for h, w in ((480, 640), (333, 500)):  # fewer than 2 x 3 pixels per output pixel on either axis: no blocks
        frame = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        for mode in RESIZE_MODES:
            np.testing.assert_array_equal(fit_square(frame, 112, mode, "fast")[0], fit_square(frame, 112, mode)[0])


def test_fast_resample_gives_the_shipped_model_the_same_answers():
    pytest.importorskip("cv2")
    from sacvit_edge import EdgeClassifier

    with EdgeClassifier(BUNDLED, backend="onnxruntime", threads=1) as exact, \
            EdgeClassifier(BUNDLED, backend="onnxruntime", threads=1, resample="fast") as fast:
        assert fast.resample == "fast" and exact.resample == "exact"
        for i in range(len(SAMPLES)):
            frame = camera_frame(1920, 1080, i)
            a, b = exact.predict(frame, resize="letterbox"), fast.predict(frame, resize="letterbox")
            assert a.label == b.label
            assert abs(a.confidence - b.confidence) < 0.02


def test_resample_option_is_checked(monkeypatch):
    import importlib.util

    from sacvit_edge.errors import ConfigError, ImageError
    from sacvit_edge.extras import MissingExtraError
    from sacvit_edge.images import fit_square
    from sacvit_edge.pipeline import PipelineOptions

    with pytest.raises(ConfigError, match="resample='bilinear'"):
        PipelineOptions.checked(eta=0.5, resample="bilinear")
    with pytest.raises(ImageError, match="resample='nearest'"):
        fit_square(np.zeros((8, 8, 3), np.uint8), 4, "stretch", "nearest")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"sacvit-edge\[video\]"):
        PipelineOptions.checked(eta=0.5, resample="fast")
    assert PipelineOptions.checked(eta=0.5).resample == "exact"  # the default needs nothing more
