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
