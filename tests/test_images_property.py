"""Property-based tests of image loading (hypothesis): whatever arrives, load_image returns an
HxWx3 uint8 image or raises the project's ImageError; nothing else escapes, nothing hangs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image

from sacvit_edge.errors import ImageError
from sacvit_edge.images import load_image, preprocess

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8\xff\xe0", b"II*\x00", b"RIFF", b"P6\n"]


def _check(result: np.ndarray) -> None:
    assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3 and min(result.shape[:2]) >= 1


@SETTINGS
@given(arr=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3))),
       fmt=st.sampled_from(["PNG", "BMP", "TIFF", "PPM", "WEBP-lossless"]))
def test_valid_lossless_files_always_load_unchanged(tmp_path, arr, fmt):
    """The other side of the fuzzing below: a loader that refused everything would fail here."""
    path = tmp_path / f"v.{fmt.split('-')[0].lower()}"
    if fmt == "WEBP-lossless":
        Image.fromarray(arr).save(path, "WEBP", lossless=True, exact=True)
    else:
        Image.fromarray(arr).save(path, fmt)
    assert np.array_equal(load_image(path, max_pixels=4_000_000), arr)


@SETTINGS
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_file(tmp_path, prefix, body):
    path = tmp_path / "f.img"
    path.write_bytes(prefix + body)
    try:
        _check(load_image(path, max_pixels=4_000_000))
    except ImageError as exc:
        assert "f.img" in str(exc)


def _png(width: int, height: int, payload: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


@SETTINGS
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1), payload=st.binary(max_size=64),
       whole=st.booleans())
def test_png_headers_with_any_size(tmp_path, width, height, payload, whole):
    """Any declared size, tiny payload: refused before decoding when too large, never a trace; a
    small PNG whose payload is whole (filter byte + RGB rows) always loads, at its size."""
    path = tmp_path / "h.png"
    small = 1 <= width <= 64 and 1 <= height <= 64
    if whole and small:
        rows = b"".join(b"\x00" + bytes((payload * (3 * width // max(1, len(payload)) + 1))[:3 * width]).ljust(3 * width, b"\x07")
                        for _ in range(height))
        path.write_bytes(_png(width, height, rows))
        out = load_image(path, max_pixels=1_000_000)
        _check(out)
        assert out.shape == (height, width, 3)
        return
    path.write_bytes(_png(width, height, payload))
    try:
        _check(load_image(path, max_pixels=1_000_000))
    except ImageError as exc:
        assert "h.png" in str(exc)
        if width * height > 1_000_000:
            assert "max_pixels" in str(exc)
        return
    assert 1 <= width * height <= 1_000_000  # what loads was within the limit


@SETTINGS
@given(arr=arrays(dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
                  shape=array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12)))
def test_arbitrary_arrays(arr):
    """Every documented input kind loads (uint8 / uint16 HxW, HxWx1, HxWx3, HxWx4; floats in
    [0, 1]); everything else is an ImageError, never another exception."""
    documented = (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))) and arr.size > 0 and (
        arr.dtype in (np.uint8, np.uint16)
        or (arr.dtype in (np.float32, np.float64) and bool(np.isfinite(arr).all()) and arr.min() >= 0 and arr.max() <= 1))
    if not documented:
        try:
            out = load_image(arr)
        except ImageError:
            return
    else:
        out = load_image(arr)  # must not raise
    _check(out)
    assert out.shape[:2] == arr.shape[:2]
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        assert np.array_equal(out, arr)  # RGB uint8 passes through unchanged


@SETTINGS
@given(arr=arrays(np.float32, st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3)),
                  elements=st.floats(0, 1, width=32)))
def test_float_arrays_in_unit_range_match_uint8(arr):
    as_uint8 = load_image(arr)
    assert np.abs(as_uint8.astype(int) - np.round(arr * 255)).max() <= 1
    batch = preprocess([arr], 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert batch.shape == (1, 3, 16, 16) and np.isfinite(batch).all()


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA",
                                  "I;16", "RGBX", "La"])
def test_every_pil_mode_converts_or_is_refused(mode):
    try:
        img = Image.new(mode, (5, 4))
    except ValueError:
        pytest.skip(f"this Pillow cannot create mode {mode}")
    if mode == "La":  # Pillow itself cannot convert La (premultiplied): refused, by name
        with pytest.raises(ImageError, match="PIL image"):
            load_image(img)
        return
    out = load_image(img)  # every other mode Pillow makes converts to RGB
    _check(out)
    assert out.shape == (4, 5, 3)
