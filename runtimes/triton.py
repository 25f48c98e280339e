"""The engines as models of a Triton Inference Server, called from a Business Logic Scripting
(BLS) model in the same server.

Triton's ensembles cannot branch, so the early exit lives in a Python-backend model that drives
the ordinary two-stage pipeline (sacvit_edge.pipeline) over this backend: `run_ee` and
`run_sac_feeds` become inference requests to the EE and SAC models (Triton's `onnxruntime` or
`tensorrt_plan` backend, or sacvit_edge.serving's Python stage model), so the gate, the split
and the SAC-input builder stay the library's, and the SAC model sees only the images that did not
exit. The request itself goes through `infer`, which the BLS model supplies (it needs
`triton_python_backend_utils`, which exists only inside Triton's Python-backend stub); nothing
here imports Triton.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from sacvit_edge.engine_io import STAGES
from sacvit_edge.errors import BackendError

from .base import EEResult, HostBackend

# infer(model_name, {input name: array}, [output names]) -> {output name: array}
InferFn = Callable[[str, Mapping[str, np.ndarray], Sequence[str]], Mapping[str, np.ndarray]]
_EE_OUTPUTS = STAGES["ee"].output_names
_SAC_OUTPUTS = STAGES["sac"].output_names


class TritonStageBackend(HostBackend):
    """EE and SAC engines served as the Triton models `ee_model` and `sac_model`.

    The EE features come back to the BLS model's process and go out again with the SAC request
    (Triton's Python backend moves them through shared memory); the tensors are the engine I/O
    contract's (engine_io.STAGES), which the stage models' configs declare.
    """

    name = "triton"

    def __init__(self, infer: InferFn, ee_model: str, sac_model: str) -> None:
        self.infer, self.ee_model, self.sac_model = infer, ee_model, sac_model

    def _call(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        got = self.infer(model, inputs, outputs)
        missing = [n for n in outputs if n not in got]
        if missing:
            raise BackendError(f"Triton model {model!r} returned no {missing}; its config is not this export's "
                               "(rebuild the model repository with `sacvit-edge export-triton`)")
        return [got[n] for n in outputs]

    def run_ee(self, image: np.ndarray) -> EEResult:
        logits, gca, final, hidden = self._call(self.ee_model, {"image": image}, _EE_OUTPUTS)
        return EEResult(logits=logits, gca=gca, final=final, hidden=hidden, image=image)

    def run_sac_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._call(self.sac_model, feeds, _SAC_OUTPUTS)[0]

    def device(self) -> str:
        return f"Triton models {self.ee_model}, {self.sac_model}"

    def describe(self) -> dict:
        return {"backend": self.name, "ee_model": self.ee_model, "sac_model": self.sac_model}

    def close(self) -> None:
        self.infer = None  # type: ignore[assignment]
