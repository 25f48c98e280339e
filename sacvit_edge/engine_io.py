"""The engine I/O contract: every stage's input and output names, dtypes and shapes, stated once.

The exporter writes the graphs from it (export/torch2onnx.py: ee, sac; export/graphs.py: the
device crop), the manifest lists the names, and every backend checks an engine against it at
load with the same error (`check_engine`): ONNX Runtime and OpenVINO from their sessions'
declared tensors, TensorRT from the engine's, PyTorch by construction (it runs the model).

Shapes are tuples of dimension symbols. Static symbols (`c`, `h`, `w`, `n`, `d`, `px`,
`classes`) take their value from the model (`dimensions`) and are checked where an engine
declares a number; dynamic ones (`batch`, `group`, `k`, `four_k`, `rest`) are free. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .errors import BackendError

F32, I64, BOOL = np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.bool_)
DYNAMIC = ("batch", "group", "k", "four_k", "rest")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[str, ...]


@dataclass(frozen=True)
class StageSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensors(self) -> dict[str, tuple[bool, TensorSpec]]:
        """name -> (is_input, spec), inputs first, in the graph's order."""
        return {**{t.name: (True, t) for t in self.inputs}, **{t.name: (False, t) for t in self.outputs}}


_FEAT = ("batch", "n", "d")
STAGES: dict[str, StageSpec] = {
    # the image downsampled inside the graph -> EE head, clustering scores, features to reuse
    "ee": StageSpec(
        inputs=(TensorSpec("image", F32, ("batch", "c", "h", "w")),),
        outputs=(TensorSpec("ee_logits", F32, ("batch", "classes")), TensorSpec("gca", F32, ("batch", "n")),
                 TensorSpec("ee_final", F32, _FEAT), TensorSpec("ee_hidden", F32, _FEAT))),
    # target regions (fine tokens) + reused non-target tokens -> SAC head
    "sac": StageSpec(
        inputs=(TensorSpec("target_patches", F32, ("batch", "four_k", "px")), TensorSpec("target_idx", I64, ("batch", "k")),
                TensorSpec("nontarget_idx", I64, ("batch", "rest")), TensorSpec("ee_final", F32, _FEAT),
                TensorSpec("ee_hidden", F32, _FEAT), TensorSpec("target_keep", BOOL, ("batch", "k")),
                TensorSpec("nontarget_keep", BOOL, ("batch", "rest"))),
        outputs=(TensorSpec("sac_logits", F32, ("batch", "classes")),)),
    # the SAC stage for calls whose images share one target count (every batch-1 call): the same graph
    # without keep masks, so no masking inside its attention calls (ONNX Runtime's derived graph)
    "sac_unpadded": StageSpec(
        inputs=(TensorSpec("target_patches", F32, ("batch", "four_k", "px")), TensorSpec("target_idx", I64, ("batch", "k")),
                TensorSpec("nontarget_idx", I64, ("batch", "rest")), TensorSpec("ee_final", F32, _FEAT),
                TensorSpec("ee_hidden", F32, _FEAT)),
        outputs=(TensorSpec("sac_logits", F32, ("batch", "classes")),)),
    # one batch-1 frame in one call (ONNX Runtime's derived graph, export/frame.py): EE stage, exit gate at
    # `eta`, split (or `force_k` targets when > 0), crop and the SAC stage inside an If; probs are the
    # final answer's; counts and target_mask are 0 / False where the frame exited
    "frame": StageSpec(
        inputs=(TensorSpec("image", F32, ("batch", "c", "h", "w")), TensorSpec("eta", F32, ()),
                TensorSpec("force_k", I64, ())),
        outputs=(TensorSpec("probs", F32, ("batch", "classes")), TensorSpec("ee_probs", F32, ("batch", "classes")),
                 TensorSpec("exited", BOOL, ("batch",)), TensorSpec("counts", I64, ("batch",)),
                 TensorSpec("raw_counts", I64, ("batch",)), TensorSpec("target_mask", BOOL, ("batch", "n")))),
    # the device half of the SAC-input builder: a group's rows and their target patches
    "crop": StageSpec(
        inputs=(TensorSpec("image", F32, ("batch", "c", "h", "w")), TensorSpec("ee_final", F32, _FEAT),
                TensorSpec("ee_hidden", F32, _FEAT), TensorSpec("rows", I64, ("group",)),
                TensorSpec("target_idx", I64, ("group", "k"))),
        outputs=(TensorSpec("target_patches", F32, ("group", "four_k", "px")),
                 TensorSpec("group_final", F32, ("group", "n", "d")), TensorSpec("group_hidden", F32, ("group", "n", "d")))),
}
SAC_FEEDS = tuple(STAGES["sac"].input_names)  # the order the SAC graph (and forward_sac) takes them
UNPADDED_SAC_FEEDS = tuple(STAGES["sac_unpadded"].input_names)  # SAC_FEEDS less the keep masks


_ONNX_DIM_NAMES = {"rest": "n_rest"}  # the symbolic dimension names the exported graphs carry


def dynamic_axes(stage: str) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes for a stage: every dynamic symbol, by tensor and axis."""
    spec = STAGES[stage]
    return {t.name: {axis: _ONNX_DIM_NAMES.get(sym, sym) for axis, sym in enumerate(t.shape) if sym in DYNAMIC}
            for t in (*spec.inputs, *spec.outputs)}


def dimensions(config) -> dict[str, int]:
    """The static symbols' values for a model (a ModelConfig)."""
    return {"c": config.in_chans, "h": config.img_size, "w": config.img_size, "n": config.num_coarse,
            "d": config.embed_dim, "px": config.in_chans * config.patch_size**2, "classes": config.num_classes}


def _static(dim: object) -> int | None:
    """An engine's declared dimension as a number, or None when it is dynamic (a name, -1, ?)."""
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and int(dim) >= 0:
        return int(dim)
    return None


def check_engine(stage: str, where: str, declared: Mapping[str, tuple[bool, np.dtype, Iterable[object] | None]],
                 dims: Mapping[str, int] | None = None) -> None:
    """Refuse an engine whose tensors differ from the contract, naming the file and every difference.

    Args:
        stage: "ee", "sac", "sac_unpadded", "frame" or "crop".
        where: the engine file (or what stands for it) named in the error.
        declared: name -> (is_input, dtype, shape or None) as the backend reads them from the engine.
        dims: the model's static dimensions (`dimensions`); None skips the shape check.
    Raises:
        BackendError: names, directions, dtypes or static dimensions differ.
    """
    spec = STAGES[stage].tensors()
    problems = []
    missing, extra = sorted(set(spec) - set(declared)), sorted(set(declared) - set(spec))
    if missing or extra:
        problems.append(f"tensors missing {missing or 'none'}, unexpected {extra or 'none'}")
    for name in sorted(set(spec) & set(declared)):
        is_input, want = spec[name]
        got_input, got_dtype, got_shape = declared[name]
        if got_input != is_input:
            problems.append(f"{name} should be an {'input' if is_input else 'output'}")
        if np.dtype(got_dtype) != want.dtype:
            problems.append(f"{name} is {np.dtype(got_dtype)}, the pipeline feeds {want.dtype}")
        if dims is not None and got_shape is not None:
            got = list(got_shape)
            if len(got) != len(want.shape):
                problems.append(f"{name} has {len(got)} dimensions, the contract {len(want.shape)} {want.shape}")
                continue
            for axis, (g, symbol) in enumerate(zip(got, want.shape)):
                value = _static(g)
                if symbol not in DYNAMIC and value is not None and value != dims[symbol]:
                    problems.append(f"{name} axis {axis} ({symbol}) is {value}, the model needs {dims[symbol]}")
    if problems:
        raise BackendError(f"{where}: not the {stage} engine this export's model needs ({'; '.join(problems)}); "
                           "re-export (or rebuild the engine)")
