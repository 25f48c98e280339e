"""Frames from video files and cameras, through OpenCV (the [video] extra).

Frames come out as OpenCV delivers them: HxWx3 uint8 BGR; pass color="bgr" to EdgeClassifier.
A source that stops before its end (a truncated or corrupt file, a camera that fails mid-run)
raises VideoEndedEarly after the frames it did deliver, so a caller can report both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ConfigError, DataError
from .extras import require_extra

MAX_CAMERA_INDEX = 1023  # OpenCV's indices are small; a larger one is a typo, never a device


class VideoEndedEarly(DataError):
    """The source stopped delivering frames before its end; `frames` were read."""

    def __init__(self, message: str, frames: int) -> None:
        super().__init__(message)
        self.frames = frames


def check_max_frames(max_frames: int | None) -> int | None:
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ConfigError(f"--max-frames {max_frames!r} must be a positive number of frames")
    return max_frames


def check_camera(index: object) -> int:
    """A camera index OpenCV can be asked for: a non-negative int (OpenCV crashes on -1)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) <= MAX_CAMERA_INDEX:
        raise ConfigError(f"--camera {index!r}: a camera index is an integer in [0, {MAX_CAMERA_INDEX}] (0 is the first camera)")
    return int(index)


def open_frames(source: str | Path | int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """BGR frames of a video file (a path) or a camera (an index), until the source ends.

    Raises:
        ConfigError: a negative or absurd camera index, or max_frames < 1.
        DataError: the file does not exist, or the file or camera cannot be opened (checked
            before the first frame is asked for).
        VideoEndedEarly (a DataError, from the iterator after its last frame): a file ended
            before the frame count its container declares, or a camera stopped delivering.
    """
    check_max_frames(max_frames)
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        source = check_camera(source)
    elif not isinstance(source, (str, Path)):
        raise ConfigError(f"video source {source!r}: expected a video file path or a camera index")
    require_extra("video", "reading video files and cameras")
    import cv2

    if isinstance(source, int):
        what = f"camera {source}"
    else:
        what = str(source)
        try:
            is_file = Path(source).is_file()
        except OSError as exc:  # a name too long
            raise DataError(f"{source}: cannot be read ({exc.strerror or exc})") from exc
        if not is_file:
            raise DataError(f"{source}: no such video file")
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{what}: cannot be opened (no such camera, in use, or a format OpenCV cannot read)")
    declared = 0 if isinstance(source, int) else int(max(0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    return _read(cap, what, max_frames, declared, live=isinstance(source, int))


def _read(cap, what: str, max_frames: int | None, declared: int, live: bool) -> Iterator[np.ndarray]:
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                if live:
                    raise VideoEndedEarly(f"{what}: stopped delivering frames after {n} frame(s)", n)
                if declared and n < declared:
                    raise VideoEndedEarly(f"{what}: ended after {n} of the {declared} frames its container declares "
                                          "(truncated or corrupt file)", n)
                return
            n += 1
            yield frame
    finally:
        cap.release()
