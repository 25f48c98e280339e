"""Image decoding and preprocessing, shared by training, evaluation and EdgeClassifier.

Decoding uses pillow. Inputs are converted as users expect: EXIF orientation applied,
grayscale/palette/RGBA/CMYK/16-bit converted to 8-bit RGB (alpha composited on black), float
images (PIL mode F, float TIFF, float arrays) read as [0, 1] intensities, then resized to the
model's square input with bilinear filtering.

Hostile inputs are refused before any large allocation: a file's header is read first and an
image above `max_pixels` (default Pillow's own warning threshold, about 89 Mpx) is an
ImageError before it is decoded; files are streamed to Pillow, never read whole. Large JPEGs
are decoded at reduced size (Pillow's draft mode) when the model needs far fewer pixels.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .extras import require_extra

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]  # bytes: an encoded file (PNG, JPEG, ...)
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)  # Pillow's decompression-bomb warning threshold
# Pillow warns between 1x and 2x its threshold; load_image then refuses such images itself
# (max_pixels). The library leaves the process's warning filters alone: the CLI silences it.


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{name}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,} "
                         "(a decompression bomb, or raise max_pixels for a genuine image)")


def scale_to_uint8(arr: np.ndarray, peak: float) -> np.ndarray:
    """Integer intensities in [0, peak] (16-bit: 65535) -> uint8, rounded."""
    return np.clip(arr.astype(np.float64) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def float_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Float intensities in [0, 1] -> uint8 (rounded). NaN/inf or values outside [0, 1] are refused:
    guessing a scale (0..255? 0..65535?) would give a silently wrong answer."""
    if not np.isfinite(arr).all():
        raise ImageError(f"{name}: float image holds NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageError(f"{name}: float image has values in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                         "(divide by 255 for 8-bit data) or be passed as uint8")
    return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode == "F":  # 32-bit float (float TIFF, scientific cameras): intensities in [0, 1]
        arr8 = float_to_uint8(np.asarray(img, dtype=np.float32), name)
        return np.repeat(arr8[..., None], 3, axis=2)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.repeat(scale_to_uint8(arr, peak)[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{name}: decoded to shape {rgb.shape}, expected HxWx3")
    return rgb


COLORS = ("rgb", "bgr")


def check_color(color: object, name: str = "color") -> str:
    if color not in COLORS:
        raise ImageError(f"{name}={color!r}: expected 'rgb' or 'bgr' (OpenCV frames are BGR)")
    return color  # type: ignore[return-value]


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, target_size: int | None = None,
               color: str = "rgb") -> np.ndarray:
    """Any supported input -> HxWx3 uint8 RGB array.

    Args:
        source: a path, an encoded file's bytes (PNG, JPEG, ...: what a network client sends), a
            PIL image or an HxWx3 uint8 array.
        color: channel order of numpy array inputs: "rgb", or "bgr" (OpenCV frames). Files,
            bytes and PIL images are decoded by Pillow, always RGB.
        max_pixels: larger images are refused from their header, before decoding.
        target_size: the model's input side; a JPEG much larger than it is decoded at reduced
            size (Pillow's draft: DCT scaling to no less than twice this side).
    Raises:
        ImageError: unreadable, corrupt or truncated file; too many pixels; array of wrong
            shape, dtype or values.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("encoded image: 0 bytes (an empty file)")
        return _decode(io.BytesIO(source), f"encoded image ({len(source):,} bytes)", max_pixels, target_size)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ImageError(f"{path}: no such image file") from None
        except OSError as exc:  # a name too long, no permission, a loop of links
            raise ImageError(f"{path}: cannot open ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):
            raise ImageError(f"{path}: not a regular file")
        return _decode(path, str(path), max_pixels, target_size)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, "PIL image", max_pixels)
        try:
            source.load()
            return _pil_to_rgb(source, "PIL image")
        except ImageError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct_error) as exc:
            raise ImageError(f"PIL image: corrupt or truncated ({exc})") from exc
    if isinstance(source, np.matrix):
        raise ImageError("numpy matrix is not an image; pass an HxWx3 uint8 numpy array (np.asarray(m))")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels, check_color(color))
    raise ImageError(f"unsupported image input of type {type(source).__name__}; "
                     "expected a path, an encoded file's bytes, PIL.Image or HxWx3 uint8 numpy array")


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int, target_size: int | None) -> np.ndarray:
    """A file or an in-memory encoded image -> HxWx3 uint8 RGB: the header first (size refused
    before decoding), then the whole image, every Pillow failure an ImageError naming `name`."""
    try:
        with Image.open(source) as img:  # reads the header only; a file is streamed
            _check_pixels(img.width, img.height, name, max_pixels)
            if target_size and img.format == "JPEG" and min(img.size) > 4 * target_size:
                img.draft("RGB", (2 * target_size, 2 * target_size))
            img.load()  # force full decode here: truncated files fail now, not later
            return _pil_to_rgb(img, name)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image pillow can read (corrupt or unsupported format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: exceeds max_pixels={max_pixels:,}, refused as a decompression bomb by Pillow "
                         f"({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct_error) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _array_to_rgb(source: np.ndarray, max_pixels: int, color: str = "rgb") -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (alpha composited on black, as for files) arrays of uint8,
    uint16 (full 16-bit range scaled to 8 bits) or float in [0, 1] -> HxWx3 uint8 RGB."""
    if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
        raise ImageError(f"numpy image has shape {source.shape}, expected HxWx3 (or HxW, HxWx1, HxWx4)")
    _check_pixels(source.shape[1], source.shape[0], f"numpy image of shape {source.shape}", max_pixels)
    if source.dtype == np.uint8:
        arr = source
    elif source.dtype == np.uint16:
        arr = scale_to_uint8(source, 65535.0)
    elif np.issubdtype(source.dtype, np.floating):
        arr = float_to_uint8(source, f"numpy image ({source.dtype})")
    else:
        raise ImageError(f"numpy image has dtype {source.dtype}; pass uint8, uint16 or float in [0, 1] "
                         "(e.g. arr.astype(np.uint8) for 0..255 integers)")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if color == "bgr":
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    if arr.shape[2] == 4:  # RGBA: composite on black
        alpha = arr[..., 3:].astype(np.uint16)
        return ((arr[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return arr


RESIZE_MODES = ("stretch", "center_crop", "letterbox")


def check_resize(resize: object, name: str = "resize") -> str:
    if resize not in RESIZE_MODES:
        raise ImageError(f"{name}={resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    return resize  # type: ignore[return-value]


RESAMPLE_MODES = ("exact", "fast")


def check_resample(resample: object, name: str = "resample") -> str:
    """"exact": Pillow's antialiased bilinear filter on the whole frame (the training arithmetic).
    "fast": OpenCV's block means first where whole blocks tile the frame, then the same filter
    (`resize_uint8`); needs the [video] extra, checked here so a missing OpenCV is a
    MissingExtraError when the option is given, and OpenCV's import (about 0.1 s) is paid then, not
    by the first frame."""
    if resample not in RESAMPLE_MODES:
        raise ImageError(f"{name}={resample!r}: expected one of {', '.join(RESAMPLE_MODES)}")
    if resample == "fast":
        require_extra("video", "resample='fast' (OpenCV's block means before the resampling filter)")
        _opencv()
    return resample  # type: ignore[return-value]


@dataclass(frozen=True)
class FrameGeometry:
    """How a frame was fitted into the model's square input, to map model pixels back.

    Model pixel (u, v) shows frame pixel (x0 + u * scale_x, y0 + v * scale_y); for letterbox,
    x0/y0 are negative (the padding), and mapped boxes are clipped to the frame.
    """

    width: int
    height: int
    x0: float
    y0: float
    scale_x: float
    scale_y: float

    def box(self, u0: float, v0: float, u1: float, v1: float) -> tuple[int, int, int, int]:
        """A model-pixel rectangle [u0, u1) x [v0, v1) -> (left, top, right, bottom) frame pixels."""
        x0 = min(max(self.x0 + u0 * self.scale_x, 0.0), self.width)
        x1 = min(max(self.x0 + u1 * self.scale_x, 0.0), self.width)
        y0 = min(max(self.y0 + v0 * self.scale_y, 0.0), self.height)
        y1 = min(max(self.y0 + v1 * self.scale_y, 0.0), self.height)
        return int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))


def fit_square(rgb: np.ndarray, size: int, mode: str = "stretch", resample: str = "exact"
               ) -> tuple[np.ndarray, FrameGeometry]:
    """HxWx3 uint8 -> (size x size x 3 uint8, geometry).

    "stretch": resize the whole frame (the training arithmetic: the canvases are square);
    "center_crop": the central square of side min(H, W), then resize; "letterbox": pad the
    short side with black (the training canvases' background) to a centred square, then resize.
    `resample`: see check_resample.
    """
    check_resize(mode)
    fast = check_resample(resample) == "fast"
    h, w = rgb.shape[:2]
    if mode == "stretch" or h == w:
        return resize_uint8(rgb, size, fast=fast), FrameGeometry(w, h, 0.0, 0.0, w / size, h / size)
    side = min(h, w) if mode == "center_crop" else max(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    geometry = FrameGeometry(w, h, float(x0), float(y0), side / size, side / size)
    if mode == "center_crop":  # a view: resize_uint8 copies only the rows its strips read
        return resize_uint8(rgb[y0:y0 + side, x0:x0 + side], size, fast=fast), geometry
    if w == side:  # a landscape frame: the black bars above and below stay virtual
        return resize_uint8(rgb, size, pad_rows=(-y0, side - h + y0), fast=fast), geometry
    square = np.zeros((side, side, 3), np.uint8)
    square[-y0:-y0 + h, -x0:-x0 + w] = rgb
    return resize_uint8(square, size, fast=fast), geometry


PARALLEL_RESIZE_PIXELS = 500_000  # from about 0.5 Mpx (1280x720 and up; not 640x480) two strips in two threads pay


FAST_MIN_SOURCE_PER_OUTPUT = 3  # resample="fast" keeps >= 3 block means per output pixel and axis


@functools.lru_cache(maxsize=1)
def _opencv():
    require_extra("video", "resample='fast' (OpenCV's block means before the resampling filter)")
    import cv2

    return cv2


def _block_factor(n: int, scale: float, *edges: int) -> int:
    """The largest r <= scale / FAST_MIN_SOURCE_PER_OUTPUT dividing n and every edge (1: none)."""
    r = int(scale // FAST_MIN_SOURCE_PER_OUTPUT)
    while r >= 2 and (n % r or any(e % r for e in edges)):
        r -= 1
    return max(r, 1)


def _block_means(rgb: np.ndarray, size: int, pad_rows: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]] | None:
    """resample="fast": the means of r_x x r_y pixel blocks (OpenCV INTER_AREA by integer factors:
    exact block means, one read of the frame, SIMD), with the black bars' rows reduced alike; or
    None where no factor of 2 or more tiles the frame (the filter then runs on the frame itself)."""
    h, w = rgb.shape[:2]
    top, bottom = pad_rows
    rx = _block_factor(w, w / size)
    ry = _block_factor(h, (h + top + bottom) / size, top, bottom)
    if rx == ry == 1:
        return None
    cv2 = _opencv()
    return cv2.resize(rgb, (w // rx, h // ry), interpolation=cv2.INTER_AREA), (top // ry, bottom // ry)


def resize_uint8(rgb: np.ndarray, size: int, pad_rows: tuple[int, int] = (0, 0), fast: bool = False) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 with Pillow's antialiased bilinear resampling, as the
    training canvases are square. `pad_rows` = (above, below): black rows the image has around
    `rgb` (a letterboxed landscape frame), never materialised.

    `fast` (resample="fast"): the filter runs on block means (`_block_means`), at least 3 per
    output pixel and axis: the filter's weights taken at each block's centre instead of at each
    pixel's. On camera frames (texture and sensor noise) within one grey level of the exact path;
    on uniform full-range noise, the hardest case, within 6 (1.2 on average; tests/test_frame_path.py).
    At 1080p 9.8 -> 5.2 ms, at 2160p 34 -> 10 ms on the development machine
    (scripts/latency_ab/resize_variants.py); frames too small for whole blocks (640x480 at
    112 px) are resampled exactly.

    A large frame is resampled as two horizontal strips of the output in two threads (Pillow
    releases the GIL), each converting only the source rows its filter reads; output rows whose
    filter reads only black bars are black without resampling. About half the time of one pass at
    1080p, the same image within one grey level (the strips' filter positions are computed from
    their own origin, so a rounding can differ by one).
    """
    if fast:
        reduced = _block_means(rgb, size, pad_rows)
        if reduced is not None:
            rgb, pad_rows = reduced
    h, w = rgb.shape[:2]
    top, bottom = pad_rows
    full_h = h + top + bottom
    if full_h == size and w == size and not (top or bottom):
        return rgb
    if full_h * w < PARALLEL_RESIZE_PIXELS or usable_cpus() < 2:
        whole = rgb if not (top or bottom) else np.concatenate(
            [np.zeros((top, w, 3), np.uint8), rgb, np.zeros((bottom, w, 3), np.uint8)])
        return np.asarray(Image.fromarray(np.ascontiguousarray(whole)).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    out = np.zeros((size, size, 3), np.uint8)
    failed: list[BaseException] = []
    scale = full_h / size
    margin = int(math.ceil(scale)) + 2  # the bilinear filter reads +-scale source rows around a centre
    # output rows whose filter can reach a frame row (the others read only black bars: black)
    r_lo = max(0, int((top - margin) / scale) - 1)
    r_hi = min(size, int(math.ceil((top + h + margin) / scale)) + 1)

    def rows(first: int, last: int) -> np.ndarray:
        """Rows [first, last) of the padded image."""
        if not (top or bottom):
            return np.ascontiguousarray(rgb[first:last])
        block = np.zeros((last - first, w, 3), np.uint8)
        a, b = max(first, top), min(last, top + h)
        if b > a:
            block[a - first:b - first] = rgb[a - top:b - top]
        return block

    def strip(r0: int, r1: int) -> None:
        try:
            if r1 <= r0:
                return
            y0, y1 = scale * r0, scale * r1
            first, last = max(0, int(y0) - margin), min(full_h, int(math.ceil(y1)) + margin)
            img = Image.fromarray(rows(first, last))  # only the rows this strip reads
            part = img.resize((size, r1 - r0), Image.BILINEAR, box=(0, y0 - first, w, y1 - first))
            out[r0:r1] = np.asarray(part, dtype=np.uint8)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            failed.append(exc)

    middle = (r_lo + r_hi) // 2
    helper = threading.Thread(target=strip, args=(middle, r_hi), name="sacvit-resize", daemon=True)
    helper.start()
    strip(r_lo, middle)
    helper.join()
    if failed:
        raise failed[0]
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def normalize(batch_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, 3, H, W) uint8 -> float32 normalised, the models' input."""
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1) * 255.0
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1) * 255.0
    return (batch_uint8.astype(np.float32) - m) / s


def preprocess(images: Sequence[ImageInput], size: int, mean: Sequence[float], std: Sequence[float],
               max_pixels: int = DEFAULT_MAX_PIXELS, color: str = "rgb", resize: str = "stretch",
               geometries: list | None = None, resample: str = "exact") -> np.ndarray:
    """Decode, convert, fit (resize mode, resample mode) and normalise a list of inputs ->
    (B, 3, size, size) float32. When `geometries` is a list, each input's FrameGeometry is
    appended to it."""
    arrays = []
    color = check_color(color)
    for img in images:
        # A BGR frame's channels are swapped after fitting, on the small image: every fitting step
        # (crop, black padding, alpha compositing, the resampling) treats channels alike, so the
        # result is the same bit for bit, without a copy of the full frame (18 ms at 1080p).
        late_swap = color == "bgr" and isinstance(img, np.ndarray)
        rgb = load_image(img, max_pixels, target_size=size, color="rgb" if late_swap else color)
        fitted, geometry = fit_square(rgb, size, resize, resample)
        arrays.append(fitted[..., ::-1] if late_swap else fitted)
        if geometries is not None:
            geometries.append(geometry)
    batch = np.stack(arrays).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(normalize(batch, mean, std))


OVERLAY_MIN_SIDE = 448  # smaller frames are drawn enlarged (pixels repeated), so the label covers little


def draw_prediction(image: ImageInput, prediction, color: str = "rgb", outline: tuple[int, int, int] = (255, 64, 32),
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The frame with the regions the model looked at closer outlined, and its label and
    confidence written on it: a picture of a Prediction (Prediction.target_boxes). A frame
    smaller than OVERLAY_MIN_SIDE is enlarged by a whole factor (nearest neighbour: its pixels,
    only bigger) so that the label banner does not hide a third of it."""
    from PIL import ImageDraw

    frame = Image.fromarray(load_image(image, max_pixels, color=color))
    factor = max(1, math.ceil(OVERLAY_MIN_SIDE / min(frame.size)))
    if factor > 1:
        frame = frame.resize((frame.width * factor, frame.height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(frame)
    width = max(1, round(min(frame.size) / 150))
    for box in prediction.target_boxes:
        box = tuple(v * factor for v in box)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=outline, width=width)
    text = f"{prediction.label} {prediction.confidence:.2f}" + (" (early exit)" if prediction.exited_early else "")
    left, top, right, bottom = draw.textbbox((4, 4), text)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return frame
