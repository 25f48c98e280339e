"""TensorRT backend (Jetson and desktop NVIDIA GPUs), TensorRT 10/11 API.

Engines are built (by sacvit_edge.export.tensorrt) from the exported ONNX on first use, on the
device that runs them, and cached beside the ONNX files as `ee.engine` / `sac.engine`. Each engine file starts with a
JSON header (Ultralytics-style metadata in the artifact): TensorRT version, GPU, checkpoint
fingerprint and the profile ranges, so an engine built for another model, another TensorRT
version or another GPU is refused with a clear error instead of failing deep inside
deserialisation. Buffers are PyTorch CUDA tensors; tensors are bound by name and run with
execute_async_v3 (no deprecated binding indices).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from sacvit_edge.errors import BackendError

from .base import BackendBase, EEResult

log = logging.getLogger(__name__)

_MAGIC = b"SACVTRT1"


def _trt():
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BackendError("TensorRT is not installed (pip install tensorrt, or use JetPack's python3-libnvinfer)") from exc
    return trt


def engine_header(path: Path) -> dict[str, Any]:
    """Read the JSON header of a sacvit-edge engine file.

    Raises:
        BackendError: not a sacvit-edge engine, or its header is truncated or corrupt.
    """
    with open(path, "rb") as f:
        if f.read(8) != _MAGIC:
            raise BackendError(f"{path}: not a sacvit-edge TensorRT engine (no header); delete it to rebuild")
        try:
            (size,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(size))
        except (struct.error, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BackendError(f"{path}: truncated or corrupt engine header ({exc}); delete it to rebuild") from exc
    if not isinstance(header, dict):
        raise BackendError(f"{path}: corrupt engine header; delete it to rebuild")
    return header


def header_problems(header: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Why an engine cannot be used here: each field of `expected` that its header contradicts.

    TensorRT plans are tied to the TensorRT version and GPU that built them, and to the weights
    baked in; reporting that up front beats a deserialisation failure or a silently wrong answer.
    """
    what = {"tensorrt": "built with TensorRT {got}, this is {want}",
            "checkpoint_fingerprint": "built for another checkpoint",
            "manifest_sha256": "built from another export (or the manifest was edited since)",
            "gpu": "built on {got}, this GPU is {want}",
            "stage": "is a {got!r} engine, expected {want!r}",
            "fp16": "built with fp16={got}, fp16={want} was asked for"}
    return [what[key].format(got=header.get(key), want=want) for key, want in expected.items()
            if header.get(key) != want]


def write_engine(path: Path, header: dict[str, Any], blob: bytes) -> None:
    head = json.dumps(header).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + struct.pack("<I", len(head)) + head + blob)
    tmp.replace(path)


class _Engine:
    """One deserialised engine with a lock-protected execution context."""

    def __init__(self, path: Path, manifest, stage: str, fp16: bool = False) -> None:
        trt = _trt()
        import torch

        expected = {"tensorrt": trt.__version__, "checkpoint_fingerprint": manifest.fingerprint,
                    "manifest_sha256": manifest.content_sha256,
                    "gpu": torch.cuda.get_device_name(0), "stage": stage, "fp16": fp16}
        problems = header_problems(engine_header(path), expected)
        if problems:
            raise BackendError(f"{path}: {'; '.join(problems)}; delete it to rebuild")
        data = path.read_bytes()
        blob = data[12 + struct.unpack("<I", data[8:12])[0]:]
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendError(f"{path}: TensorRT could not deserialise the engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.lock = threading.Lock()
        self.stream = torch.cuda.Stream()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with self.lock, torch.cuda.stream(self.stream):
            dev = {n: torch.from_numpy(np.ascontiguousarray(a)).cuda(non_blocking=True) for n, a in feeds.items()}
            for name in self.inputs:
                self.context.set_input_shape(name, tuple(dev[name].shape))
                self.context.set_tensor_address(name, dev[name].data_ptr())
            outs = {}
            for name in self.outputs:
                outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError("TensorRT execution failed")
            self.stream.synchronize()
            return {n: t.cpu().numpy() for n, t in outs.items()}


class TensorRTBackend(BackendBase):
    name = "tensorrt"

    def __init__(self, ee: _Engine, sac: _Engine) -> None:
        self.ee, self.sac = ee, sac

    @classmethod
    def from_manifest(cls, manifest, fp16: bool = False) -> "TensorRTBackend":
        import torch

        if not torch.cuda.is_available():
            raise BackendError("backend 'tensorrt' needs a CUDA GPU; none is visible")
        engines = []
        for stage in ("ee", "sac"):
            path = manifest.path(f"{stage}.engine")
            if not path.is_file():
                from sacvit_edge.export.tensorrt import build_engine

                build_engine(manifest.path(f"{stage}.onnx"), path, manifest, stage, fp16=fp16)
            engines.append(_Engine(path, manifest, stage, fp16))
        return cls(*engines)

    def run_ee(self, image: np.ndarray) -> EEResult:
        out = self.ee({"image": image})
        return EEResult(logits=out["ee_logits"], gca=out["gca"], final=out["ee_final"], hidden=out["ee_hidden"])

    def run_sac(self, patches, target_idx, nontarget_idx, final, hidden, target_keep, nontarget_keep) -> np.ndarray:
        return self.sac({"target_patches": patches, "target_idx": target_idx, "nontarget_idx": nontarget_idx,
                         "ee_final": final, "ee_hidden": hidden, "target_keep": target_keep,
                                             "nontarget_keep": nontarget_keep})["sac_logits"]

    def device(self) -> str:
        import torch

        return torch.cuda.get_device_name(0)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device(), "tensorrt": _trt().__version__}
