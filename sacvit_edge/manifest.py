"""The export manifest: what an export directory holds and how to feed its engines.

Torch-free on purpose: the deployment path (EdgeClassifier, the runtimes) reads manifests on
devices that have only NumPy and an inference library. The exporter (`sacvit_edge.export`)
writes the same structure. Every section is a frozen dataclass, validated when read: a missing
or mistyped field is an ExportError naming the field and the file, never a KeyError.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from .config import ModelConfig
from .errors import ConfigError, ExportError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sacvit-edge-export"
MANIFEST_VERSION = 3  # 2: SAC engine takes target patches and keep masks; 3: engines carry the manifest digest
ENGINE_FILES = ("ee.onnx", "sac.onnx")
CHECKPOINT_FILE = "model.pt"
# metadata keys written into every engine at export and compared with the manifest at load
FINGERPRINT_KEY = "sacvit_edge.checkpoint_fingerprint"
MANIFEST_DIGEST_KEY = "sacvit_edge.manifest_sha256"
STAGE_KEY = "sacvit_edge.stage"


def content_digest(data: dict) -> str:
    """sha256 of the manifest's canonical content, everything but `files` (the file hashes cover
    the engines, which in turn carry this digest: an edit of any value is caught at load)."""
    body = {k: v for k, v in data.items() if k != "files"}
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

    def expected(self, exited: Any, counts: Any) -> float:
        """Mean GFLOPs per image for per-image exit flags and target counts."""
        import numpy as np

        exited = np.asarray(exited, bool)
        live = np.asarray(counts)[~exited]
        return self.ee + float(sum(self.sac[int(k)] for k in live)) / max(len(exited), 1)


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


def _plain_name(name: str) -> bool:
    """A file inside the export directory itself: no separators, no '..', nothing hidden."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 255


def _engine(r: _Reader, stage: str) -> EngineSpec:
    e = r.section(stage)
    names = lambda key: tuple(e.strings(key))  # noqa: E731
    file = e.get("file", lambda v: isinstance(v, str) and _plain_name(v), "a plain file name inside the directory")
    return EngineSpec(file=file, inputs=names("inputs"), outputs=names("outputs"),
                      batch_range=e.range_("batch_range", 1), k_range=e.range_("k_range", 1) if stage == "sac" else None)


def parse_manifest(data: Any, directory: Path, source: Path | None = None) -> Manifest:
    """Validate a manifest's JSON content; every problem is an ExportError naming the field."""
    source = source or directory / MANIFEST
    r = _Reader(data, "", source)
    if data.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{source}: not a sacvit-edge export manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version != MANIFEST_VERSION:
        age = "a newer" if isinstance(version, int) and version > MANIFEST_VERSION else "an older"
        raise ExportError(f"{source}: format version {version!r} was written by {age} sacvit-edge; this one reads "
                          f"version {MANIFEST_VERSION}. Re-export the checkpoint with this version")
    try:
        config = ModelConfig.from_dict(r.get("model_config", lambda v: isinstance(v, dict), "an object"))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ExportError(f"{source}: invalid model_config: {exc}") from exc
    inp = r.section("input")
    spec = InputSpec(size=inp.int_("size"), mean=inp.floats("mean", 3), std=inp.floats("std", 3, positive=True),  # type: ignore[arg-type]
                     layout=str(inp.data.get("layout", "NCHW float32 RGB")))
    if spec.size != config.img_size:
        raise ExportError(f"{source}: input.size {spec.size} differs from model_config.img_size {config.img_size}")
    eng = r.section("engines")
    engines = {stage: _engine(eng, stage) for stage in ("ee", "sac")}
    lo, hi = engines["sac"].k_range or (0, 0)
    if config.arch == "sacvit" and hi >= config.num_coarse:
        raise ExportError(f"{source}: engines.sac.k_range {[lo, hi]} leaves no non-target token of {config.num_coarse}")
    files = r.get("files", lambda v: isinstance(v, dict) and all(isinstance(k, str) and _plain_name(k) and isinstance(h, str)
                                                                   and len(h) == 64 for k, h in v.items()),
                  "an object mapping plain file names (no path) to sha256 hex digests")
    for spec_ in engines.values():  # every engine is covered by the integrity check
        if spec_.file not in files:
            raise ExportError(f"{source}: files lacks the hash of engine {spec_.file!r}; re-export the checkpoint")
    eta = r.float_("eta")
    if not 0.0 <= eta <= 1.0:
        raise ExportError(f"{source}: manifest field 'eta' must be in [0, 1], got {eta}")
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
    return Manifest(directory=directory, checkpoint_fingerprint=r.str_("checkpoint_fingerprint"), class_names=class_names,
                    input=spec, eta=eta, config=config, engines=engines, files=dict(files),
                    opset=data.get("opset"), exporter=data.get("exporter"), versions={str(k): str(v) for k, v in versions.items()},
                    cost=cost, content_sha256=_digest_or_fail(data, source))


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
    return manifest
