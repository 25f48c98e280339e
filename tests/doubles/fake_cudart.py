"""TEST DOUBLE of cuda-python's runtime module (`cuda.bindings.runtime` / `cuda.cudart`): the
functions runtimes/cuda.py calls, with cuda-python's calling convention (every call returns a tuple
whose first item is a cudaError_t, then the results) and the real enum values
(tests/fixtures/cuda_python_api.json, recorded from cuda-python 12.4, 12.9 and 13.4.4). Device and
pinned memory are host memory; streams are asynchronous (work runs when the host waits on an event
of the stream, or frees memory); stream capture records work into a graph that launches replay.
It lets the REAL runtimes/cuda.CudaRuntime run in the tests. It is NOT CUDA.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
from types import SimpleNamespace

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidValue = 1
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeThreadLocal = 1


def make_cudart(fail: tuple[str, ...] = ()) -> SimpleNamespace:
    """A module-like namespace; `fail`: function names that return an error code instead."""
    ids = itertools.count(1)
    memory: dict[int, np.ndarray] = {}
    streams: dict[int, dict] = {}  # handle -> {"pending": [...], "capture": list | None}
    graphs: dict[int, list] = {}

    def err(name: str, code: cudaError_t = cudaError_t.cudaErrorInvalidValue):
        return code if name in fail else cudaError_t.cudaSuccess

    def alloc(name: str, nbytes: int):
        if name in fail:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        arr = np.zeros(max(1, int(nbytes)), np.uint8)
        memory[arr.ctypes.data] = arr
        return (cudaError_t.cudaSuccess, arr.ctypes.data)

    def synchronize_all() -> None:
        for s in streams.values():
            while s["pending"]:
                s["pending"].pop(0)()

    def release(name: str, ptr: int):
        synchronize_all()  # cudaFree / cudaFreeHost synchronise
        if memory.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (err(name),)

    def enqueue(stream: int, work) -> cudaError_t:
        s = streams.get(int(stream))
        if s is None:
            return cudaError_t.cudaErrorInvalidResourceHandle
        (s["capture"] if s["capture"] is not None else s["pending"]).append(work)
        return cudaError_t.cudaSuccess

    def inside(ptr: int, nbytes: int) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + a.nbytes for base, a in memory.items())

    def cudaMemcpyAsync(dst, src, nbytes, kind, stream):  # noqa: N802
        if "cudaMemcpyAsync" in fail or not (inside(int(dst), nbytes) and inside(int(src), nbytes)):
            return (cudaError_t.cudaErrorInvalidValue,)
        return (enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), int(nbytes))),)

    def cudaMemcpy(dst, src, nbytes, kind):  # noqa: N802 - synchronous; the host side may be pageable memory
        device = int(src) if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost else int(dst)
        if not inside(device, int(nbytes)):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(stream):  # noqa: N802
        s = streams.get(int(stream))
        if s is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        while s["pending"]:
            s["pending"].pop(0)()
        return (cudaError_t.cudaSuccess,)

    def cudaStreamCreateWithFlags(flags):  # noqa: N802
        handle = next(ids)
        streams[handle] = {"pending": [], "capture": None}
        return (err("cudaStreamCreateWithFlags"), handle)

    def cudaStreamDestroy(stream):  # noqa: N802
        s = streams.pop(int(stream), None)
        if s is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        for work in s["pending"]:
            work()
        return (cudaError_t.cudaSuccess,)

    def cudaEventRecord(event, stream):  # noqa: N802
        return (cudaError_t.cudaSuccess if int(stream) in streams else cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaEventSynchronize(event):  # noqa: N802 - waits for what was queued before the record
        synchronize_all()
        return (err("cudaEventSynchronize"),)

    def cudaStreamBeginCapture(stream, mode):  # noqa: N802
        streams[int(stream)]["capture"] = []
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(stream):  # noqa: N802
        s = streams[int(stream)]
        handle = next(ids)
        graphs[handle], s["capture"] = s["capture"], None
        return (cudaError_t.cudaSuccess, handle)

    def cudaGraphLaunch(graph, stream):  # noqa: N802
        for work in graphs[int(graph)]:
            enqueue(stream, work)
        return (err("cudaGraphLaunch"),)

    props = SimpleNamespace(name=b"FakeGPU (cuda-python test double)", major=0, minor=0, integrated=0,
                            totalGlobalMem=1 << 34)
    return SimpleNamespace(
        is_test_double=True, cudaError_t=cudaError_t, cudaMemcpyKind=cudaMemcpyKind,
        cudaStreamCaptureMode=cudaStreamCaptureMode, cudaStreamNonBlocking=1, cudaEventDisableTiming=2,
        cudaSetDevice=lambda device: (err("cudaSetDevice", cudaError_t.cudaErrorInvalidValue),),
        cudaGetDeviceProperties=lambda device: (cudaError_t.cudaSuccess, props),
        cudaGetErrorName=lambda code: (cudaError_t.cudaSuccess, cudaError_t(code).name.encode()),
        cudaMalloc=lambda nbytes: alloc("cudaMalloc", nbytes), cudaMallocHost=lambda nbytes: alloc("cudaMallocHost", nbytes),
        cudaFree=lambda ptr: release("cudaFree", ptr), cudaFreeHost=lambda ptr: release("cudaFreeHost", ptr),
        cudaMemcpyAsync=cudaMemcpyAsync, cudaMemcpy=cudaMemcpy, cudaStreamSynchronize=cudaStreamSynchronize,
        cudaStreamCreateWithFlags=cudaStreamCreateWithFlags,
        cudaStreamDestroy=cudaStreamDestroy,
        cudaEventCreateWithFlags=lambda flags: (cudaError_t.cudaSuccess, next(ids)),
        cudaEventDestroy=lambda event: (cudaError_t.cudaSuccess,), cudaEventRecord=cudaEventRecord,
        cudaEventSynchronize=cudaEventSynchronize, cudaStreamBeginCapture=cudaStreamBeginCapture,
        cudaStreamEndCapture=cudaStreamEndCapture,
        cudaGraphInstantiate=lambda graph, flags: (cudaError_t.cudaSuccess, graph),
        cudaGraphDestroy=lambda graph: (cudaError_t.cudaSuccess,), cudaGraphLaunch=cudaGraphLaunch,
        cudaGraphExecDestroy=lambda graph: (cudaError_t.cudaSuccess,), live=lambda: len(memory) + len(streams))
