"""ONNX -> TensorRT engines, built ahead on the device that runs them (`sacvit-edge build-engine`).

Installed as `sacvit_edge.export.tensorrt`. Torch-free: a Jetson with JetPack's TensorRT,
cuda-python and onnx builds here. Three engines per precision: ee, crop (the device half of the
SAC-input builder, export/graphs.py) and sac. Each is written as `{stage}.{precision}.{key}.engine`
(runtimes/trt.py: a JSON header naming what it was built with and for, then the plan), keyed by
(ONNX sha256, TensorRT version, GPU name and compute capability, precision, profile, recipe), and
recorded in the manifest's `derived.tensorrt_engines`.

Which TensorRT gets which network (build_recipe):
- 11.x: strongly typed networks only; BuilderFlag.FP16 / INT8 are gone. Reduced precision comes
  from the graph: ee.fp16.onnx / sac.fp16.onnx (export/graphs.fp16_graph) or the Q/DQ int8 graphs of
  `calibrate --int8`. https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html
- 10.x (JetPack 6 ships 10.3): the same strongly typed graphs (NetworkDefinitionCreationFlag.STRONGLY_TYPED,
  available since 9.x), so one artifact behaves alike on both. fp16_mode="flag" is the named
  alternative that exists only here: the fp32 graph, weakly typed, with BuilderFlag.FP16, where
  TensorRT picks fp16 kernels per layer itself. https://docs.nvidia.com/deeplearning/tensorrt/10.3.0/inference-library/work-with-strongly-typed-networks.html
- older than 10: refused (the backend uses the name-based tensor API of 10).
TF32 is switched off where the flag exists, so fp32 engines are fp32 (parity <= 1e-3 with PyTorch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sacvit_edge.errors import EngineBuildError

log = logging.getLogger(__name__)

STAGES = ("ee", "crop", "sac")
FP16_MODES = ("graph", "flag")
TRT_DOCS = "https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html"


@dataclass(frozen=True)
class BuildRecipe:
    """How one TensorRT version builds one precision.

    Attributes:
        major: TensorRT major version.
        strongly_typed: create the network with the STRONGLY_TYPED flag (types from the graph).
        network_flags: NetworkDefinitionCreationFlag names to set (empty: create_network(0)).
        builder_flags: BuilderFlag names to set.
        graph_precision: which graph pair to parse (fp32, fp16 or int8).
    """

    major: int
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    graph_precision: str

    def to_dict(self) -> dict:
        return {"major": self.major, "strongly_typed": self.strongly_typed, "network_flags": list(self.network_flags),
                "builder_flags": list(self.builder_flags), "graph_precision": self.graph_precision}


def build_recipe(version: str, precision: str, fp16_mode: str = "graph") -> BuildRecipe:
    """The network typing and builder flags for a TensorRT version and a precision (see module doc)."""
    if fp16_mode not in FP16_MODES:
        raise EngineBuildError(f"fp16_mode={fp16_mode!r}: expected one of {list(FP16_MODES)}")
    try:
        major = int(str(version).split(".")[0])
    except ValueError as exc:
        raise EngineBuildError(f"cannot read the TensorRT version {version!r}") from exc
    if major < 10:
        raise EngineBuildError(f"TensorRT {version} is too old: sacvit-edge needs TensorRT 10 or 11 "
                               "(JetPack 6 ships 10.3; pip install 'sacvit-edge[tensorrt]' on a desktop GPU)")
    if major >= 11:  # strong typing always on; precision flags removed (TRT_DOCS)
        if fp16_mode == "flag" and precision == "fp16":
            raise EngineBuildError(f"fp16_mode='flag' needs TensorRT 10: TensorRT {version} removed BuilderFlag.FP16 "
                                   f"and builds strongly typed networks only ({TRT_DOCS}); use the fp16 graph "
                                   "(fp16_mode='graph', the default)")
        return BuildRecipe(major, True, (), (), precision)
    if fp16_mode == "flag" and precision == "fp16":  # 10.x only: weak typing with the FP16 flag
        return BuildRecipe(major, False, (), ("FP16",), "fp32")
    return BuildRecipe(major, True, ("STRONGLY_TYPED",), (), precision)


def profile_shapes(manifest, stage: str, batch_opt: int = 1) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input of a stage's engine: slots' buffers are sized from the
    max. batch_opt defaults to 1, the camera case; k's opt is the middle of the range."""
    cfg = manifest.config
    b_lo, b_hi = manifest.batch_range
    b_opt = max(b_lo, min(batch_opt, b_hi))
    bs = (b_lo, b_opt, b_hi)
    img = tuple((b, cfg.in_chans, cfg.img_size, cfg.img_size) for b in bs)
    n, d = cfg.num_coarse, cfg.embed_dim
    feat = tuple((b, n, d) for b in bs)
    k_lo, k_hi = manifest.k_range
    k_opt = (k_lo + k_hi) // 2
    ks = (k_lo, k_opt, k_hi)
    if stage == "ee":
        return {"image": img}
    if stage == "crop":
        return {"image": img, "ee_final": feat, "ee_hidden": feat, "rows": tuple((b,) for b in bs),
                "target_idx": tuple(zip(bs, ks))}
    if stage != "sac":
        raise EngineBuildError(f"unknown engine stage {stage!r}; expected one of {list(STAGES)}")
    px = cfg.in_chans * cfg.patch_size**2
    rest = (n - k_hi, n - k_opt, n - k_lo)  # a group padded from k_lo to k_hi keeps n - k_lo non-targets
    return {"target_patches": tuple((b, 4 * k, px) for b, k in zip(bs, ks)),
            "target_idx": tuple(zip(bs, ks)), "target_keep": tuple(zip(bs, ks)),
            "nontarget_idx": tuple(zip(bs, rest)), "nontarget_keep": tuple(zip(bs, rest)),
            "ee_final": feat, "ee_hidden": feat}


def _python_logger(trt):
    """A trt.ILogger that sends TensorRT's messages to Python logging (logger sacvit_edge.tensorrt)."""
    trt_log = logging.getLogger("sacvit_edge.tensorrt")
    levels = {trt.Logger.INTERNAL_ERROR: logging.CRITICAL, trt.Logger.ERROR: logging.ERROR,
              trt.Logger.WARNING: logging.WARNING, trt.Logger.INFO: logging.INFO, trt.Logger.VERBOSE: logging.DEBUG}

    class PythonLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: A003 - TensorRT's method name
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(str(msg))
            trt_log.log(level, "%s", msg)

    return PythonLogger()


def _progress_monitor(trt, progress: Callable[[str, int, int], None]):
    """A trt.IProgressMonitor (TensorRT >= 10) feeding progress(phase, step, steps); None before."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            self.steps[phase_name] = num_steps
            progress(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step) -> bool:
            progress(phase_name, step + 1, self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name) -> None:
            progress(phase_name, self.steps.get(phase_name, 0), self.steps.get(phase_name, 0))

    return Monitor()


def build_plan(trt, onnx_path: Path, shapes: dict, recipe: BuildRecipe, workspace_gib: float,
               progress: Callable[[str, int, int], None] | None = None) -> bytes:
    """Parse one ONNX graph and build a serialized plan with one optimisation profile."""
    logger = _python_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in recipe.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for name in recipe.builder_flags:
        if not hasattr(trt.BuilderFlag, name):  # guarded by build_recipe; a safety net for odd builds
            raise EngineBuildError(f"this TensorRT ({trt.__version__}) has no BuilderFlag.{name} ({TRT_DOCS})")
        config.set_flag(getattr(trt.BuilderFlag, name))
    if progress is not None:
        monitor = _progress_monitor(trt, progress)
        if monitor is not None:
            config.progress_monitor = monitor
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        detail = "; ".join(logger.errors[-3:]) or "see the TensorRT log"
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path.name}: {detail}. If the build "
                               "ran out of memory (a Jetson kills it), lower --workspace")
    return bytes(blob)


def build_engines(manifest, precision: str = "fp32", *, workspace_gib: float = 1.0, batch_opt: int = 1,
                  fp16_mode: str = "graph", api=None, progress: Callable[[str, str, int, int], None] | None = None):
    """Build the ee, crop and sac engines of one precision for the GPU here, add them to the export
    directory and its manifest; returns the updated manifest. Engines already there under this
    machine's key are kept (not rebuilt).

    Raises:
        EngineBuildError / BackendError / ExportError: no TensorRT or GPU, an unreadable graph, a
            failed build, a read-only directory (named, with what to do).
    """
    from sacvit_edge.atomic import add_derived_files, scratch_file, writable_dir
    from sacvit_edge.manifest import PRECISIONS, read_manifest
    from sacvit_edge.runtimes.trt import EngineKey, load_api, write_engine

    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
    if not 0.0625 <= workspace_gib <= 1024:
        raise EngineBuildError(f"workspace {workspace_gib} GiB: expected 0.0625 .. 1024")
    api = api or load_api()
    recipe = build_recipe(api.trt.__version__, precision, fp16_mode)
    writable_dir(manifest.directory, "TensorRT engines")
    manifest = _graphs_for(manifest, recipe.graph_precision)
    gpu = api.cuda.properties()
    for stage in STAGES:
        onnx_name = manifest.derived.crop if stage == "crop" else \
            manifest.engine_files(recipe.graph_precision)[0 if stage == "ee" else 1]
        stage_precision = "fp32" if stage == "crop" else precision  # the crop moves floats; no arithmetic
        shapes = profile_shapes(manifest, stage, batch_opt)
        key = EngineKey.for_build(manifest, onnx_name, api.trt.__version__, gpu, stage_precision, shapes, recipe)
        if any(r.key == key.digest and r.stage == stage for r in manifest.derived.tensorrt_engines):
            log.info("%s: %s engine for this GPU and TensorRT already built (%s)", manifest.directory, stage, key.file_name(stage))
            continue
        log.info("building the %s %s engine from %s (%s); minutes on a Jetson", stage, stage_precision, onnx_name,
                 "strongly typed" if recipe.strongly_typed else f"flags {recipe.builder_flags}")
        plan = build_plan(api.trt, manifest.path(onnx_name), shapes, recipe, workspace_gib,
                          None if progress is None else (lambda phase, step, steps, s=stage: progress(s, phase, step, steps)))
        name = key.file_name(stage)
        tmp = scratch_file(manifest.directory, name)
        write_engine(tmp, key.header(stage), plan)
        record = {"file": name, "stage": stage, "precision": stage_precision, "key": key.digest, **key.fields_for_manifest()}
        add_derived_files(manifest.directory, {name: tmp}, lambda d, r=record: _add_record(d, r))
        manifest = read_manifest(manifest.directory)
    return manifest


def _add_record(derived: dict, record: dict) -> None:
    engines = [e for e in derived.get("tensorrt_engines", []) if e.get("file") != record["file"]]
    derived["tensorrt_engines"] = [*engines, record]


def _graphs_for(manifest, graph_precision: str):
    """Make sure the graphs the recipe parses (and crop.onnx) exist; derive them where they can be."""
    from sacvit_edge.export.graphs import ensure_crop_graph, ensure_fp16_graphs

    manifest = ensure_crop_graph(manifest)
    if graph_precision == "fp16":
        manifest = ensure_fp16_graphs(manifest)
    manifest.engine_files(graph_precision)  # int8: a ConfigError naming `calibrate --int8` when absent
    return manifest
