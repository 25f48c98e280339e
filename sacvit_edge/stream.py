"""Frame streams: a bounded queue of frames fed by a reader thread, and (overlap=True) frame t+1's
preprocessing and EE stage in a second thread while frame t is in its SAC stage. Drives the
Pipeline through its public two-stage API (start / finish / release). Torch-free."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import ConfigError
from .pipeline import Pipeline, Prediction


def check_frame_source(frames: object) -> None:
    """Refuse what stream() would misread: one frame (an array's rows would become frames), a
    path or string (its characters), or anything that is not iterable."""
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ConfigError(f"frames: one array of shape {frames.shape} is one frame, not a stream; wrap it in a list "
                          "([frame]) or call predict(frame). A stack of frames is an (N, H, W, C) array")
    if isinstance(frames, (str, bytes, Path)) or hasattr(frames, "getpixel"):
        raise ConfigError(f"frames={frames!r:.80}: one image, not a stream; wrap it in a list or call predict(). "
                          "For a video file use sacvit_edge.video.open_frames(path)")
    if not isinstance(frames, Iterable):
        raise ConfigError(f"frames={frames!r:.80}: expected an iterable of frames (a list, a generator, "
                          f"video.open_frames(...)), got {type(frames).__name__}")


class LatencyMonitor:
    """Rolling statistics an app can show: latency p50/p99 (ms), fps and exit rate over the last
    `window` frames."""

    def __init__(self, window: int = 100) -> None:
        from collections import deque

        self._done: deque = deque(maxlen=window)  # (finish time, latency ms, exited)
        self.frames = 0
        self.last_ms = 0.0  # the latest frame's latency

    def add(self, latency_ms: float, exited: bool) -> None:
        self._done.append((time.perf_counter(), latency_ms, exited))
        self.frames += 1
        self.last_ms = latency_ms

    def snapshot(self) -> dict[str, float]:
        if not self._done:
            return {"frames": self.frames, "p50_ms": 0.0, "p99_ms": 0.0, "fps": 0.0, "exit_rate": 0.0}
        t, lat, ex = zip(*self._done)
        span = t[-1] - t[0]
        return {"frames": self.frames, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "fps": (len(t) - 1) / span if span > 0 else 0.0, "exit_rate": float(np.mean(ex))}


class FrameStream:
    """The iterator EdgeClassifier.stream returns (see there)."""

    def __init__(self, pipeline: Pipeline, frames: Iterable, max_inflight: int, drop: str, overlap: bool,
                 eta: float, color: str | None, resize: str | None) -> None:
        import threading
        from collections import deque

        self.pipeline, self.frames, self.max_inflight, self.drop, self.overlap = pipeline, frames, max_inflight, drop, overlap
        self.eta, self.color, self.resize = eta, color, resize
        self.dropped = 0
        self.monitor = LatencyMonitor()
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threading = threading

    def _read(self) -> None:
        """Reader thread: frames -> the bounded queue; ends with a None marker (or an exception)."""
        try:
            for item in enumerate(self.frames):
                arrived = time.perf_counter()
                with self._cond:
                    while len(self._queue) >= self.max_inflight and self.drop == "none" and not self._stop.is_set():
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return
                    if len(self._queue) >= self.max_inflight:  # drop == "oldest"
                        self._queue.popleft()
                        self.dropped += 1
                    self._queue.append((*item, arrived))
                    self._cond.notify_all()
            end: object = None
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            end = exc
        with self._cond:
            self._queue.append(end)
            self._cond.notify_all()

    def _take(self):
        with self._cond:
            while not self._queue:
                if self._stop.is_set():
                    return None
                self._cond.wait(0.1)
            item = self._queue.popleft()
            self._cond.notify_all()
            return item

    def _stage_one(self, item):
        """Decode/fit/normalise and the EE stage of one frame."""
        index, frame, arrived = item
        start = time.perf_counter()
        geometries: list = []
        batch = self.pipeline.preprocess([frame], self.color, self.resize, geometries)
        pre_ms = (time.perf_counter() - start) * 1e3
        return index, frame, arrived, start, pre_ms, geometries, self.pipeline.start(batch, self.eta, None,
                                                                                    self.pipeline.deadline_ms, arrived)

    def _stage_two(self, staged) -> tuple[int, object, Prediction]:
        index, frame, arrived, start, pre_ms, geometries, pending = staged
        pred = self.pipeline.predictions(self.pipeline.finish(pending), geometries, pre_ms, start)[0]
        self.monitor.add((time.perf_counter() - arrived) * 1e3, pred.exited_early)
        return index, frame, pred

    def __iter__(self) -> Iterator[tuple[int, object, Prediction]]:
        reader = self._threading.Thread(target=self._read, name="sacvit-stream-reader", daemon=True)
        reader.start()
        worker = None
        try:
            if not self.overlap:
                while (item := self._take()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    yield self._stage_two(self._stage_one(item))
                return
            import queue

            staged: queue.Queue = queue.Queue(maxsize=1)  # EE of frame t+1 runs while frame t is in SAC

            def hand_over(item) -> bool:
                while not self._stop.is_set():  # a consumer that stopped takes nothing more
                    try:
                        staged.put(item, timeout=0.05)
                        return True
                    except queue.Full:
                        continue
                return False

            def first_stage() -> None:
                while not self._stop.is_set():
                    item = self._take()
                    if item is None or isinstance(item, Exception):
                        hand_over(item)
                        return
                    try:
                        done = self._stage_one(item)
                    except Exception as exc:  # noqa: BLE001 - raised in the consumer
                        hand_over(exc)
                        return
                    if not hand_over(done):
                        self.pipeline.release(done[-1])  # its backend slot goes back to the pool
                        return

            worker = self._threading.Thread(target=first_stage, name="sacvit-stream-ee", daemon=True)
            worker.start()
            while (s := staged.get()) is not None:
                if isinstance(s, Exception):
                    raise s
                yield self._stage_two(s)
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            if worker is not None:
                worker.join(timeout=5.0)
                while not staged.empty():  # frames staged but never finished: free their slots
                    left = staged.get_nowait()
                    if isinstance(left, tuple):
                        self.pipeline.release(left[-1])
