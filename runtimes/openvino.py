"""OpenVINO backend: both engines compiled by OpenVINO for the CPU (the `[openvino]` extra).

OpenVINO reads the exported ONNX graphs directly (no IR file is written: the derived form lives
in memory, keyed by the file the manifest hashes), and checks their embedded identity the same
way the ONNX Runtime backend does. Each engine is compiled with the LATENCY hint; calls run on
one infer request per engine and thread (OpenVINO requests are not re-entrant), so several
threads may call predict() at once.

Measured against ONNX Runtime on this project's 2-core CPU (scripts/latency_study.py,
BENCHMARKS.md): faster for both SAC-ViT and the DeiT baseline at DeiT-Ti/DeiT-S width, slower
at the tiny width of the shipped model, where its per-call cost for a new SAC shape (the target
count changes from frame to frame) dominates. So it is an option, not `auto`'s choice.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from sacvit_edge.engine_io import STAGES, check_engine, dimensions
from sacvit_edge.errors import BackendError

from .base import EEResult, HostBackend, cpu_name

log = logging.getLogger(__name__)

EE_OUTPUTS = STAGES["ee"].output_names


class OpenVinoBackend(HostBackend):
    name = "openvino"

    def __init__(self, ee_path: str | Path, sac_path: str | Path, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError("backend 'openvino' needs the openvino package: pip install 'sacvit-edge[openvino]'") from exc
        self._ov = ov
        self.threads = threads
        core = ov.Core()
        # f32: OpenVINO's CPU plugin otherwise runs bf16 where the CPU has it (AVX512_BF16 / AMX),
        # which is a precision change, not a backend change (answers moved by ~3 % relative here)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.models = {"ee": core.read_model(str(ee_path)), "sac": core.read_model(str(sac_path))}
            self.compiled = {k: core.compile_model(m, "CPU", config) for k, m in self.models.items()}
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"OpenVINO cannot load the engines {ee_path}, {sac_path}: {exc}") from exc
        for stage, path in (("ee", ee_path), ("sac", sac_path)):
            check_engine(stage, str(path), self.declared(self.models[stage]))
        self._local = threading.local()

    @classmethod
    def from_manifest(cls, manifest, threads: int | None = None, precision: str = "fp32") -> "OpenVinoBackend":
        files = dict(zip(("ee", "sac"), manifest.engine_files(precision)))
        backend = cls(manifest.path(files["ee"]), manifest.path(files["sac"]), threads=threads)
        for stage, model in backend.models.items():
            problems = manifest.engine_problems(stage, backend.metadata(model))
            if problems:
                raise BackendError(f"{manifest.path(files[stage])}: {'; '.join(problems)}; re-export")
            check_engine(stage, str(manifest.path(files[stage])), backend.declared(model), dimensions(manifest.config))
        return backend

    @staticmethod
    def declared(model) -> dict:
        """The model's tensors as engine_io.check_engine reads them: name -> (is input, dtype, shape)."""
        def one(port, is_input: bool):
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            return port.get_any_name(), (is_input, port.get_element_type().to_dtype(), shape)

        return dict([one(p, True) for p in model.inputs] + [one(p, False) for p in model.outputs])

    @staticmethod
    def metadata(model) -> dict[str, str]:
        """The ONNX metadata_props OpenVINO keeps in the model's rt_info['framework']."""
        try:
            info = model.get_rt_info()["framework"]
            return {str(k): str(info[k].astype(str)) if hasattr(info[k], "astype") else str(info[k]) for k in info.keys()}
        except Exception:  # noqa: BLE001 - no framework section: nothing embedded
            return {}

    def _requests(self):
        reqs = getattr(self._local, "reqs", None)
        if reqs is None:
            reqs = self._local.reqs = {k: c.create_infer_request() for k, c in self.compiled.items()}
        return reqs

    def run_ee(self, image: np.ndarray) -> EEResult:
        req = self._requests()["ee"]
        req.infer({"image": image})
        out = {name: req.get_tensor(name).data.copy() for name in EE_OUTPUTS}
        return EEResult(logits=out["ee_logits"], gca=out["gca"], final=out["ee_final"], hidden=out["ee_hidden"],
                        image=image)

    def run_sac_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        req = self._requests()["sac"]
        req.infer(feeds)
        return req.get_tensor("sac_logits").data.copy()

    def device(self) -> str:
        return f"{cpu_name()} (OpenVINO CPU)"

    def describe(self) -> dict:
        return {"backend": self.name, "openvino": self._ov.__version__, "threads": self.threads or "openvino default",
                "device": self.device()}

    def close(self) -> None:
        self.compiled = {}
        self.models = {}
        self._local = threading.local()
