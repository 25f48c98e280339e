"""TEST DOUBLE of runtimes.cuda.CudaRuntime: "device" memory is host memory. Not CUDA.

It enforces what the TensorRT backend must respect on a real GPU: device buffers are only
touched through copies (host side staged in pinned memory), copies stay inside allocations,
nothing is freed twice, and work queued on a stream while it is being captured runs only when
the captured graph is launched. Streams are asynchronous: queued work (copies, engine runs) runs
only when the host waits for it (record_and_wait) or the stream is destroyed, so a result read
from a staging buffer before the wait is stale, as it would be on a GPU.
"""

from __future__ import annotations

import ctypes
import itertools

import numpy as np


class CudaContractError(AssertionError):
    """The backend used the CUDA runtime in a way a real GPU would not accept."""


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.capture: list | None = None
        self.pending: list = []  # queued, not yet run: runs when the host waits

    def drain(self) -> None:
        while self.pending:
            self.pending.pop(0)()


class FakeCuda:
    is_test_double = True

    def __init__(self, name: str = "FakeGPU (test double)", compute_capability: str = "0.0") -> None:
        self.name, self.cc = name, compute_capability
        self.device: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: dict[int, FakeStream] = {}
        self._ids = itertools.count(1)
        self.launches = 0
        self.events = 0

    def properties(self) -> dict:
        return {"name": self.name, "compute_capability": self.cc, "integrated": False, "total_memory": 1 << 34}

    # memory
    def malloc(self, nbytes: int) -> int:
        arr = np.zeros(max(1, nbytes), np.uint8)
        self.device[arr.ctypes.data] = arr
        return arr.ctypes.data

    def _synchronize(self) -> None:
        """cudaFree / cudaFreeHost wait for the device's queued work first (they synchronise)."""
        for stream in self.streams.values():
            stream.drain()

    def free(self, ptr: int) -> None:
        self._synchronize()
        if ptr not in self.device:
            raise CudaContractError(f"cudaFree of {ptr:#x}: not a live device allocation")
        del self.device[ptr]

    def host_alloc(self, nbytes: int):
        arr = np.zeros(max(1, nbytes), np.uint8)
        self.pinned[arr.ctypes.data] = arr
        return arr.ctypes.data, arr

    def host_free(self, ptr: int) -> None:
        self._synchronize()
        if ptr not in self.pinned:
            raise CudaContractError(f"cudaFreeHost of {ptr:#x}: not live pinned memory")
        del self.pinned[ptr]

    def _span(self, table: dict[int, np.ndarray], ptr: int, nbytes: int, what: str) -> None:
        for base, arr in table.items():
            if base <= ptr and ptr + nbytes <= base + arr.nbytes:
                return
        raise CudaContractError(f"{what}: [{ptr:#x}, +{nbytes}) is not inside one allocation")

    def device_view(self, ptr: int, nbytes: int) -> np.ndarray:
        """What an engine reads or writes at a device address (bounds-checked)."""
        self._span(self.device, ptr, nbytes, "engine access")
        return np.ctypeslib.as_array((ctypes.c_uint8 * max(1, nbytes)).from_address(ptr))[:nbytes]

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream) -> None:
        self._span(self.device, dst, nbytes, "host->device copy destination")
        self._span(self.pinned, src, nbytes, "host->device copy source (must be pinned staging)")
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream) -> None:
        self._span(self.pinned, dst, nbytes, "device->host copy destination (must be pinned staging)")
        self._span(self.device, src, nbytes, "device->host copy source")
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    # streams, events, graphs
    def stream(self) -> FakeStream:
        s = FakeStream(next(self._ids))
        self.streams[s.handle] = s
        return s

    def stream_handle(self, stream: FakeStream) -> int:
        return stream.handle

    def destroy_stream(self, stream: FakeStream) -> None:
        if self.streams.pop(stream.handle, None) is None:
            raise CudaContractError("cudaStreamDestroy of a destroyed stream")
        stream.drain()  # CUDA completes the queued work of a destroyed stream

    def event(self) -> object:
        self.events += 1
        return object()

    def destroy_event(self, event) -> None:
        self.events -= 1

    def enqueue(self, stream, work) -> None:
        s = self.streams[stream] if isinstance(stream, int) else stream
        if s.handle not in self.streams:
            raise CudaContractError("work queued on a destroyed stream")
        if s.capture is not None:
            s.capture.append(work)
        else:
            s.pending.append(work)

    def record_and_wait(self, event, stream) -> None:
        if stream.capture is not None:
            raise CudaContractError("waiting on an event of a stream that is being captured")
        stream.drain()

    def begin_capture(self, stream) -> None:
        stream.capture = []

    def end_capture(self, stream):
        graph, stream.capture = stream.capture, None
        return graph

    def launch(self, graph, stream) -> None:
        self.launches += 1
        for work in graph:
            self.enqueue(stream, work)

    def destroy_graph(self, graph) -> None:
        pass

    def live(self) -> int:
        """Allocations not yet freed (device + pinned) and streams not destroyed."""
        return len(self.device) + len(self.pinned) + len(self.streams)
