"""Frames from video files and cameras, through OpenCV (the [video] extra).

Frames come out as OpenCV delivers them: HxWx3 uint8 BGR; pass color="bgr" to EdgeClassifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError
from .extras import require_extra


def open_frames(source: str | Path | int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """BGR frames of a video file (a path) or a camera (an index), until the source ends.

    Raises:
        DataError: the file does not exist, or the file or camera cannot be opened (checked
            before the first frame is asked for).
    """
    require_extra("video", "reading video files and cameras")
    import cv2

    if isinstance(source, int):
        what = f"camera {source}"
    else:
        what = str(source)
        if not Path(source).is_file():
            raise DataError(f"{source}: no such video file")
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{what}: cannot be opened (no such camera, in use, or a format OpenCV cannot read)")
    return _read(cap, max_frames)


def _read(cap, max_frames: int | None) -> Iterator[np.ndarray]:
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                return
            n += 1
            yield frame
    finally:
        cap.release()
