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

Two graph sets, both standard ONNX:
- ee.onnx / sac.onnx: the TorchScript-based exporter (``dynamo=False``) at opset 17, attention in
  explicit MatMul / Softmax form (model.attention_impl("explicit")). Plain MatMul / Softmax /
  Gather / GatherElements / LayerNormalization nodes that ONNX Runtime, OpenVINO and TensorRT
  10/11 (JetPack 6 ships 10.3) all parse: what TensorRT builds from, and what fp16 / INT8
  derivation starts from.
- ee.attention.onnx / sac.attention.onnx (attention="onnx"): the dynamo exporter at opset 23,
  every attention call one standard ONNX Attention node on (B, L, h*d) tensors
  (model.onnx_attention), the GCA readout taken from that node's probabilities output. No head
  reshapes, transposes or shape bookkeeping around attention: a no-exit frame runs about half the
  nodes, and ONNX Runtime runs these (docs/latency.md has the A/B figures).
  With them, sac.unpadded.attention.onnx: the same SAC stage without the keep masks, for calls
  whose images share one target count (every batch-1 call, and batches of one count): no mask
  is built or applied in its attention calls (6-9 % of the SAC call at batch 1, the same logits).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Literal

from sacvit_edge.extras import require_extra

require_extra("export", "ONNX export")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from sacvit_edge.errors import ExportError  # noqa: E402
from sacvit_edge.engine_io import STAGES, dynamic_axes  # noqa: E402
from sacvit_edge.manifest import ATTENTION_GRAPH_FILES, ATTENTION_OPSET, ENGINE_FILES, UNPADDED_SAC_FILE  # noqa: E402
from sacvit_edge.model import SACViT, attention_impl  # noqa: E402

log = logging.getLogger(__name__)

# the names, in order, are the engine I/O contract's (sacvit_edge.engine_io)
EE_INPUTS, EE_OUTPUTS = STAGES["ee"].input_names, STAGES["ee"].output_names
SAC_INPUTS, SAC_OUTPUTS = STAGES["sac"].input_names, STAGES["sac"].output_names
UNPADDED_SAC_INPUTS = STAGES["sac_unpadded"].input_names
Exporter = Literal["torchscript", "dynamo"]
Attention = Literal["explicit", "onnx"]


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


class UnpaddedSACStage(SACStage):
    """The SAC stage for calls without padding: no keep masks (engine_io stage "sac_unpadded")."""

    def forward(self, target_patches, target_idx, nontarget_idx, ee_final, ee_hidden) -> torch.Tensor:  # type: ignore[override]
        return self.model.forward_sac(target_patches, target_idx, nontarget_idx, ee_final, ee_hidden)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int, exporter: Exporter, attention: Attention = "explicit") -> None:
    if attention == "onnx":  # the ONNX Attention operator: the dynamo exporter, opset >= 23
        exporter, opset = "dynamo", max(opset, ATTENTION_OPSET)
    with torch.no_grad(), attention_impl(attention, module), warnings.catch_warnings():
        # Tracing warns about the shape-dependent Python branches of forward_sac; they are
        # static for every export (the non-target cluster is never empty when k < n).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's own pytree deprecations
        # the dynamo exporter's note that two inputs share a dynamic axis (k, batch): they do, by design
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
        else:
            # one entry per positional input, in order (the forward's argument names may differ)
            dims = tuple({ax: torch.export.Dim(label, min=1) for ax, label in dynamic.get(name, {}).items()} or None
                         for name in inputs)
            with _quiet_registration():
                program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=inputs,
                                            output_names=outputs, dynamic_shapes=dims, optimize=True, verbose=False)
            program.save(str(path))
            _pool_as_depthwise_conv(path)


def _pool_as_depthwise_conv(path: Path) -> None:
    """The EE stage's 2x2 mean of the image as a depthwise 2x2 stride-2 convolution (weights 1/4).

    The same numbers (scaling by 1/4 is exact, so the sums round alike: max difference 0.0
    measured) at half the time: ONNX Runtime's CPU AveragePool takes ~90 us on a 112-px image, a
    tenth of the tiny EE stage at batch 1, its depthwise Conv ~10 us (docs/latency.md). Only
    graphs whose AveragePool reads a graph input with a static channel count are rewritten."""
    model = onnx.load(str(path))
    channels = {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in model.graph.input
                if len(i.type.tensor_type.shape.dim) == 4}
    changed = False
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "AveragePool" or attrs.get("kernel_shape") != [2, 2] or attrs.get("strides") != [2, 2] \
                or any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0) or not channels.get(node.input[0]):
            continue
        c = channels[node.input[0]]
        weight = f"{node.name}.mean_weight"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.full((c, 1, 2, 2), 0.25, np.float32), weight))
        conv = onnx.helper.make_node("Conv", [node.input[0], weight], list(node.output), name=node.name,
                                     kernel_shape=[2, 2], strides=[2, 2], group=c)
        node.CopyFrom(conv)
        changed = True
    if changed:
        onnx.save(model, str(path))


class _DropOptionalOpNotes(logging.Filter):
    """The dynamo exporter logs a warning per torchvision operator it cannot register when
    torchvision is absent (this project does not use it): noise on the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


@contextlib.contextmanager
def _quiet_registration():
    logger, note_filter = logging.getLogger("torch.onnx._internal.exporter._registration"), _DropOptionalOpNotes()
    logger.addFilter(note_filter)
    try:
        yield
    finally:
        logger.removeFilter(note_filter)


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
                  attention: Attention = "explicit", example_k: int | None = None,
                  metadata: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write the EE and SAC graphs of `model` into out_dir (which must exist): ee.onnx and
    sac.onnx, or with attention="onnx" (dynamo exporter, opset >= 23) ee.attention.onnx,
    sac.attention.onnx and sac.unpadded.attention.onnx (returned: the first two).

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
    names = ATTENTION_GRAPH_FILES if attention == "onnx" else ENGINE_FILES
    ee_path, sac_path = out_dir / names[0], out_dir / names[1]
    try:
        _export(EEStage(model).eval(), (image,), ee_path, EE_INPUTS, EE_OUTPUTS, dynamic_axes("ee"), opset, exporter, attention)
        patches = model.crop_targets(image, order[:, :example_k])
        keep_t = torch.ones(2, example_k, dtype=torch.bool)
        keep_n = torch.ones(2, cfg.num_coarse - example_k, dtype=torch.bool)
        sac_args = (patches, order[:, :example_k], order[:, example_k:], ee.final, ee.hidden)
        _export(SACStage(model).eval(), (*sac_args, keep_t, keep_n),
                sac_path, SAC_INPUTS, SAC_OUTPUTS, dynamic_axes("sac"), opset, exporter, attention)
        written = [(ee_path, "ee"), (sac_path, "sac")]
        if attention == "onnx":
            unpadded_path = out_dir / UNPADDED_SAC_FILE
            _export(UnpaddedSACStage(model).eval(), sac_args, unpadded_path, UNPADDED_SAC_INPUTS, SAC_OUTPUTS,
                    dynamic_axes("sac_unpadded"), opset, exporter, attention)
            written.append((unpadded_path, "sac_unpadded"))
        for path, stage in written:
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


def export_single(model: nn.Module, path: Path, *, opset: int = 17, attention: Attention = "explicit") -> Path:
    """A plain one-graph classifier (the DeiT baseline): image (B,3,H,W) -> logits (B,C); with
    attention="onnx" the same graph style as SAC-ViT's attention graphs (a fair baseline)."""
    cfg = model.cfg
    image = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    try:
        _export(model.eval(), (image,), path, ["image"], ["logits"], {"image": {0: "batch"}, "logits": {0: "batch"}},
                opset, "torchscript", attention)
        add_metadata(path, {"sacvit_edge.stage": "full"})
    except Exception as exc:
        raise ExportError(f"ONNX export of the baseline failed: {type(exc).__name__}: {exc}") from exc
    return path
