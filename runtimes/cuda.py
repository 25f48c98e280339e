"""The few CUDA runtime calls the TensorRT backend makes, through cuda-python (NVIDIA's bindings).

Not torch: a Jetson with JetPack's TensorRT and cuda-python runs the backend without PyTorch.
Every call's error code is checked and turned into a BackendError naming the call. The
interface (`CudaRuntime`) is small on purpose: device and pinned host memory, async copies,
streams, events, and stream capture into a CUDA graph. tests/doubles/fake_cuda.py implements
the same interface on host memory for the TensorRT API test double; it is not CUDA.

cuda-python moved its runtime module from `cuda.cudart` (<= 12.5) to `cuda.bindings.runtime`
(12.6+, 13.x); both are accepted. Jetson: pip's cuda-python must match JetPack's CUDA major
(JetPack 6: CUDA 12 -> `pip install "cuda-python>=12,<13"`).

Memory on Jetson (integrated GPU, shared DRAM): this backend still allocates device memory and
stages host copies through pinned (page-locked) buffers, the same code as on a desktop GPU; mapped
zero-copy host memory (cudaHostAllocMapped) is not used. The copies it makes are the image up
(once), logits and clustering scores down, and the SAC group's indices up: a few hundred bytes
besides the image, so zero-copy would save little and would make the engines read pixels
through the uncached mapping.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from sacvit_edge.errors import BackendError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python <= 12.5
        except (ImportError, RuntimeError, OSError) as exc:
            raise BackendError("the TensorRT backend needs cuda-python (NVIDIA's CUDA bindings): "
                               "pip install 'sacvit-edge[tensorrt]', on a Jetson a cuda-python matching "
                               "JetPack's CUDA (JetPack 6: pip install 'cuda-python>=12,<13')") from exc
    return cudart


def host_view(ptr: int, nbytes: int) -> np.ndarray:
    """A uint8 NumPy view of host memory at ptr (pinned staging buffers)."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))


class CudaRuntime:
    """CUDA through cuda-python's runtime API. Handles (streams, events, graphs) are opaque."""

    is_test_double = False

    def __init__(self, device: int = 0) -> None:
        self.rt = _cudart()
        try:
            result = self.rt.cudaSetDevice(device)
        except (RuntimeError, OSError) as exc:  # cuda-python without a driver: "Failed to dlopen libcuda.so.1", ...
            raise BackendError(f"CUDA is not usable here: cudaSetDevice raised {type(exc).__name__}: {exc}") from None
        self._check(result, "cudaSetDevice")
        self.device_index = device

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(err)
            raise BackendError(f"CUDA call {call} failed: {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else rest

    # -- device ---------------------------------------------------------------------------
    def properties(self) -> dict[str, Any]:
        """name, compute capability "major.minor", integrated (Jetson: shared memory)."""
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device_index), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{prop.major}.{prop.minor}",
                "integrated": bool(prop.integrated), "total_memory": int(prop.totalGlobalMem)}

    # -- memory ---------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Pinned host memory: (pointer, uint8 view)."""
        ptr = int(self._check(self.rt.cudaMallocHost(max(1, nbytes)), f"cudaMallocHost({nbytes})"))
        return ptr, host_view(ptr, max(1, nbytes))

    def host_free(self, ptr: int) -> None:
        self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(host->device)")

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(device->host)")

    # -- streams, events, graphs -------------------------------------------------------------
    def stream(self):
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreate")

    def stream_handle(self, stream) -> int:
        """The integer handle TensorRT's execute_async_v3 takes."""
        return int(stream)

    def destroy_stream(self, stream) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def event(self):
        return self._check(self.rt.cudaEventCreateWithFlags(self.rt.cudaEventDisableTiming), "cudaEventCreate")

    def destroy_event(self, event) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def record_and_wait(self, event, stream) -> None:
        """Wait for the work queued on `stream` so far (an event, not a device-wide sync)."""
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")
        self._check(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def begin_capture(self, stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        """-> an executable graph of what was queued since begin_capture."""
        graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, graph, stream) -> None:
        self._check(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")
