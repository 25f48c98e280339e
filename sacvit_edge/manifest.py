"""The export manifest: what an export directory holds and how to feed its engines.

Torch-free on purpose: the deployment path (EdgeClassifier, the runtimes) reads manifests on
devices that have only NumPy and an inference library. `manifest_content` writes it (the
exporter calls it) from the same fields `parse_manifest` reads back: format 4 stores each value
once; format 3, which earlier versions wrote, is still read. Every section is a frozen
dataclass, validated when read: a missing or mistyped field is an ExportError naming the field
and the file, never a KeyError.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, TypeVar

from .config import ModelConfig
from .engine_io import STAGES as ENGINE_IO
from .errors import ConfigError, ExportError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sacvit-edge-export"
MANIFEST_VERSION = 4  # 2: SAC engine takes target patches and keep masks; 3: engines carry the manifest digest;
#                      4: written from this module's schema (manifest_content), every value stored once
READABLE_VERSIONS = (3, 4)  # export directories users already have (format 3) still load
ENGINE_FILES = ("ee.onnx", "sac.onnx")
# the same stages with every attention call one standard ONNX Attention node (opset 23): written by
# export beside ENGINE_FILES and run by ONNX Runtime at fp32; TensorRT, OpenVINO and the fp16 / INT8
# derivations keep to ENGINE_FILES (opset 17, parsed by every version)
ATTENTION_GRAPH_FILES = ("ee.attention.onnx", "sac.attention.onnx")
# written with them: the SAC attention graph without keep masks, for calls whose images share one target
# count (every batch-1 call; engine_io stage "sac_unpadded"); older format-4 exports lack it
UNPADDED_SAC_FILE = "sac.unpadded.attention.onnx"
# and, for the "sac" and "topalpha" selection rules, the batch-1 frame graph composed from the two
# (export/frame.py; engine_io stage "frame"): EE stage, gate, split, crop and SAC stage in one call
FRAME_FILE = "frame.attention.onnx"
ATTENTION_OPSET = 23
CHECKPOINT_FILE = "model.pt"
CALIBRATION_FILE = "calibration.json"  # written by `sacvit-edge calibrate`; listed (hashed) in `files`
CALIBRATION_FORMAT = "sacvit-edge-calibration"
CALIBRATION_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
# files made from an export after the fact (fp16 graphs, the device crop graph, TensorRT engines):
# listed under `derived`, hashed in `files`; both stay out of the content digest, which the
# exported graphs carry and which must not change when a derived file is added
DERIVED = "derived"
CROP_FILE = "crop.onnx"
# metadata keys written into every engine at export and compared with the manifest at load
FINGERPRINT_KEY = "sacvit_edge.checkpoint_fingerprint"
MANIFEST_DIGEST_KEY = "sacvit_edge.manifest_sha256"
STAGE_KEY = "sacvit_edge.stage"


def content_digest(data: dict) -> str:
    """sha256 of the manifest's canonical content, everything but `files` and `derived` (the file
    hashes cover the engines, which in turn carry this digest: an edit of any value is caught at
    load; derived files are checked by their hashes and their own embedded metadata)."""
    body = {k: v for k, v in data.items() if k not in ("files", DERIVED)}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()

T = TypeVar("T")
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few KB


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (engines can be hundreds of MB at paper geometry)."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python >= 3.11
            return hashlib.file_digest(f, "sha256").hexdigest()
        digest = hashlib.sha256()  # pragma: no cover - Python 3.10 (JetPack 6)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


class _Reader:
    """Typed access to one JSON object, with errors that name the file and the dotted field."""

    def __init__(self, data: Any, where: str, source: Path) -> None:
        if not isinstance(data, dict):
            raise ExportError(f"{source}: manifest field {where or '(top level)'!r} must be an object, "
                              f"got {type(data).__name__}")
        self.data, self.where, self.source = data, where, source

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, check: Callable[[Any], bool], what: str) -> Any:
        if key not in self.data:
            raise ExportError(f"{self.source}: manifest lacks {self._name(key)!r}; re-export the checkpoint")
        value = self.data[key]
        if not check(value):
            raise ExportError(f"{self.source}: manifest field {self._name(key)!r} must be {what}, got {value!r}")
        return value

    def section(self, key: str) -> "_Reader":
        return _Reader(self.get(key, lambda v: isinstance(v, dict), "an object"), self._name(key), self.source)

    def int_(self, key: str) -> int:
        return self.get(key, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")

    def str_(self, key: str) -> str:
        return self.get(key, lambda v: isinstance(v, str) and v != "", "a non-empty string")

    def float_(self, key: str) -> float:
        return float(self.get(key, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v), "a finite number"))

    def range_(self, key: str, low: int) -> tuple[int, int]:
        def ok(v: Any) -> bool:
            return (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                    and low <= v[0] <= v[1])
        lo, hi = self.get(key, ok, f"[lo, hi] integers with {low} <= lo <= hi")
        return int(lo), int(hi)

    def floats(self, key: str, n: int, positive: bool = False) -> tuple[float, ...]:
        def ok(v: Any) -> bool:
            return (isinstance(v, list) and len(v) == n
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                            and (x > 0 or not positive) for x in v))
        return tuple(float(x) for x in self.get(key, ok, f"a list of {n} finite{' positive' if positive else ''} numbers"))

    def strings(self, key: str) -> list[str]:
        return list(self.get(key, lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v),
                             "a non-empty list of strings"))


@dataclass(frozen=True)
class InputSpec:
    """How images are fed to the EE engine: square side and per-channel normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW float32 RGB"


@dataclass(frozen=True)
class EngineSpec:
    """One engine file: its I/O names and the shape ranges it accepts."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_range: tuple[int, int]
    k_range: tuple[int, int] | None = None  # SAC engine only: target counts it accepts


@dataclass(frozen=True)
class CostTable:
    """GFLOPs per image, counted at export (so the runtime reports FLOPs without torch).

    Attributes:
        ee: the EE stage. sac: the SAC stage by target count k. full: the same backbone run
        as a plain ViT at full resolution (the DeiT reference).
    """

    ee: float
    sac: dict[int, float]
    full: float

    def to_dict(self) -> dict:
        return {"gflops_ee": self.ee, "gflops_sac": {str(k): v for k, v in sorted(self.sac.items())},
                "gflops_full_resolution": self.full}

    def expected(self, exited: Any, counts: Any) -> float:
        """Mean GFLOPs per image for per-image exit flags and target counts."""
        import numpy as np

        exited = np.asarray(exited, bool)
        live = np.asarray(counts)[~exited]
        return self.ee + float(sum(self.sac[int(k)] for k in live)) / max(len(exited), 1)


@dataclass(frozen=True)
class LatencyTable:
    """Per-call stage latencies measured on one device by `calibrate` (ms), the basis of the
    latency budget and of deadline gating. Between measured batch sizes, linear interpolation.

    Attributes:
        ee: batch size -> EE engine call. host: batch size -> host work of a call (gate,
        split, crop). sac: batch size -> {k -> SAC engine call with every image at k}.
    """

    ee: dict[int, float]
    host: dict[int, float]
    sac: dict[int, dict[int, float]]

    @cached_property
    def _grids(self) -> dict[str, Any]:
        """The tables as sorted (x, y) lists, built once: deadline gating reads them per frame."""
        def grid(table: dict[int, float]) -> tuple[list[int], list[float]]:
            keys = sorted(table)
            return keys, [table[k] for k in keys]

        batches = sorted(self.sac)
        return {"ee": grid(self.ee), "host": grid(self.host), "sac_batches": batches,
                "sac": [grid(self.sac[b]) for b in batches]}

    @staticmethod
    def _interp(x: float, grid: tuple[list, list]) -> float:
        import numpy as np

        return float(np.interp(x, grid[0], grid[1]))

    def ee_ms(self, batch: int) -> float:
        return self._interp(batch, self._grids["ee"])

    def host_ms(self, batch: int) -> float:
        return self._interp(batch, self._grids["host"])

    def sac_ms(self, batch: int, k: float) -> float:
        """One SAC call of `batch` images with (mean) target count k; 0 for no image."""
        if batch <= 0:
            return 0.0
        g = self._grids
        return self._interp(batch, (g["sac_batches"], [self._interp(k, row) for row in g["sac"]]))

    def to_dict(self) -> dict:
        return {"ee_ms": {str(b): v for b, v in self.ee.items()}, "host_ms": {str(b): v for b, v in self.host.items()},
                "sac_ms": {str(b): {str(k): v for k, v in row.items()} for b, row in self.sac.items()}}


@dataclass(frozen=True)
class PrecisionCalibration:
    """One precision's engines and what calibration chose for them."""

    ee_file: str
    sac_file: str
    eta: float
    latency: LatencyTable | None = None


@dataclass(frozen=True)
class Calibration:
    """calibration.json of an export directory (`sacvit-edge calibrate`): the calibrated eta
    and stage latencies per precision, and the report (curve, request, dataset) as written."""

    precisions: dict[str, PrecisionCalibration]
    report: dict


@dataclass(frozen=True)
class TensorRTEngineRecord:
    """One TensorRT engine built from this export: what it was built with and for (the cache key's
    fields; the engine file's own header says the same and is what the runtime checks)."""

    file: str
    stage: str  # "ee", "crop" or "sac"
    precision: str
    key: str
    tensorrt: str
    gpu: str
    compute_capability: str
    profile: dict


@dataclass(frozen=True)
class Derived:
    """The `derived` section: graphs and engines made from the export after the fact."""

    graphs: dict[str, tuple[str, str]] = field(default_factory=dict)  # precision -> (ee, sac) ONNX files
    crop: str | None = None  # crop.onnx, the device backends' SAC-input builder
    tensorrt_engines: tuple[TensorRTEngineRecord, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.json of an export directory."""

    directory: Path
    checkpoint_fingerprint: str
    class_names: list[str]
    input: InputSpec
    eta: float
    config: ModelConfig
    engines: dict[str, EngineSpec]
    files: dict[str, str]  # file name -> sha256
    opset: int | None = None
    exporter: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    cost: CostTable | None = None
    content_sha256: str = ""  # content_digest of the file as read
    calibration: Calibration | None = None  # from calibration.json, when the directory was calibrated
    derived: Derived = field(default_factory=Derived)
    attention_graphs: tuple[str, str] | None = None  # (ee, sac) ATTENTION_GRAPH_FILES when exported
    unpadded_sac: str | None = None  # UNPADDED_SAC_FILE when exported (with the attention graphs)
    frame: str | None = None  # FRAME_FILE when exported (with the attention graphs)

    def engine_problems(self, stage: str, metadata: dict[str, str]) -> list[str]:
        """Why an engine's embedded metadata does not belong to this manifest (empty: it does)."""
        problems = []
        if metadata.get(STAGE_KEY) != stage:
            problems.append(f"it is a {metadata.get(STAGE_KEY)!r} engine, expected {stage!r}")
        if metadata.get(FINGERPRINT_KEY) != self.checkpoint_fingerprint:
            problems.append("it was exported from another checkpoint than the manifest names")
        if metadata.get(MANIFEST_DIGEST_KEY) != self.content_sha256:
            problems.append("the manifest was edited after export, or the engine comes from another export")
        return problems

    # short names the runtime uses everywhere
    @property
    def fingerprint(self) -> str:
        return self.checkpoint_fingerprint

    @property
    def size(self) -> int:
        return self.input.size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.input.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.input.std

    @property
    def k_range(self) -> tuple[int, int]:
        k = self.engines["sac"].k_range
        assert k is not None  # guaranteed by read_manifest
        return k

    @property
    def batch_range(self) -> tuple[int, int]:
        return self.engines["ee"].batch_range

    @property
    def has_checkpoint(self) -> bool:
        """Whether the directory carries model.pt (the PyTorch reference backend runs from it)."""
        return CHECKPOINT_FILE in self.files

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def precisions(self) -> list[str]:
        """The precisions this directory has ONNX graphs for."""
        have = {"fp32", *self.derived.graphs, *(self.calibration.precisions if self.calibration else ())}
        return [p for p in PRECISIONS if p in have]

    def engine_files(self, precision: str = "fp32", attention_op: bool = False) -> tuple[str, str]:
        """(ee, sac) ONNX graphs of a precision: fp32 exported, fp16 derived (`export --precision
        fp16` / `build-engine --precision fp16`), int8 from `calibrate --int8`. With attention_op
        (a runtime that runs the ONNX Attention operator), fp32 is the attention graphs where the
        export has them."""
        if precision == "fp32":
            if attention_op and self.attention_graphs is not None:
                return self.attention_graphs
            return self.engines["ee"].file, self.engines["sac"].file
        if precision in self.derived.graphs:
            return self.derived.graphs[precision]
        if self.calibration is not None and precision in self.calibration.precisions:
            p = self.calibration.precisions[precision]
            return p.ee_file, p.sac_file
        how = (f"`sacvit-edge build-engine {self.directory} --format onnx --precision fp16`" if precision == "fp16"
               else f"`sacvit-edge calibrate {self.directory} --int8`")
        raise ConfigError(f"{self.directory}: no {precision} graphs (has {self.precisions}); make them with {how}")

    def recommended_precision(self) -> str:
        """The precision `calibrate --int8` recommends for this device (faster, and within the
        allowed accuracy drop), else fp32."""
        advice = self.calibration.report.get("precision_advice") if self.calibration is not None else None
        rec = advice.get("recommended") if isinstance(advice, dict) else None
        return rec if rec in self.precisions else "fp32"

    def default_eta(self, precision: str = "fp32") -> float:
        """The calibrated eta of a precision where there is one, else the checkpoint's."""
        if self.calibration is not None and precision in self.calibration.precisions:
            return self.calibration.precisions[precision].eta
        return self.eta

    @property
    def batch1_threads(self) -> int | None:
        """ONNX Runtime's intra-op threads for batch-1 calls, as calibrate measured best here."""
        if self.calibration is None:
            return None
        return (self.calibration.report.get("runtime") or {}).get("onnxruntime_batch1_threads")

    def latency(self, precision: str = "fp32") -> LatencyTable | None:
        if self.calibration is not None and precision in self.calibration.precisions:
            return self.calibration.precisions[precision].latency
        return None


def _plain_name(name: str) -> bool:
    """A file inside the export directory itself: no separators, no '..', nothing hidden."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 255


def _engine(r: _Reader, stage: str) -> EngineSpec:
    e = r.section(stage)
    names = lambda key: tuple(e.strings(key))  # noqa: E731
    file = e.get("file", lambda v: isinstance(v, str) and _plain_name(v), "a plain file name inside the directory")
    return EngineSpec(file=file, inputs=names("inputs"), outputs=names("outputs"),
                      batch_range=e.range_("batch_range", 1), k_range=e.range_("k_range", 1) if stage == "sac" else None)


def manifest_content(*, fingerprint: str, class_names: list[str], mean: tuple[float, ...], std: tuple[float, ...],
                     config: ModelConfig, batch_max: int, cost: CostTable | None, opset: int, exporter: str,
                     versions: dict[str, str], attention_graphs: bool = False, frame_graph: bool = False) -> dict:
    """manifest.json's content (the exporter adds `files`), written from the same fields
    parse_manifest reads back: the schema in one place. Each value is stored once: the exit
    threshold, the input size and the target-count clamp live in model_config (the SAC engine's k
    range is the config's target_range()); the engines' tensor names are engine_io's contract."""
    engines: dict[str, Any] = {"ee": {"file": ENGINE_FILES[0]}, "sac": {"file": ENGINE_FILES[1]}, "batch_max": int(batch_max)}
    if attention_graphs:
        engines["attention_graphs"] = {"ee": ATTENTION_GRAPH_FILES[0], "sac": ATTENTION_GRAPH_FILES[1],
                                       "sac_unpadded": UNPADDED_SAC_FILE, "opset": ATTENTION_OPSET}
        if frame_graph:
            engines["attention_graphs"]["frame"] = FRAME_FILE
    return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "checkpoint_fingerprint": fingerprint,
            "class_names": list(class_names), "input": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
            "model_config": config.to_dict(),
            "engines": engines,
            "cost": None if cost is None else cost.to_dict(), "opset": opset, "exporter": exporter,
            "versions": dict(versions)}


def _engine_v4(r: _Reader, stage: str, config: ModelConfig) -> EngineSpec:
    e = r.section(stage)
    file = e.get("file", lambda v: isinstance(v, str) and _plain_name(v), "a plain file name inside the directory")
    batch_max = r.get("batch_max", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                      "a positive integer")
    contract = ENGINE_IO[stage]
    k_range = (config.target_range() if config.arch == "sacvit" else (0, 0)) if stage == "sac" else None
    return EngineSpec(file=file, inputs=tuple(contract.input_names), outputs=tuple(contract.output_names),
                      batch_range=(1, batch_max), k_range=k_range)


def parse_manifest(data: Any, directory: Path, source: Path | None = None) -> Manifest:
    """Validate a manifest's JSON content (format 4, or 3 as earlier versions wrote it); every
    problem is an ExportError naming the field."""
    source = source or directory / MANIFEST
    r = _Reader(data, "", source)
    if data.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{source}: not a sacvit-edge export manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version not in READABLE_VERSIONS:
        age = "a newer" if isinstance(version, int) and version > MANIFEST_VERSION else "an older"
        raise ExportError(f"{source}: format version {version!r} was written by {age} sacvit-edge; this one reads "
                          f"versions {list(READABLE_VERSIONS)}. Re-export the checkpoint with this version")
    try:
        config = ModelConfig.from_dict(r.get("model_config", lambda v: isinstance(v, dict), "an object"))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ExportError(f"{source}: invalid model_config: {exc}") from exc
    inp = r.section("input")
    size = inp.int_("size") if version == 3 else config.img_size
    spec = InputSpec(size=size, mean=inp.floats("mean", 3), std=inp.floats("std", 3, positive=True),  # type: ignore[arg-type]
                     layout=str(inp.data.get("layout", "NCHW float32 RGB")))
    if spec.size != config.img_size:
        raise ExportError(f"{source}: input.size {spec.size} differs from model_config.img_size {config.img_size}")
    eng = r.section("engines")
    engines = {stage: _engine(eng, stage) if version == 3 else _engine_v4(eng, stage, config) for stage in ("ee", "sac")}
    lo, hi = engines["sac"].k_range or (0, 0)
    if config.arch == "sacvit" and hi >= config.num_coarse:
        raise ExportError(f"{source}: engines.sac.k_range {[lo, hi]} leaves no non-target token of {config.num_coarse}")
    files = r.get("files", lambda v: isinstance(v, dict) and all(isinstance(k, str) and _plain_name(k) and isinstance(h, str)
                                                                   and len(h) == 64 for k, h in v.items()),
                  "an object mapping plain file names (no path) to sha256 hex digests")
    attention_graphs, unpadded_sac, frame = None, None, None
    if version >= 4 and eng.data.get("attention_graphs") is not None:
        a = eng.section("attention_graphs")
        plain = lambda v: isinstance(v, str) and _plain_name(v)  # noqa: E731
        attention_graphs = (a.get("ee", plain, "a plain file name inside the directory"),
                            a.get("sac", plain, "a plain file name inside the directory"))
        if a.data.get("sac_unpadded") is not None:
            unpadded_sac = a.get("sac_unpadded", plain, "a plain file name inside the directory")
        if a.data.get("frame") is not None:
            frame = a.get("frame", plain, "a plain file name inside the directory")
    for file in (*(spec_.file for spec_ in engines.values()), *(attention_graphs or ()),
                 *((unpadded_sac,) if unpadded_sac else ()), *((frame,) if frame else ())):  # all under the integrity check
        if file not in files:
            raise ExportError(f"{source}: files lacks the hash of engine {file!r}; re-export the checkpoint")
    eta = r.float_("eta") if version == 3 else config.eta
    if not 0.0 <= eta <= 1.0:
        raise ExportError(f"{source}: manifest field '{'eta' if version == 3 else 'model_config.eta'}' must be in "
                          f"[0, 1], got {eta}")
    class_names = r.strings("class_names")
    if len(set(class_names)) != len(class_names):
        raise ExportError(f"{source}: manifest field 'class_names' has duplicates")
    if len(class_names) != config.num_classes:
        raise ExportError(f"{source}: {len(class_names)} class_names for a {config.num_classes}-class model")
    versions = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    cost = None
    if data.get("cost") is not None:
        c = r.section("cost")
        table = c.get("gflops_sac", lambda v: isinstance(v, dict) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v.values()),
            "an object mapping target counts to GFLOPs")
        try:
            sac = {int(k): float(v) for k, v in table.items()}
        except ValueError as exc:
            raise ExportError(f"{source}: manifest field 'cost.gflops_sac' has a key that is not a count ({exc})") from exc
        if set(sac) != set(range(lo, hi + 1)):
            raise ExportError(f"{source}: manifest field 'cost.gflops_sac' must cover k = {lo}..{hi}")
        cost = CostTable(ee=c.float_("gflops_ee"), sac=sac, full=c.float_("gflops_full_resolution"))
    derived = _derived(r, files, source) if data.get(DERIVED) is not None else Derived()
    return Manifest(directory=directory, checkpoint_fingerprint=r.str_("checkpoint_fingerprint"), class_names=class_names,
                    input=spec, eta=eta, config=config, engines=engines, files=dict(files),
                    opset=data.get("opset"), exporter=data.get("exporter"), versions={str(k): str(v) for k, v in versions.items()},
                    cost=cost, content_sha256=_digest_or_fail(data, source), derived=derived,
                    attention_graphs=attention_graphs, unpadded_sac=unpadded_sac, frame=frame)


def _derived(r: _Reader, files: dict[str, str], source: Path) -> Derived:
    d = r.section(DERIVED)
    listed = lambda v: isinstance(v, str) and _plain_name(v) and v in files  # noqa: E731

    def file(section: _Reader, key: str) -> str:
        return section.get(key, listed, "a file name listed (hashed) in the manifest's files")

    graphs = {}
    if d.data.get("graphs") is not None:
        g = d.section("graphs")
        for precision in g.data:
            if precision not in ("fp16",):
                raise ExportError(f"{source}: derived.graphs.{precision}: only fp16 graphs are derived here "
                                  "(int8 ones live in calibration.json)")
            graphs[precision] = (file(g.section(precision), "ee"), file(g.section(precision), "sac"))
    crop = file(d, "crop") if d.data.get("crop") is not None else None
    engines = []
    raw = d.data.get("tensorrt_engines") or []
    if not isinstance(raw, list):
        raise ExportError(f"{source}: derived.tensorrt_engines must be a list")
    for i, item in enumerate(raw):
        e = _Reader(item, f"{DERIVED}.tensorrt_engines[{i}]", source)
        stage = e.str_("stage")
        precision = e.str_("precision")
        if stage not in ("ee", "crop", "sac") or precision not in PRECISIONS:
            raise ExportError(f"{source}: derived.tensorrt_engines[{i}]: stage {stage!r} / precision {precision!r} unknown")
        engines.append(TensorRTEngineRecord(file=file(e, "file"), stage=stage, precision=precision, key=e.str_("key"),
                                            tensorrt=e.str_("tensorrt"), gpu=e.str_("gpu"),
                                            compute_capability=e.str_("compute_capability"),
                                            profile=e.get("profile", lambda v: isinstance(v, dict), "an object")))
    return Derived(graphs=graphs, crop=crop, tensorrt_engines=tuple(engines))


def _latency(r: _Reader) -> LatencyTable:
    def table(key: str) -> dict[int, float]:
        raw = r.get(key, lambda v: isinstance(v, dict) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v.values()),
            "a non-empty object mapping integers to non-negative milliseconds")
        try:
            return {int(k): float(v) for k, v in raw.items()}
        except ValueError as exc:
            raise ExportError(f"{r.source}: manifest field {r._name(key)!r} has a key that is not an integer") from exc

    sac_raw = r.get("sac_ms", lambda v: isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()),
                    "an object mapping batch sizes to {k: ms}")
    sac_reader = r.section("sac_ms")
    sac = {}
    for b in sac_raw:
        try:
            sac[int(b)] = _latency_row(sac_reader, b)
        except ValueError as exc:
            raise ExportError(f"{r.source}: manifest field {r._name('sac_ms')!r} has a key that is not an integer") from exc
    return LatencyTable(ee=table("ee_ms"), host=table("host_ms"), sac=sac)


def _latency_row(r: _Reader, key: str) -> dict[int, float]:
    raw = r.get(key, lambda v: isinstance(v, dict) and v and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v.values()),
        "a non-empty object mapping target counts to non-negative milliseconds")
    return {int(k): float(v) for k, v in raw.items()}


def parse_calibration(data: Any, manifest: Manifest, source: Path) -> Calibration:
    """Validate calibration.json against the manifest it calibrates."""
    r = _Reader(data, "", source)
    if data.get("format") != CALIBRATION_FORMAT or data.get("format_version") != CALIBRATION_VERSION:
        raise ExportError(f"{source}: not a sacvit-edge calibration (format {data.get('format')!r}, "
                          f"version {data.get('format_version')!r}; this version reads {CALIBRATION_VERSION})")
    if r.str_("checkpoint_fingerprint") != manifest.checkpoint_fingerprint or r.str_("manifest_sha256") != manifest.content_sha256:
        raise ExportError(f"{source}: calibrated for another export (checkpoint or manifest differ); re-run calibrate")
    ps = r.section("precisions")
    precisions = {}
    for name in ps.data:
        if name not in PRECISIONS:
            raise ExportError(f"{source}: unknown precision {name!r}; expected one of {list(PRECISIONS)}")
        p = ps.section(name)
        files = [p.get(k, lambda v: isinstance(v, str) and _plain_name(v), "a plain file name inside the directory")
                 for k in ("ee_file", "sac_file")]
        for f in files:
            if f not in manifest.files:
                raise ExportError(f"{source}: engine {f!r} of precision {name!r} is not listed (hashed) in the manifest's files")
        if p.data.get("eta") == "never":  # calibration may find that no exit meets the request
            eta = math.inf
        else:
            eta = p.float_("eta")
            if not 0.0 <= eta <= 1.0:
                raise ExportError(f"{source}: precisions.{name}.eta must be in [0, 1] or 'never', got {eta}")
        latency = _latency(p.section("latency")) if p.data.get("latency") is not None else None
        precisions[name] = PrecisionCalibration(ee_file=files[0], sac_file=files[1], eta=eta, latency=latency)
    if "fp32" not in precisions:
        raise ExportError(f"{source}: precisions lacks 'fp32'")
    runtime = data.get("runtime") or {}
    threads = runtime.get("onnxruntime_batch1_threads") if isinstance(runtime, dict) else "invalid"
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024):
        raise ExportError(f"{source}: runtime.onnxruntime_batch1_threads must be a thread count or null, got {threads!r}")
    return Calibration(precisions=precisions, report={k: v for k, v in data.items() if k != "precisions"})


def _digest_or_fail(data: dict, source: Path) -> str:
    try:
        return content_digest(data)
    except ValueError as exc:  # NaN / Infinity literals, which JSON itself does not have
        raise ExportError(f"{source}: manifest holds a non-finite number ({exc})") from exc


def read_manifest(directory: str | Path, verify_files: bool = True) -> Manifest:
    """Parse and validate DIR/manifest.json, and (by default) the hashes of the files it lists.

    Raises:
        ExportError: missing or incomplete directory, unreadable manifest, another format or a
            newer version, a missing or mistyped field, or files whose hashes differ.
    """
    try:
        return _read_manifest(Path(directory), verify_files)
    except OSError as exc:  # a name too long, no permission, a file where a directory should be
        raise ExportError(f"{directory}: cannot read the export ({exc.strerror or exc})") from exc


def _read_manifest(directory: Path, verify_files: bool) -> Manifest:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ExportError(f"{directory}: not an export directory (run `sacvit-edge export model.pt -o {directory}`)")
    if not path.is_file():
        raise ExportError(f"{directory}: incomplete export, {MANIFEST} is missing")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ExportError(f"{path}: {size} bytes is far larger than any manifest; not a sacvit-edge export")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: corrupt manifest ({exc})") from exc
    except RecursionError as exc:
        raise ExportError(f"{path}: corrupt manifest (nested too deeply)") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: not a sacvit-edge export manifest")
    manifest = parse_manifest(data, directory, path)
    if verify_files:
        for name, digest in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ExportError(f"{directory}: incomplete export, {name} is missing")
            if sha256_file(file) != digest:
                raise ExportError(f"{file}: contents do not match the manifest (corrupted or replaced file); re-export")
    if CALIBRATION_FILE in manifest.files:
        cal_path = directory / CALIBRATION_FILE
        if cal_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ExportError(f"{cal_path}: far larger than any calibration file")
        try:
            cal = json.loads(cal_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ExportError(f"{cal_path}: corrupt calibration file ({exc})") from exc
        manifest = replace(manifest, calibration=parse_calibration(cal, manifest, cal_path))
    return manifest
