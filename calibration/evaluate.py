"""`sacvit-edge eval`: accuracy and cost of a deployed export directory on the user's data, on its
deployment backend at the eta it will run (or of a checkpoint through PyTorch, train.evaluate),
as one typed report the CLI renders and writes as JSON. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.datasets import DEFAULT_MAX_BAD_SHARE, LabelledSource
from sacvit_edge.gate import Eta

from .collect import collect


@dataclass(frozen=True)
class EvalReport:
    """What eval measured. `model` is the export directory or the checkpoint (`kind` says which);
    the SAC-ViT fields are None for a DeiT checkpoint; `details` holds what only one kind has
    (GFLOPs per stage of a checkpoint)."""

    kind: str                                   # "export" or "checkpoint"
    model: str
    data: str
    images: int
    top1: float
    eta: float | str | None = None
    eta_source: str | None = None               # --eta, calibrated, checkpoint
    top1_ci95: tuple[float, float] | None = None
    top1_ee: float | None = None
    top1_sac: float | None = None
    exit_rate: float | None = None
    mean_target_tokens: float | None = None
    gflops: float | None = None
    backend: str | None = None
    precision: str | None = None
    arch: str | None = None
    unreadable: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON `eval --json` writes: the model under its kind's key, then every measured value."""
        body = {k: v for k, v in asdict(self).items() if k not in ("kind", "model", "details") and v is not None}
        if self.kind == "checkpoint":
            body.pop("unreadable", None)
        return {self.kind: self.model, **body, **self.details}


def evaluate_export(directory: str | Path, source: LabelledSource, *, eta: Eta | None = None,
                    backend: str = "onnxruntime", precision: str = "fp32", threads: int | None = None,
                    max_bad_share: float = DEFAULT_MAX_BAD_SHARE, batch: int = 32, data_name: str | None = None,
                    on_batch: Callable[[int, int], None] | None = None) -> EvalReport:
    """One pass of the deployment backend over `source` (calibration's collect), evaluated at
    `eta`, else the calibrated eta, else the checkpoint's."""
    with EdgeClassifier(directory, backend=backend, precision=precision, threads=threads) as clf:
        got = collect(clf, source, batch, max_bad_share, on_batch=on_batch)
        rec = got.records
        point = rec.point(clf.eta if eta is None else eta, clf.manifest.cost)
        return EvalReport(
            kind="export", model=str(directory), data=data_name or source.name, images=int(len(rec.labels)), top1=point["top1"],
            eta=point["eta"], eta_source="--eta" if eta is not None else (
                "calibrated" if clf.manifest.calibration else "checkpoint"),
            top1_ci95=tuple(point["top1_ci95"]), top1_ee=rec.top1(rec.ee_pred), top1_sac=rec.top1(rec.sac_pred),
            exit_rate=point["exit_rate"], mean_target_tokens=point.get("mean_target_tokens"),
            gflops=point.get("gflops"), backend=clf.backend_name, precision=clf.precision, unreadable=len(got.bad))
