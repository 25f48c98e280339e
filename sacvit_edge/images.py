"""Image decoding and preprocessing, shared by training, evaluation and EdgeClassifier.

Decoding uses pillow. Inputs are converted as users expect: EXIF orientation applied,
grayscale/palette/RGBA/CMYK/16-bit converted to 8-bit RGB (alpha composited on black),
then resized to the model's square input with bilinear filtering.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ImageInput = Union[str, Path, Image.Image, np.ndarray]


def _pil_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{name}: decoded to shape {rgb.shape}, expected HxWx3")
    return rgb


def load_image(source: ImageInput) -> np.ndarray:
    """Any supported input -> HxWx3 uint8 RGB array.

    Raises:
        ImageError: unreadable, corrupt or truncated file; array of wrong shape or dtype.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: no such image file")
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # force full decode here: truncated files fail now, not later
                return _pil_to_rgb(img, str(path))
        except UnidentifiedImageError as exc:
            raise ImageError(f"{path}: not an image pillow can read (corrupt or unsupported format)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    if isinstance(source, Image.Image):
        try:
            source.load()
        except (OSError, ValueError) as exc:
            raise ImageError(f"PIL image: corrupt or truncated ({exc})") from exc
        return _pil_to_rgb(source, "PIL image")
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ImageError(f"numpy image has dtype {source.dtype}, expected uint8 (HxWx3 RGB)")
        if source.ndim == 2:
            return np.repeat(source[..., None], 3, axis=2)
        if source.ndim != 3 or source.shape[2] not in (1, 3, 4):
            raise ImageError(f"numpy image has shape {source.shape}, expected HxWx3 uint8 RGB")
        if source.shape[2] == 1:
            return np.repeat(source, 3, axis=2)
        if source.shape[2] == 4:
            raise ImageError(f"numpy image has 4 channels (shape {source.shape}); pass RGB, or a PIL RGBA image")
        if min(source.shape[:2]) < 1:
            raise ImageError(f"numpy image has empty shape {source.shape}")
        return source
    raise ImageError(f"unsupported image input of type {type(source).__name__}; "
                     "expected a path, PIL.Image or HxWx3 uint8 numpy array")


def resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 (bilinear), as the training canvases are square."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def normalize(batch_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, 3, H, W) uint8 -> float32 normalised, the models' input."""
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1) * 255.0
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1) * 255.0
    return (batch_uint8.astype(np.float32) - m) / s


def preprocess(images: Sequence[ImageInput], size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Decode, convert, resize and normalise a list of inputs -> (B, 3, size, size) float32."""
    arrays = [resize_uint8(load_image(img), size) for img in images]
    batch = np.stack(arrays).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(normalize(batch, mean, std))
