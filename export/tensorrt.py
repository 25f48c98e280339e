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
from pathlib import Path
from typing import Callable

from sacvit_edge.errors import EngineBuildError
# the engine contract the backend checks at load (keys, headers, recipes, profiles) lives with it
from sacvit_edge.runtimes.trt import (FP16_MODES, STAGES, TRT_DOCS, BuildRecipe, EngineKey, build_recipe,  # noqa: F401
                                      load_api, profile_shapes, python_logger, write_engine)

log = logging.getLogger(__name__)

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
    logger = python_logger(trt)
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
    for _ in range(recipe.profiles):  # identical profiles, one per execution context in use (runtimes.trt.PROFILES)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            try:
                profile.set_shape(name, lo, opt, hi)
            except ValueError as exc:  # the real binding's answer to inconsistent shapes
                raise EngineBuildError(f"{onnx_path.name}: TensorRT refused the optimisation profile of {name} "
                                       f"(min {lo}, opt {opt}, max {hi}): {exc}") from None
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
