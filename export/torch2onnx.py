"""Split a trained SAC-ViT into two ONNX engines: the EE stage and the SAC stage.

    ee.onnx   image (B,3,H,W) -> ee_logits (B,C), gca (B,n), ee_final (B,n,D), ee_hidden (B,n,D)
    sac.onnx  target_patches (B,4k,C*p*p), target_idx (B,k), nontarget_idx (B,n-k'), ee_final,
              ee_hidden, target_keep (B,k), nontarget_keep (B,n-k') -> sac_logits (B,C)
              [dynamic B, k and k': a group of images with target counts in [k', k] is padded
              to k targets and n-k' non-targets; the keep masks are False on padding and mask
              those tokens out as attention keys (tokens.build_sac_group)]

Selection (sorting, the 2-means split, top-k) stays on the host: TensorRT needs a constant
K for TopK and data-dependent shapes do not export. The host also cuts the target regions'
pixels (tokens.crop_target_patches: a copy of only those pixels; cutting the whole image
inside the graph was a full-image Transpose, ~12% of the SAC engine's time at small k, and
sends less data to a GPU). Everything after, the re-embedding with the fine positional
embedding, the feature-reuse MLP, the gather of reused non-target tokens and the
cluster-local attention, is inside sac.onnx.

Exporter choice: the TorchScript-based exporter (``dynamo=False``) at opset 17. Both graphs
are static-control-flow transformers, which it traces to plain MatMul / Softmax / Gather /
GatherElements / LayerNormalization nodes: opset 17 has a native LayerNormalization that
ONNX Runtime and TensorRT 10/11 both fuse, and every node here is in TensorRT's supported
operator list. The dynamo exporter emits opset >= 18 graphs with local functions and
symbolic-shape guards that older TensorRT parsers (JetPack 6 ships TensorRT 10.3) handle less
reliably; it is still available with ``exporter="dynamo"``. Attention is exported in explicit
matmul/softmax form (model.fused_attention(False, module)), see timm's note on SDPA export.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

from sacvit_edge.extras import require_extra

require_extra("export", "ONNX export")

import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from sacvit_edge.errors import ExportError  # noqa: E402
from sacvit_edge.engine_io import STAGES, dynamic_axes  # noqa: E402
from sacvit_edge.model import SACViT, fused_attention  # noqa: E402

log = logging.getLogger(__name__)

# the names, in order, are the engine I/O contract's (sacvit_edge.engine_io)
EE_INPUTS, EE_OUTPUTS = STAGES["ee"].input_names, STAGES["ee"].output_names
SAC_INPUTS, SAC_OUTPUTS = STAGES["sac"].input_names, STAGES["sac"].output_names
Exporter = Literal["torchscript", "dynamo"]


class EEStage(nn.Module):
    """The EE stage as a graph with tensor outputs."""

    def __init__(self, model: SACViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_ee(image)
        return out.logits, out.gca, out.final, out.hidden


class SACStage(nn.Module):
    """The SAC stage as a graph; k = target_idx.shape[1] is a dynamic axis."""

    def __init__(self, model: SACViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, target_patches, target_idx, nontarget_idx, ee_final, ee_hidden, target_keep,
                nontarget_keep) -> torch.Tensor:
        return self.model.forward_sac(target_patches, target_idx, nontarget_idx, ee_final, ee_hidden, target_keep,
                                      nontarget_keep)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int, exporter: Exporter) -> None:
    with torch.no_grad(), fused_attention(False, module), warnings.catch_warnings():
        # Tracing warns about the shape-dependent Python branches of forward_sac; they are
        # static for every export (the non-target cluster is never empty when k < n).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
        else:
            dims = {name: {ax: torch.export.Dim(label, min=1) for ax, label in axes.items()}
                    for name, axes in dynamic.items() if name in inputs}
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=inputs,
                                        output_names=outputs, dynamic_shapes=dims, optimize=True)
            program.save(str(path))


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Write metadata into the ONNX file itself (Ultralytics-style), then re-check it."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_stages(model: SACViT, out_dir: Path, *, opset: int = 17, exporter: Exporter = "torchscript",
                  example_k: int | None = None, metadata: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ee.onnx and sac.onnx for `model` into out_dir (which must exist).

    Raises:
        ExportError: the model is not a SAC-ViT, the token range cannot be exported, or a
            graph fails onnx.checker.
    """
    if not isinstance(model, SACViT):
        raise ExportError(f"only SAC-ViT checkpoints split into two engines; this is arch={model.cfg.arch!r}")
    cfg = model.cfg
    if example_k is None:
        example_k = max(1, min(cfg.num_coarse - 1, (cfg.k_min + cfg.k_max) // 2))
    model = model.eval().cpu()
    image = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        ee = model.forward_ee(image)
    order = torch.arange(cfg.num_coarse).repeat(2, 1)
    ee_path, sac_path = out_dir / "ee.onnx", out_dir / "sac.onnx"
    try:
        _export(EEStage(model), (image,), ee_path, EE_INPUTS, EE_OUTPUTS, dynamic_axes("ee"), opset, exporter)
        patches = model.crop_targets(image, order[:, :example_k])
        keep_t = torch.ones(2, example_k, dtype=torch.bool)
        keep_n = torch.ones(2, cfg.num_coarse - example_k, dtype=torch.bool)
        _export(SACStage(model), (patches, order[:, :example_k], order[:, example_k:], ee.final, ee.hidden, keep_t, keep_n),
                sac_path, SAC_INPUTS, SAC_OUTPUTS, dynamic_axes("sac"), opset, exporter)
        for path, stage in ((ee_path, "ee"), (sac_path, "sac")):
            add_metadata(path, {"sacvit_edge.stage": stage, **(metadata or {})})
            check_no_training_nodes(path)
    except ExportError:
        raise
    except Exception as exc:  # exporter internals raise many types; name the stage and the cause
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return ee_path, sac_path


TRAINING_ONLY_OPS = {"Dropout", "BatchNormalizationTraining", "Gradient", "SoftmaxCrossEntropyLoss"}


def check_no_training_nodes(path: Path) -> None:
    graph = onnx.load(str(path)).graph
    found = sorted({n.op_type for n in graph.node} & TRAINING_ONLY_OPS)
    if found:
        raise ExportError(f"{path.name} contains training-only nodes {found}")


def export_single(model: nn.Module, path: Path, *, opset: int = 17) -> Path:
    """A plain one-graph classifier (the DeiT baseline): image (B,3,H,W) -> logits (B,C)."""
    cfg = model.cfg
    image = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    try:
        _export(model.eval(), (image,), path, ["image"], ["logits"], {"image": {0: "batch"}, "logits": {0: "batch"}},
                opset, "torchscript")
        add_metadata(path, {"sacvit_edge.stage": "full"})
    except Exception as exc:
        raise ExportError(f"ONNX export of the baseline failed: {type(exc).__name__}: {exc}") from exc
    return path
