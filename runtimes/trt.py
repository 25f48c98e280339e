"""TensorRT backend (Jetson and desktop NVIDIA GPUs), TensorRT 10 and 11, no torch.

Engines are built ahead (`sacvit-edge build-engine DIR`, export/tensorrt.py): ee, crop and sac
per precision, each `{stage}.{precision}.{key}.engine` with a JSON header (what it was built with
and for: Ultralytics-style metadata in the artifact) before the plan. At load, the key this
machine would build (ONNX sha256, TensorRT version, GPU name and compute capability, precision,
profile, recipe) selects the engine; an engine built elsewhere is refused with the reason, or,
when the ONNX is at hand and the directory is writable (and rebuild=True), rebuilt here under its
own key beside the others.

Device-resident pipeline, per execution slot (context of each engine, one CUDA stream, one
event, device buffers preallocated at the profile maxima, pinned host staging):
  run_ee: image up once -> ee engine -> only ee_logits and gca come down (ee_final / ee_hidden
          stay in device buffers) -> the host gates and splits;
  run_sac: the group's rows, indices and keep masks go up (a few hundred bytes) -> crop engine cuts
          the target patches and picks the rows' features on the device -> sac engine -> logits down.
Every tensor address is bound once when the slot is made (buffers never move), so the batch-1 EE
call can be replayed as a CUDA graph (cuda_graph=True). Waits are on the slot's event, never a
device-wide sync. Threads calling predict() at once take different slots from a small pool
(SlotPool) instead of serialising on one lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sacvit_edge.engine_io import STAGES as CONTRACT
from sacvit_edge.engine_io import check_engine
from sacvit_edge.errors import BackendError, EngineBuildError, ExportError

from .base import BackendBase, EEResult

log = logging.getLogger(__name__)

_MAGIC = b"SACVTRT2"
STAGES = ("ee", "crop", "sac")
# every engine's I/O: name -> (is_input, dtype), from the engine I/O contract (engine_io)
ENGINE_IO: dict[str, dict[str, tuple[bool, np.dtype]]] = {
    stage: {name: (is_input, spec.dtype) for name, (is_input, spec) in CONTRACT[stage].tensors().items()}
    for stage in STAGES}
# engine tensor -> slot buffer: the crop engine's outputs are the sac engine's feature inputs
BUFFER_OF = {"sac": {"ee_final": "group_final", "ee_hidden": "group_hidden"}}
HOST_UP = ("image", "rows", "target_idx", "nontarget_idx", "target_keep", "nontarget_keep")
HOST_DOWN = ("ee_logits", "gca", "sac_logits")


FP16_MODES = ("graph", "flag")
TRT_DOCS = "https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html"


# Identical optimisation profiles built into every engine: TensorRT gives each execution context in
# use a profile index of its own ("the optimization profile must be set at least once with a unique
# profile index that is not used by other execution contexts", the TensorRT(-RTX) developer guide on
# dynamic shapes; NVIDIA/TensorRT#1590 for TensorRT 8). Four serve the default two slots and, with
# cuda_graph, each slot's EE CUDA-graph context. Each profile is tuned separately, so the build takes
# about that many times longer (once per device).
PROFILES = 4


@dataclass(frozen=True)
class BuildRecipe:
    """How one TensorRT version builds one precision.

    Attributes:
        major: TensorRT major version.
        strongly_typed: create the network with the STRONGLY_TYPED flag (types from the graph).
        network_flags: NetworkDefinitionCreationFlag names to set (empty: create_network(0)).
        builder_flags: BuilderFlag names to set.
        graph_precision: which graph pair to parse (fp32, fp16 or int8).
        profiles: identical optimisation profiles per engine, one per execution context in use (PROFILES).
    """

    major: int
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    graph_precision: str
    profiles: int = PROFILES

    def to_dict(self) -> dict:
        return {"major": self.major, "strongly_typed": self.strongly_typed, "network_flags": list(self.network_flags),
                "builder_flags": list(self.builder_flags), "graph_precision": self.graph_precision,
                "profiles": self.profiles}


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


def python_logger(trt):
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



def _np_dtype(trt, dtype, where: str) -> np.dtype:
    """TensorRT's dtype as NumPy's. trt.nptype maps seven types and raises TypeError for the rest
    (BF16, FP8, INT4, FP4, ...): an engine with such an I/O tensor is refused, naming it."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise BackendError(f"{where}: TensorRT dtype {getattr(dtype, 'name', dtype)} has no NumPy equivalent; this "
                           "engine's I/O is not the engine I/O contract's (rebuild it from this export)") from None


@dataclass
class TrtApi:
    """The TensorRT module and the CUDA runtime the backend and the builder use (tests pass a
    named test double of both, tests/doubles)."""

    trt: Any
    cuda: Any


def load_api() -> TrtApi:
    """tensorrt + cuda-python, or a BackendError saying what is missing and how to get it."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BackendError("TensorRT is not installed: on a Jetson use JetPack's python3-libnvinfer "
                           "(sudo apt install python3-libnvinfer), on a desktop GPU pip install "
                           "'sacvit-edge[tensorrt]'") from exc
    from .cuda import CudaRuntime

    return TrtApi(trt=trt, cuda=CudaRuntime())


def engine_header(path: Path) -> dict[str, Any]:
    """Read the JSON header of a sacvit-edge engine file.

    Raises:
        BackendError: not a sacvit-edge engine, or its header is truncated or corrupt.
    """
    with open(path, "rb") as f:
        if f.read(8) != _MAGIC:
            raise BackendError(f"{path}: not a sacvit-edge TensorRT engine of this version (no header); "
                               "rebuild it with `sacvit-edge build-engine`")
        try:
            (size,) = struct.unpack("<I", f.read(4))
            if size > 1 << 20:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
        except (struct.error, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BackendError(f"{path}: truncated or corrupt engine header ({exc}); rebuild it") from exc
    if not isinstance(header, dict):
        raise BackendError(f"{path}: corrupt engine header; rebuild it")
    return header


def read_plan(path: Path) -> bytes:
    data = path.read_bytes()
    return data[12 + struct.unpack("<I", data[8:12])[0]:]


def write_engine(path: Path, header: dict[str, Any], blob: bytes) -> None:
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(_MAGIC + struct.pack("<I", len(head)) + head + blob)


@dataclass(frozen=True)
class EngineKey:
    """What an engine is built with and for; its digest names the file and selects it at load."""

    onnx_file: str
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    profile: dict
    recipe: dict
    checkpoint_fingerprint: str
    manifest_sha256: str

    @classmethod
    def for_build(cls, manifest, onnx_file: str, tensorrt_version: str, gpu: dict, precision: str, shapes: dict,
                  recipe) -> "EngineKey":
        return cls(onnx_file=onnx_file, onnx_sha256=manifest.files[onnx_file], tensorrt=str(tensorrt_version),
                   gpu=gpu["name"], compute_capability=gpu["compute_capability"], precision=precision,
                   profile={k: [list(s) for s in v] for k, v in shapes.items()}, recipe=recipe.to_dict(),
                   checkpoint_fingerprint=manifest.fingerprint, manifest_sha256=manifest.content_sha256)

    @property
    def digest(self) -> str:
        fields = {"onnx_sha256": self.onnx_sha256, "tensorrt": self.tensorrt, "gpu": self.gpu,
                  "compute_capability": self.compute_capability, "precision": self.precision,
                  "profile": self.profile, "recipe": self.recipe}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def file_name(self, stage: str) -> str:
        return f"{stage}.{self.precision}.{self.digest}.engine"

    def header(self, stage: str) -> dict[str, Any]:
        return {"format": "sacvit-edge-tensorrt", "stage": stage, "key": self.digest, **self.__dict__}

    def fields_for_manifest(self) -> dict[str, Any]:
        return {"tensorrt": self.tensorrt, "gpu": self.gpu, "compute_capability": self.compute_capability,
                "profile": self.profile, "onnx": self.onnx_file}


def why_not(record, header: dict | None, want: EngineKey) -> str:
    """Why an engine recorded in the manifest is not the one this machine needs (readable)."""
    got = header or {"tensorrt": record.tensorrt, "gpu": record.gpu, "compute_capability": record.compute_capability}
    reasons = []
    if got.get("tensorrt") != want.tensorrt:
        reasons.append(f"built with TensorRT {got.get('tensorrt')}, this is {want.tensorrt}")
    if got.get("gpu") != want.gpu or got.get("compute_capability") != want.compute_capability:
        reasons.append(f"built on {got.get('gpu')} (sm {got.get('compute_capability')}), this GPU is {want.gpu} "
                       f"(sm {want.compute_capability})")
    if header is not None and header.get("onnx_sha256") != want.onnx_sha256:
        reasons.append("built from another ONNX graph (the export changed since)")
    if header is not None and header.get("profile") != want.profile:
        reasons.append("built for other shapes (batch or k range)")
    if header is not None and header.get("recipe") != want.recipe:
        reasons.append(f"built with another recipe {header.get('recipe')}")
    return "; ".join(reasons) or "its key differs"


def _batch_opt(record) -> int:
    """The batch an engine was tuned for (opt of its profile's first input), 1 if unreadable."""
    try:
        return int(next(iter(record.profile.values()))[1][0])
    except (StopIteration, TypeError, ValueError, IndexError, KeyError):
        return 1


class SlotPool:
    """Execution slots handed to concurrent callers; a caller waits while all are in use."""

    def __init__(self, slots: list) -> None:
        self.slots = slots
        self._free: queue.Queue = queue.Queue()
        for s in slots:
            self._free.put(s)

    def acquire(self, timeout: float | None = 60.0):
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            raise BackendError(f"all {len(self.slots)} TensorRT execution slots stayed busy for {timeout} s; "
                               "raise slots= or release results (EdgeClassifier does)") from None

    def release(self, slot) -> None:
        self._free.put(slot)


class _Slot:
    """One execution slot: a context per engine, a stream, an event, device buffers at the profile
    maxima with every tensor address bound once, and pinned host staging."""

    def __init__(self, backend: "TensorRTBackend", index: int) -> None:
        self.cuda = cuda = backend.cuda
        self.device: dict[str, int] = {}
        self.host: dict[str, tuple[int, np.ndarray]] = {}
        self.nbytes: dict[str, int] = {}
        self.contexts: dict[str, Any] = {}
        self.stream = self.event = self.ee_graph = None
        self.batch = 0
        try:
            self.stream = cuda.stream()
            self.handle = cuda.stream_handle(self.stream)
            self.event = cuda.event()
            for stage, engine in backend.engines.items():
                ctx = engine.create_execution_context()
                if ctx is None:
                    raise BackendError(f"TensorRT could not create an execution context for the {stage} engine "
                                       "(out of GPU memory?)")
                self.contexts[stage] = ctx
                backend.select_profile(ctx, stage, index, self.handle)  # a profile of its own, before any shape
                for name, (is_input, _) in ENGINE_IO[stage].items():
                    if is_input:
                        backend.set_shape(ctx, stage, name, backend.max_shapes[stage][name])
                for name, (_, dtype) in ENGINE_IO[stage].items():
                    shape = tuple(ctx.get_tensor_shape(name))  # sizes from TensorRT itself, at the maxima
                    if any(d < 0 for d in shape):
                        raise BackendError(f"{stage} engine: {name} has shape {shape} at the profile maxima")
                    buf = BUFFER_OF.get(stage, {}).get(name, name)
                    self.nbytes[buf] = max(self.nbytes.get(buf, 0), int(np.prod(shape)) * dtype.itemsize)
            for buf, size in self.nbytes.items():
                self.device[buf] = cuda.malloc(size)
            for buf in (*HOST_UP, *HOST_DOWN):
                self.host[buf] = cuda.host_alloc(self.nbytes[buf])
            if backend.cuda_graph:  # a context of its own, shapes fixed at batch 1: what a graph replays
                ctx = backend.engines["ee"].create_execution_context()
                if ctx is None:
                    raise BackendError("TensorRT could not create the EE engine's CUDA-graph context (out of GPU memory?)")
                cfg = backend.manifest.config
                backend.select_profile(ctx, "ee", backend.slots + index, self.handle)  # after the slots' profiles
                backend.set_shape(ctx, "ee", "image", (1, cfg.in_chans, cfg.img_size, cfg.img_size))
                self.contexts["ee_graph"] = ctx
            for stage_ctx, ctx in self.contexts.items():
                stage = "ee" if stage_ctx == "ee_graph" else stage_ctx
                for name in ENGINE_IO[stage]:
                    ptr = self.device[BUFFER_OF.get(stage, {}).get(name, name)]
                    if ctx.set_tensor_address(name, ptr) is False:
                        raise BackendError(f"TensorRT refused the address of {stage}.{name}")
        except BaseException:
            self.free()
            raise

    def up(self, name: str, array: np.ndarray) -> None:
        """Stage a host array in pinned memory and queue its copy to the device buffer."""
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if raw.nbytes > self.nbytes[name]:
            raise BackendError(f"{name}: {raw.nbytes} bytes exceed the slot's buffer of {self.nbytes[name]} "
                               "(shape outside the engine profile)")
        ptr, view = self.host[name]
        view[:raw.nbytes] = raw
        self.cuda.copy_to_device(self.device[name], ptr, raw.nbytes, self.stream)

    def down(self, name: str, nbytes: int) -> None:
        self.cuda.copy_to_host(self.host[name][0], self.device[name], nbytes, self.stream)

    def result(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * 4
        return self.host[name][1][:n].view(np.float32).reshape(shape).copy()

    def free(self) -> None:
        cuda = self.cuda
        if self.ee_graph:
            cuda.destroy_graph(self.ee_graph)
        self.ee_graph = None
        for ptr in self.device.values():
            cuda.free(ptr)
        for ptr, _ in self.host.values():
            cuda.host_free(ptr)
        self.device, self.host = {}, {}
        self.contexts = {}
        if self.event is not None:
            cuda.destroy_event(self.event)
        if self.stream is not None:
            cuda.destroy_stream(self.stream)
        self.event = self.stream = None


class TensorRTBackend(BackendBase):
    """See the module doc.

    Args:
        manifest: the export directory's manifest.
        precision: "fp32", "fp16" or "int8" (the graphs the engines are built from).
        slots: execution slots (concurrent batches in flight; each holds buffers at the maxima).
        cuda_graph: replay batch-1 EE calls (the camera case) as a CUDA graph.
        rebuild: build missing or mismatched engines here when the ONNX is at hand and the
            directory writable (False: refuse them with the reason).
        fp16_mode: "graph" (strongly typed fp16 graph, TensorRT 10 and 11) or "flag" (10 only).
        api: TensorRT and CUDA (default: the installed ones; tests pass the test double).
        builder: builds the engines a directory lacks, called as builder(manifest, precision,
            workspace_gib=, fp16_mode=, api=) -> manifest: export.tensorrt.build_engines, which
            EdgeClassifier passes (building is the export layer's; the backend only loads).
            None: missing engines are refused with the command that builds them.
    """

    name = "tensorrt"

    def __init__(self, manifest, precision: str = "fp32", slots: int = 2, cuda_graph: bool = False,
                 rebuild: bool = True, fp16_mode: str = "graph", workspace_gib: float = 1.0, api: TrtApi | None = None,
                 builder: Callable[..., Any] | None = None) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 64:
            raise BackendError(f"slots={slots!r} must be an integer in [1, 64]")
        self.api = api or load_api()
        self.trt, self.cuda = self.api.trt, self.api.cuda
        self.manifest, self.precision, self.cuda_graph = manifest, precision, bool(cuda_graph)
        self.gpu = self.cuda.properties()
        self._logger = python_logger(self.trt)
        self.runtime = self.trt.Runtime(self._logger)  # kept alive as long as its engines
        self.engines: dict[str, Any] = {}
        self.pool: SlotPool | None = None
        self._profiles: dict[tuple[str, str], tuple[tuple, tuple]] = {}  # (stage, input) -> (min, max)
        self.builder = builder
        self.files = self._engine_files(rebuild and builder is not None, fp16_mode, workspace_gib)
        for stage in STAGES:
            self.engines[stage] = self._deserialize(stage, self.manifest.path(self.files[stage]))
        self.max_shapes = {stage: self._check_io(stage) for stage in STAGES}
        self.slots = slots
        available = min(int(engine.num_optimization_profiles) for engine in self.engines.values())
        needed = slots * (2 if self.cuda_graph else 1)  # the EE engine's CUDA-graph contexts take one each
        if needed > available:
            raise BackendError(f"slots={slots}{' with cuda_graph' if self.cuda_graph else ''} needs {needed} optimisation "
                               f"profiles per engine and these engines have {available} (TensorRT gives every execution "
                               f"context in use a profile of its own); use slots <= "
                               f"{available // (2 if self.cuda_graph else 1)}")
        made: list[_Slot] = []
        try:
            for index in range(slots):
                made.append(_Slot(self, index))
        except BaseException:
            for slot in made:
                slot.free()
            raise
        self.pool = SlotPool(made)

    @classmethod
    def from_manifest(cls, manifest, precision: str = "fp32", **options) -> "TensorRTBackend":
        return cls(manifest, precision=precision, **options)

    # -- engines ----------------------------------------------------------------------------
    def _engine_files(self, rebuild: bool, fp16_mode: str, workspace_gib: float) -> dict[str, str]:
        """The engine file of each stage built for this machine, building them where allowed."""
        manifest = self.manifest
        recipe = build_recipe(self.trt.__version__, self.precision, fp16_mode)
        found, reasons = {}, []
        for stage in STAGES:
            if stage == "crop":
                onnx_file, precision = manifest.derived.crop, "fp32"
            else:
                have = recipe.graph_precision in manifest.precisions
                onnx_file = manifest.engine_files(recipe.graph_precision)[0 if stage == "ee" else 1] if have else None
                precision = self.precision
            records = [r for r in manifest.derived.tensorrt_engines if r.stage == stage and r.precision == precision]
            if onnx_file is None:
                reasons.append(f"{stage}: its ONNX graph is not in the directory yet")
                continue

            def want(batch_opt: int) -> EngineKey:  # the batch TensorRT tuned for is a choice, not a condition
                return EngineKey.for_build(manifest, onnx_file, self.trt.__version__, self.gpu, precision,
                                           profile_shapes(manifest, stage, batch_opt), recipe)

            match = next((r for r in records if r.key == want(_batch_opt(r)).digest), None)
            if match is not None:
                found[stage] = match.file
                continue
            if not records:
                reasons.append(f"{stage}: no {precision} engine built yet")
            for r in records:
                try:
                    header = engine_header(manifest.path(r.file))
                except BackendError:
                    header = None
                reasons.append(f"{r.file}: {why_not(r, header, want(_batch_opt(r)))}")
        if len(found) == len(STAGES):
            return found
        why = "; ".join(reasons)
        if not rebuild:
            raise BackendError(f"{manifest.directory}: no usable TensorRT engines for this GPU ({why}); run "
                               f"`sacvit-edge build-engine {manifest.directory} --precision {self.precision}` here")
        log.warning("%s: building TensorRT engines here (%s); this takes minutes once, and "
                    "`sacvit-edge build-engine` does it ahead", manifest.directory, why)
        try:
            self.manifest = self.builder(manifest, self.precision, workspace_gib=workspace_gib, fp16_mode=fp16_mode,
                                         api=self.api)
        except ExportError as exc:  # read-only directory, missing graphs: say both problems
            raise BackendError(f"{why}; and they cannot be rebuilt here: {exc}") from exc
        return self._engine_files(False, fp16_mode, workspace_gib)

    def _deserialize(self, stage: str, path: Path):
        header = engine_header(path)
        problems = [f"{k}: {header.get(k)!r} != {v!r}" for k, v in
                    (("stage", stage), ("checkpoint_fingerprint", self.manifest.fingerprint),
                     ("manifest_sha256", self.manifest.content_sha256), ("tensorrt", self.trt.__version__),
                     ("gpu", self.gpu["name"])) if header.get(k) != v]
        if problems:
            raise BackendError(f"{path}: its header contradicts this export or machine ({'; '.join(problems)}); rebuild it")
        engine = self.runtime.deserialize_cuda_engine(read_plan(path))
        if engine is None:
            raise BackendError(f"{path}: TensorRT could not deserialise the engine (see the log); rebuild it")
        return engine

    def _check_io(self, stage: str) -> dict[str, tuple[int, ...]]:
        """Names, directions and dtypes of the engine's I/O against ENGINE_IO; the profile maxima."""
        trt, engine = self.trt, self.engines[stage]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        check_engine(stage, f"{stage} engine {self.files.get(stage, '')}".strip(), {
            name: (engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                   _np_dtype(trt, engine.get_tensor_dtype(name), f"{stage} engine tensor {name}"), None) for name in names})
        maxima = {}
        for name, (is_input, dtype) in ENGINE_IO[stage].items():
            if is_input:
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                maxima[name] = tuple(hi)
                self._profiles[(stage, name)] = (tuple(lo), tuple(hi))
        return maxima

    def select_profile(self, ctx, stage: str, index: int, stream_handle: int) -> None:
        """set_optimization_profile_async, its result checked (False: the index is out of range or taken)."""
        if ctx.set_optimization_profile_async(index, stream_handle) is False:
            raise BackendError(f"TensorRT refused optimisation profile {index} for a {stage} engine context")

    def set_shape(self, ctx, stage: str, name: str, shape: tuple[int, ...]) -> None:
        """set_input_shape, with its result checked: an out-of-profile shape is named, not a failure later."""
        if not ctx.set_input_shape(name, tuple(int(d) for d in shape)):
            lo, hi = self._profiles[(stage, name)]
            raise BackendError(f"the {stage} engine does not take {name} of shape {tuple(shape)}: its profile "
                               f"allows {lo} .. {hi}")

    # -- inference --------------------------------------------------------------------------
    def _pool(self) -> SlotPool:
        if self.pool is None:
            raise BackendError("this TensorRT backend is closed")
        return self.pool

    def _execute(self, slot: _Slot, context: str) -> None:
        if not slot.contexts[context].execute_async_v3(slot.handle):
            raise BackendError(f"TensorRT failed to enqueue the {context} engine context (see the log)")

    def _enqueue_ee(self, slot: _Slot, image: np.ndarray, context: str = "ee") -> None:
        b = len(image)
        cfg = self.manifest.config
        slot.up("image", image)
        self._execute(slot, context)
        slot.down("ee_logits", b * cfg.num_classes * 4)
        slot.down("gca", b * cfg.num_coarse * 4)

    def run_ee(self, image: np.ndarray) -> EEResult:
        if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 4:
            raise BackendError(f"image must be a float32 (B, 3, H, W) array, got {getattr(image, 'dtype', type(image))}")
        slot = self._pool().acquire()
        try:
            b = len(image)
            cfg = self.manifest.config
            if self.cuda_graph and image.shape == (1, cfg.in_chans, cfg.img_size, cfg.img_size):
                self._ee_graph(slot, image)
            else:
                self.set_shape(slot.contexts["ee"], "ee", "image", image.shape)
                self._enqueue_ee(slot, image)
            self.cuda.record_and_wait(slot.event, slot.stream)
            slot.batch = b
            return EEResult(logits=slot.result("ee_logits", (b, cfg.num_classes)),
                            gca=slot.result("gca", (b, cfg.num_coarse)), slot=slot)
        except BaseException:
            self._pool().release(slot)
            raise

    def _ee_graph(self, slot: _Slot, image: np.ndarray) -> None:
        """Batch-1 EE as a CUDA graph, after TensorRT's guidance: on its own execution context whose
        input shape and tensor addresses never change, one plain enqueue and wait first (TensorRT
        allocates lazily), then capture on the slot's non-default stream (image copy, engine,
        copies back) and replay; a capture TensorRT refuses falls back to plain enqueues.
        Only the EE stage: SAC shapes vary with k, and a context per k would hold its own memory."""
        if slot.ee_graph is None:
            self._enqueue_ee(slot, image, "ee_graph")
            self.cuda.record_and_wait(slot.event, slot.stream)
            try:
                self.cuda.begin_capture(slot.stream)
                try:
                    self._enqueue_ee(slot, image, "ee_graph")
                finally:
                    graph = self.cuda.end_capture(slot.stream)
                slot.ee_graph = graph
            except BackendError as exc:
                log.warning("CUDA graph capture of the EE engine failed (%s); running it without", exc)
                slot.ee_graph = False
            return
        if slot.ee_graph is False:
            self._enqueue_ee(slot, image, "ee_graph")
            return
        raw = np.ascontiguousarray(image).view(np.uint8).reshape(-1)
        slot.host["image"][1][:raw.nbytes] = raw  # the graph's copy reads the pinned staging buffer
        self.cuda.launch(slot.ee_graph, slot.stream)

    def run_sac(self, ee: EEResult, rows: np.ndarray, group) -> np.ndarray:
        slot = ee.slot
        if slot is None:
            raise BackendError("run_sac needs the EEResult of this backend's run_ee, before release()")
        cfg = self.manifest.config
        g, k, m = len(rows), group.target_idx.shape[1], group.nontarget_idx.shape[1]
        n, d = cfg.num_coarse, cfg.embed_dim
        slot.up("rows", np.asarray(rows, dtype=np.int64))
        slot.up("target_idx", np.asarray(group.target_idx, dtype=np.int64))
        slot.up("nontarget_idx", np.asarray(group.nontarget_idx, dtype=np.int64))
        slot.up("target_keep", np.asarray(group.target_keep, dtype=bool))
        slot.up("nontarget_keep", np.asarray(group.nontarget_keep, dtype=bool))
        crop, sac = slot.contexts["crop"], slot.contexts["sac"]
        b = slot.batch
        for name, shape in (("image", (b, cfg.in_chans, cfg.img_size, cfg.img_size)), ("ee_final", (b, n, d)),
                            ("ee_hidden", (b, n, d)), ("rows", (g,)), ("target_idx", (g, k))):
            self.set_shape(crop, "crop", name, shape)
        self._execute(slot, "crop")
        px = cfg.in_chans * cfg.patch_size ** 2
        for name, shape in (("target_patches", (g, 4 * k, px)), ("target_idx", (g, k)), ("nontarget_idx", (g, m)),
                            ("ee_final", (g, n, d)), ("ee_hidden", (g, n, d)), ("target_keep", (g, k)),
                            ("nontarget_keep", (g, m))):
            self.set_shape(sac, "sac", name, shape)
        self._execute(slot, "sac")
        slot.down("sac_logits", g * cfg.num_classes * 4)
        self.cuda.record_and_wait(slot.event, slot.stream)
        return slot.result("sac_logits", (g, cfg.num_classes))

    def release(self, ee: EEResult) -> None:
        if ee.slot is not None and self.pool is not None:
            self.pool.release(ee.slot)
        ee.slot = None

    def device(self) -> str:
        return self.gpu["name"]

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device(), "compute_capability": self.gpu["compute_capability"],
                "tensorrt": self.trt.__version__, "precision": self.precision, "engines": self.files,
                "slots": len(self.pool.slots) if self.pool else 0, "cuda_graph": self.cuda_graph,
                "test_double": bool(getattr(self.cuda, "is_test_double", False))}

    def close(self) -> None:
        """Free slots (buffers, streams, contexts), then the engines, then the runtime."""
        if self.pool is not None:
            for slot in self.pool.slots:
                slot.free()
        self.pool = None
        self.engines = {}
        self.runtime = None
