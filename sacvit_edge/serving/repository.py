"""An export directory -> a Triton model repository (`sacvit-edge export-triton`, `serve`).

Layout for model name `sacvit`:

    repo/sacvit-edge-repository.json   what wrote it, from which export (replacing needs it)
    repo/sacvit/config.pbtxt           the BLS model (Python backend): what clients call
    repo/sacvit/1/model.py             -> sacvit_edge.serving.models.ClassifierModel
    repo/sacvit/1/export/              the export directory (manifest, engines: hard links)
    repo/sacvit_ee/config.pbtxt        the EE engine: Triton's onnxruntime backend, or the Python backend
    repo/sacvit_ee/1/model.onnx        (+ model.py -> StageModel on the Python backend)
    repo/sacvit_sac/...                the SAC engine, its token axes dynamic

The configs are built as Triton's own `ModelConfig` protobuf (the one tritonclient ships) and
written in its text format, so a field Triton does not know cannot be written. The stage
models' tensors are the engine I/O contract's (engine_io.STAGES); their batch axis is Triton's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sacvit_edge.atomic import check_replaceable, move_into_place, remove_temporary, temporary_dir
from sacvit_edge.engine_io import DYNAMIC, STAGES, dimensions
from sacvit_edge.errors import ConfigError, ExportError
from sacvit_edge.extras import require_extra
from sacvit_edge.gate import validate_deadline, validate_eta
from sacvit_edge.images import DEFAULT_MAX_PIXELS
from sacvit_edge.manifest import CALIBRATION_FILE, MANIFEST, PRECISIONS, Manifest, read_manifest, sha256_file
from sacvit_edge.version import __version__

log = logging.getLogger(__name__)

MARKER = "sacvit-edge-repository.json"
MARKER_FORMAT = "sacvit-edge-triton-repository"
STAGE_BACKENDS = ("python", "onnxruntime", "tensorrt", "inline")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TRITON_DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}

# what the BLS model answers, per image: name -> (Triton type, dims; "k" = the top-k count)
OUTPUTS: dict[str, tuple[str, tuple[int | str, ...]]] = {
    "class_id": ("TYPE_INT32", (1,)), "label": ("TYPE_STRING", (1,)), "confidence": ("TYPE_FP32", (1,)),
    "exited_early": ("TYPE_BOOL", (1,)), "num_target_tokens": ("TYPE_INT32", (1,)),
    "topk_class_ids": ("TYPE_INT32", ("k",)), "topk_probs": ("TYPE_FP32", ("k",)),
}
# what it takes: one encoded image file per item, or (for camera clients) a decoded frame
INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {"image": ("TYPE_STRING", (1,)), "frame": ("TYPE_UINT8", (-1, -1, 3))}

MODEL_PY = '''# Written by sacvit-edge {version} (export-triton): {role}.
# Triton's Python backend loads this file; the model is sacvit-edge's, so the server's Python
# environment needs `pip install sacvit-edge` (the core install: NumPy, ONNX Runtime, Pillow).
from sacvit_edge.serving.models import {cls} as TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class ServingOptions:
    """How the repository serves: names, batching, instances, the classifier's settings.

    model_name: what clients call; the stage models are `<name>_ee` and `<name>_sac`.
    max_batch: the most images Triton's dynamic batcher puts into one execution.
    max_queue_delay_us: how long the batcher may hold a request to fill a batch.
    instances: model instances (processes on the Python backend) per model.
    stage_backend: where the EE and SAC engines run. "python": models of their own, ONNX Runtime
        inside Triton's Python backend (any tritonserver, the one PyTriton bundles included);
        "onnxruntime": models of their own on Triton's onnxruntime backend; "tensorrt": models of
        their own on Triton's tensorrt backend, from the TensorRT engines `build-engine` made for
        this export (the bare plans, without sacvit-edge's header); "inline": no stage
        models, the BLS model runs both engines itself with ONNX Runtime (no hop between
        processes per stage: the fastest on a CPU server, see docs/serving.md).
    eta / deadline_ms / topk / max_pixels / precision: as EdgeClassifier's (eta None: the export's).
    threads: ONNX Runtime intra-op threads per Python stage instance (None: ONNX Runtime's default).
    """

    model_name: str = "sacvit"
    max_batch: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1
    stage_backend: str = "python"
    eta: float | None = None
    deadline_ms: float | None = None
    topk: int = 5
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision: str = "fp32"
    threads: int | None = None

    def checked(self, manifest: Manifest) -> "ServingOptions":
        """Every option against the export, before anything is written; a ConfigError names it."""
        if not isinstance(self.model_name, str) or not _NAME.match(self.model_name):
            raise ConfigError(f"--model-name {self.model_name!r}: letters, digits, '_', '.', '-' (at most 64), "
                              "starting with a letter or digit")
        for option, value, low, high in (("--max-batch", self.max_batch, 1, manifest.batch_range[1]),
                                         ("--max-queue-delay-us", self.max_queue_delay_us, 0, 10_000_000),
                                         ("--instances", self.instances, 1, 64), ("--topk", self.topk, 1, 1000),
                                         ("--max-pixels", self.max_pixels, 1, 2**40)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                why = " (the engines' largest batch)" if option == "--max-batch" else ""
                raise ConfigError(f"{option} {value!r}: expected an integer in [{low}, {high}]{why}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"--threads {self.threads!r}: expected a positive integer")
        if self.stage_backend not in STAGE_BACKENDS:
            raise ConfigError(f"--backend {self.stage_backend!r}: expected one of {list(STAGE_BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: expected one of {list(PRECISIONS)}")
        manifest.engine_files(self.precision)  # a ConfigError naming how to make them where they are missing
        if manifest.config.arch != "sacvit":
            raise ConfigError(f"{manifest.directory}: exported from a {manifest.config.arch} model, not SAC-ViT")
        eta = validate_eta(self.eta if self.eta is not None else manifest.default_eta(self.precision))
        deadline = None if self.deadline_ms is None else validate_deadline(self.deadline_ms)
        if deadline is not None and manifest.latency(self.precision) is None:
            raise ConfigError(f"--deadline-ms needs the stage latencies of this device: run `sacvit-edge calibrate "
                              f"{manifest.directory}` first")
        return ServingOptions(**{**asdict(self), "eta": float(eta), "deadline_ms": deadline,
                                 "topk": min(self.topk, len(manifest.class_names))})


@dataclass(frozen=True)
class Repository:
    """A model repository this module wrote: where, which models, which export."""

    path: Path
    options: ServingOptions
    fingerprint: str

    @property
    def models(self) -> list[str]:
        return model_names(self.options)


def model_names(options: ServingOptions) -> list[str]:
    """The repository's models: the one clients call first."""
    name = options.model_name
    return [name] if options.stage_backend == "inline" else [name, f"{name}_ee", f"{name}_sac"]


def _config(**fields):
    """A Triton ModelConfig message (the protobuf tritonclient ships)."""
    from tritonclient.grpc import model_config_pb2 as mc

    return mc, mc.ModelConfig(**fields)


def _tensor(mc, cls, name: str, dtype: str, dims, **extra):
    return cls(name=name, data_type=mc.DataType.Value(dtype), dims=list(dims), **extra)


def _params(mc, values: dict[str, object]) -> dict:
    return {k: mc.ModelParameter(string_value=str(v)) for k, v in values.items() if v is not None}


def stage_config(manifest: Manifest, stage: str, options: ServingOptions, sha256: str | None):
    """The EE or SAC engine as a Triton model: the engine I/O contract's tensors without the
    batch axis (Triton's), static dimensions from the model, dynamic ones -1."""
    dims = dimensions(manifest.config)
    spec = STAGES[stage]

    def shape(t) -> list[int]:
        assert t.shape[0] == "batch", t  # every ee / sac tensor is batched on axis 0 (engine_io)
        return [-1 if s in DYNAMIC else dims[s] for s in t.shape[1:]]

    python = options.stage_backend == "python"
    mc, cfg = _config(name=f"{options.model_name}_{stage}", backend=options.stage_backend,
                      max_batch_size=options.max_batch)
    cfg.input.extend(_tensor(mc, mc.ModelInput, t.name, _TRITON_DTYPES[t.dtype.name], shape(t)) for t in spec.inputs)
    cfg.output.extend(_tensor(mc, mc.ModelOutput, t.name, _TRITON_DTYPES[t.dtype.name], shape(t)) for t in spec.outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = cfg.instance_group.add(count=options.instances)
    if python:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        for k, v in _params(mc, {"stage": stage, "sha256": sha256, "threads": options.threads,
                                 "dimensions": json.dumps(dims)}).items():
            cfg.parameters[k].CopyFrom(v)
    elif options.stage_backend == "tensorrt":
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        cfg.platform, cfg.default_model_filename = "tensorrt_plan", "model.plan"
    else:
        cfg.default_model_filename = "model.onnx"
    return cfg


def classifier_config(manifest: Manifest, options: ServingOptions):
    """The BLS model clients call: images in, the classifier's answer out."""
    mc, cfg = _config(name=options.model_name, backend="python", max_batch_size=options.max_batch)
    for name, (dtype, dims) in INPUTS.items():
        cfg.input.append(_tensor(mc, mc.ModelInput, name, dtype, dims, optional=True))
    for name, (dtype, dims) in OUTPUTS.items():
        cfg.output.append(_tensor(mc, mc.ModelOutput, name, dtype, [options.topk if d == "k" else d for d in dims]))
    cfg.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    cfg.instance_group.add(count=options.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    name = options.model_name
    inline = options.stage_backend == "inline"
    for k, v in _params(mc, {"engines": "inline" if inline else "models",
                             "ee_model": None if inline else f"{name}_ee", "sac_model": None if inline else f"{name}_sac",
                             "threads": options.threads if inline else None, "eta": options.eta,
                             "deadline_ms": options.deadline_ms, "topk": options.topk, "max_pixels": options.max_pixels,
                             "precision": options.precision, "export": "export"}).items():
        cfg.parameters[k].CopyFrom(v)
    return cfg


def _write_config(model_dir: Path, cfg) -> None:
    from google.protobuf import text_format

    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(cfg))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows it (no second copy of the weights), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _written(path: Path) -> set[str]:
    """The entries of a repository this module wrote (its marker's models): a model directory
    the user added beside them is carried into the replacement."""
    try:
        data = json.loads((path / MARKER).read_text())
        return {MARKER, *data.get("models", [])}
    except (OSError, ValueError, AttributeError):
        return {MARKER}


def is_repository(path: Path) -> bool:
    """Whether `path` is a model repository this module wrote (its marker names the format)."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MARKER_FORMAT


def build_repository(export_dir: str | Path, out: str | Path, options: ServingOptions = ServingOptions()) -> Repository:
    """Write the model repository for an export directory (atomically: `out` is replaced in one
    step, and only if it is new, empty, or a repository this function wrote).

    Raises:
        ExportError: the export is unusable, or `out` holds what sacvit-edge did not write.
        ConfigError: an option does not fit the export.
        MissingExtraError: tritonclient (the [serve] extra) is not installed.
    """
    require_extra("serve", "a Triton model repository")
    export_dir, out = Path(export_dir), Path(out)
    manifest = read_manifest(export_dir)
    options = options.checked(manifest)
    _publish(out, (export_dir,), lambda tmp: _fill(tmp, manifest, options))
    log.info("model repository %s: models %s from %s", out, ", ".join(model_names(options)), export_dir)
    return Repository(out, options, manifest.fingerprint)


def _publish(out: Path, sources: tuple[Path, ...], fill) -> None:
    """fill(tmp) a temporary sibling of `out`, then swap it into place (atomic.py), where `out`
    is new, empty or a repository this module wrote; a model directory the user added is kept."""
    kind = "a Triton model repository"
    check_replaceable(out, sources=sources, option="-o", recognise=is_repository, kind=kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_dir(out, "tmp")
    try:
        fill(tmp)
        check_replaceable(out, sources=sources, option="-o", recognise=is_repository, kind=kind)
        move_into_place(tmp, out, _written)
    except BaseException:
        remove_temporary(tmp)
        raise


def _write_marker(root: Path, models: list[str], options: ServingOptions, **about) -> None:
    (root / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "version": 1, "written_by": f"sacvit-edge {__version__}",
                                           **about, "models": models, "options": asdict(options)}, indent=2))


def _fill(root: Path, manifest: Manifest, options: ServingOptions) -> None:
    name = options.model_name
    bls = root / name / "1"
    (bls / "export").mkdir(parents=True)
    for file in (MANIFEST, *manifest.files):  # the whole export, so the BLS model checks it as EdgeClassifier does
        if (manifest.directory / file).is_file():
            _link_or_copy(manifest.directory / file, bls / "export" / file)
    if CALIBRATION_FILE not in manifest.files and (manifest.directory / CALIBRATION_FILE).is_file():
        _link_or_copy(manifest.directory / CALIBRATION_FILE, bls / "export" / CALIBRATION_FILE)
    (bls / "model.py").write_text(MODEL_PY.format(version=__version__, role="the classifier (BLS)", cls="ClassifierModel"))
    _write_config(root / name, classifier_config(manifest, options))
    # ONNX Runtime inside the Python backend runs the graphs EdgeClassifier's onnxruntime backend
    # runs (the ONNX Attention ones, fp32); Triton's own onnxruntime backend gets the opset-17
    # graphs, which any ONNX Runtime it ships can run
    if options.stage_backend == "inline":
        files: tuple[str, ...] = ()
    elif options.stage_backend == "tensorrt":
        files = tuple(tensorrt_engine(manifest, stage, options.precision) for stage in ("ee", "sac"))
    else:
        files = manifest.engine_files(options.precision, attention_op=options.stage_backend == "python")
    for stage, file in zip(("ee", "sac"), files):
        version = root / f"{name}_{stage}" / "1"
        version.mkdir(parents=True)
        if options.stage_backend == "tensorrt":  # Triton's TensorRT backend loads the bare plan
            from sacvit_edge.runtimes.trt import read_plan

            (version / "model.plan").write_bytes(read_plan(manifest.path(file)))
        else:
            _link_or_copy(manifest.path(file), version / "model.onnx")
        if options.stage_backend == "python":
            (version / "model.py").write_text(MODEL_PY.format(version=__version__, role=f"the {stage} engine",
                                                              cls="StageModel"))
        sha256 = sha256_file(manifest.path(file)) if options.stage_backend == "python" else None  # what StageModel checks
        _write_config(root / f"{name}_{stage}", stage_config(manifest, stage, options, sha256))
    _write_marker(root, model_names(options), options, export=str(manifest.directory.resolve()),
                  fingerprint=manifest.fingerprint,
                  tensorrt_engines=[{"file": r.file, "stage": r.stage, "tensorrt": r.tensorrt, "gpu": r.gpu}
                                    for r in manifest.derived.tensorrt_engines if r.file in files])


def tensorrt_engine(manifest: Manifest, stage: str, precision: str) -> str:
    """The export's one TensorRT engine of a stage and precision (checked against its header),
    for Triton's tensorrt backend, which loads one plan per model."""
    from sacvit_edge.runtimes.trt import engine_header

    records = [r for r in manifest.derived.tensorrt_engines if r.stage == stage and r.precision == precision]
    if not records:
        raise ConfigError(f"{manifest.directory}: no {precision} TensorRT engine of the {stage} stage; build them on a GPU "
                          f"of the kind Triton runs on: `sacvit-edge build-engine {manifest.directory} --precision "
                          f"{precision}`")
    if len(records) > 1:
        raise ConfigError(f"{manifest.directory}: {len(records)} {precision} TensorRT engines of the {stage} stage (GPUs "
                          f"{sorted(r.gpu for r in records)}); Triton's tensorrt backend loads one: export-triton from an "
                          "export whose engines were built for the GPU the server runs on")
    record = records[0]
    if engine_header(manifest.path(record.file)).get("key") != record.key:
        raise ExportError(f"{manifest.path(record.file)}: its header does not match the manifest's record; rebuild it")
    log.info("%s: TensorRT %s engine for %s; Triton's tensorrt backend must ship TensorRT %s", record.file, precision,
             record.gpu, record.tensorrt)
    return record.file


def read_repository(path: str | Path) -> Repository:
    """A repository this module wrote (its options and export fingerprint), for serve and serve-bench."""
    path = Path(path)
    if not is_repository(path):
        raise ExportError(f"{path}: not a model repository written by sacvit-edge export-triton ({MARKER} missing "
                          "or unreadable)")
    data = json.loads((path / MARKER).read_text())
    try:
        options = ServingOptions(**data["options"])
    except TypeError as exc:
        raise ExportError(f"{path / MARKER}: written by another sacvit-edge version ({exc}); rebuild the repository") from exc
    return Repository(path, options, str(data.get("fingerprint", "")))


def build_baseline_repository(graph: str | Path, out: str | Path, like: Manifest,
                              options: ServingOptions = ServingOptions(), model_name: str = "deit") -> Repository:
    """A one-model repository for a one-graph classifier (image -> logits; the DeiT baseline of
    `serve-bench`): the same inputs, outputs, batching and instances as the SAC-ViT repository,
    the input size, normalisation and class names of the export `like`."""
    require_extra("serve", "a Triton model repository")
    out = Path(out)
    options = replace(options.checked(like), model_name=model_name)

    def fill(tmp: Path) -> None:
        version = tmp / model_name / "1"
        version.mkdir(parents=True)
        _link_or_copy(Path(graph), version / "model.onnx")
        (version / "model.py").write_text(MODEL_PY.format(version=__version__, role="a one-graph baseline",
                                                          cls="BaselineModel"))
        cfg = classifier_config(like, options)
        for key in ("engines", "ee_model", "sac_model", "eta", "export", "precision"):
            cfg.parameters.pop(key, None)
        mc = _config()[0]
        for k, v in _params(mc, {"size": like.size, "mean": json.dumps(list(like.mean)), "std": json.dumps(list(like.std)),
                                 "class_names": json.dumps(like.class_names)}).items():
            cfg.parameters[k].CopyFrom(v)
        _write_config(tmp / model_name, cfg)
        _write_marker(tmp, [model_name], options, baseline_graph=str(Path(graph).resolve()))

    _publish(out, (), fill)
    return Repository(out, options, "")
