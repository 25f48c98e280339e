"""TEST DOUBLE of the TensorRT Python API subset sacvit-edge uses: Builder, OnnxParser, Runtime,
ICudaEngine, IExecutionContext (plus Logger, ILogger, IProgressMonitor and the flag enums).

It executes the ONNX graph it was "built" from with ONNX Runtime on the CPU, reading and writing
the buffers bound by address in tests/doubles/fake_cuda.FakeCuda. Running the backend against
it exercises the backend's control flow and enforces TensorRT's documented contract:
- every input's shape is set (set_input_shape) and inside the optimisation profile before
  execute_async_v3; set_input_shape returns False outside it, as TensorRT does;
- an address is bound for every I/O tensor, and each buffer is large enough for the tensor at
  its current shape (the sizes get_tensor_shape reports);
- tensors are read and written with the dtype get_tensor_dtype reports;
- version 11 has no BuilderFlag.FP16 / INT8 (removed) and builds strongly typed networks;
- a captured CUDA graph is replayed only while its context keeps the shapes it was captured at;
- every execution context uses an optimisation profile no other context of the engine holds (the
  first context created gets profile 0 implicitly; set_optimization_profile_async refuses a taken
  or missing index with False), as TensorRT's guide asks of dynamic-shape engines.
It is NOT TensorRT: no kernels, no precision behaviour, no timing. Nothing verified through it is
TensorRT verification.

Where the real API reports by return value, so does the double: set_input_shape, set_tensor_address
and execute_async_v3 return False (the reason kept in `last_error`), deserialize_cuda_engine and
create_execution_context may return None (`fail=` makes any of them fail on demand, standing in for
an out-of-memory GPU). Enum types and values, trt.nptype's table, the constructors' TypeErrors and
set_shape's ValueError are the real bindings' (10.x and 11.x): tests/test_tensorrt_api.py checks
them against tests/fixtures/tensorrt_api.json, recorded from NVIDIA's real bindings by
scripts/record_tensorrt_api.py.
"""

from __future__ import annotations

import base64
import enum
import json
from types import SimpleNamespace

import numpy as np


class TrtContractError(AssertionError):
    """The backend broke TensorRT's documented contract."""


class _Severity(enum.IntEnum):  # trt.ILogger.Severity (trt.Logger.WARNING etc.): the same in 10.x and 11.x
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = _Severity

    def __init__(self, severity=None) -> None:
        self.severity = severity


class ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class DataType(enum.IntEnum):  # the real values (10.x and 11.x alike)
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


# trt.nptype: the real table maps these seven and raises TypeError for the rest (BF16, FP8, INT4, FP4, E8M0)
_NPTYPE = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
           DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


FAILURES = ("deserialize_cuda_engine", "create_execution_context", "set_optimization_profile_async",
            "set_tensor_address", "execute_async_v3")


def make_tensorrt(version: str = "10.3.0", cuda=None, fail: tuple[str, ...] = ()) -> SimpleNamespace:
    """A module-like namespace standing in for `import tensorrt` at `version`, bound to a FakeCuda.
    `fail`: calls of FAILURES that report failure as the real API does (None or False)."""
    major = int(version.split(".")[0])
    # the real enums of each major version (values: tests/fixtures/tensorrt_api.json)
    if major < 11:
        BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 6})
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {
            "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3})
    else:  # 11.x removed FP16 / INT8 builder flags and EXPLICIT_BATCH; STRONGLY_TYPED is 0 and ignored
        BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 6})
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {
            "STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2})
    failing = set(fail)
    builds: list[dict] = []  # what each build was given (tests assert the version dispatch)

    class Network:
        def __init__(self, flags_: int) -> None:
            self.flags = flags_
            self.onnx: bytes | None = None

    class OnnxParser:
        def __init__(self, network: Network, logger) -> None:
            if not isinstance(network, Network) or not isinstance(logger, ILogger):
                raise TypeError("OnnxParser(): incompatible constructor arguments (network, logger)")
            self.network, self.errors = network, []

        def parse(self, data: bytes) -> bool:
            import onnx

            try:
                onnx.load_from_string(data)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(str(exc))
                return False
            self.network.onnx = data
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            if not (len(lo) == len(opt) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise ValueError(f"Invalid shapes for {name}: min {lo} <= opt {opt} <= max {hi} violated")
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags = {"TF32"}
            self.profiles: list[Profile] = []
            self.workspace = None
            self.progress_monitor = None

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.workspace = size

        def set_flag(self, flag) -> None:
            if not isinstance(flag, BuilderFlag):  # the real binding takes the enum, not an int
                raise TypeError(f"set_flag(): incompatible function arguments ({flag!r})")
            self.flags.add(flag.name)

        def clear_flag(self, flag) -> None:
            if not isinstance(flag, BuilderFlag):
                raise TypeError(f"clear_flag(): incompatible function arguments ({flag!r})")
            self.flags.discard(flag.name)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger) -> None:
            if not isinstance(logger, ILogger):
                raise TypeError("Builder(): incompatible constructor arguments (an ILogger is needed)")
            self.logger = logger

        def create_network(self, flags_: int = 0) -> Network:
            if not isinstance(flags_, int):
                raise TypeError("create_network(): flags is a bit mask of NetworkDefinitionCreationFlag values")
            return Network(flags_)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            if network.onnx is None:
                raise TrtContractError("build without a parsed network")
            if not config.profiles:
                raise TrtContractError("dynamic shapes need at least one optimisation profile")
            # 10.x: strongly typed iff the STRONGLY_TYPED bit is set (bit 0 is the ignored EXPLICIT_BATCH)
            strongly = major >= 11 or bool(network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            if strongly and config.flags & {"FP16", "INT8"}:
                raise TrtContractError("precision builder flags on a strongly typed network")
            if config.progress_monitor is not None:
                for phase in ("Building engine", "Tactic selection"):
                    config.progress_monitor.phase_start(phase, None, 2)
                    for step in range(2):
                        config.progress_monitor.step_complete(phase, step)
                    config.progress_monitor.phase_finish(phase)
            builds.append({"strongly_typed": strongly, "builder_flags": sorted(config.flags),
                           "network_flags": network.flags, "workspace": config.workspace})
            builds[-1]["profiles"] = len(config.profiles)
            return json.dumps({"fake_tensorrt": version, "onnx": base64.b64encode(network.onnx).decode(),
                               "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()}
                                            for p in config.profiles]}).encode()

    class Runtime:
        def __init__(self, logger) -> None:
            if not isinstance(logger, ILogger):
                raise TypeError("Runtime(): incompatible constructor arguments (an ILogger is needed)")
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes):
            if "deserialize_cuda_engine" in failing:
                return None
            try:
                payload = json.loads(blob)
            except ValueError:
                return None
            if payload.get("fake_tensorrt") != version:
                return None  # TensorRT refuses plans of another version
            return Engine(base64.b64decode(payload["onnx"]),
                          [{k: tuple(map(tuple, v)) for k, v in p.items()} for p in payload["profiles"]])

    class Engine:
        def __init__(self, onnx_bytes: bytes, profiles: list[dict]) -> None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.profiles = profiles
            self.profile = profiles[0]
            self.profile_owner: dict[int, object] = {}  # profile index -> the context that holds it
            self.inputs = {i.name: i for i in self.session.get_inputs()}
            self.outputs = {o.name: o for o in self.session.get_outputs()}
            ort_types = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
                         "tensor(int32)": DataType.INT32, "tensor(bool)": DataType.BOOL, "tensor(bfloat16)": DataType.BF16}
            self.dtypes = {v.name: ort_types[v.type] for v in (*self.inputs.values(), *self.outputs.values())}
            self.names = [*self.inputs, *self.outputs]
            for profile in profiles:
                if set(profile) != set(self.inputs):
                    raise TrtContractError(f"profile covers {sorted(profile)}, the network's inputs are {sorted(self.inputs)}")

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str):
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return self.dtypes[name]

        def get_tensor_shape(self, name: str) -> tuple:
            t = self.inputs.get(name) or self.outputs[name]
            return tuple(d if isinstance(d, int) else -1 for d in t.shape)

        def get_tensor_profile_shape(self, name: str, index: int):
            if not 0 <= index < len(self.profiles) or name not in self.profiles[index]:
                raise TrtContractError(f"no profile {index} for {name}")
            return self.profiles[index][name]

        def create_execution_context(self):
            if "create_execution_context" in failing:
                return None
            ctx = Context(self)
            if 0 not in self.profile_owner:  # the first context gets profile 0 implicitly
                self.profile_owner[0] = ctx
                ctx.profile_index = 0
            return ctx

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self._out_shapes: dict = {}
            self.last_error = ""  # what real TensorRT would have logged with a False return
            self.profile_index: int | None = None

        def _refuse(self, why: str) -> bool:
            self.last_error = why
            return False

        def set_optimization_profile_async(self, index: int, stream_handle: int) -> bool:
            if "set_optimization_profile_async" in failing:
                return self._refuse("profile refused (injected failure)")
            owners = self.engine.profile_owner
            if not 0 <= index < len(self.engine.profiles):
                return self._refuse(f"optimisation profile {index} does not exist ({len(self.engine.profiles)} built)")
            if owners.get(index, self) is not self:
                return self._refuse(f"optimisation profile {index} is used by another execution context")
            if self.profile_index is not None:
                owners.pop(self.profile_index, None)
            owners[index] = self
            self.profile_index = index
            self.shapes.clear()  # switching profiles invalidates the input shapes
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            if name not in self.engine.inputs:
                return self._refuse(f"set_input_shape on {name!r}, which is not an input")
            if self.profile_index is None:
                return self._refuse("no optimisation profile selected for this context")
            lo, _, hi = self.engine.profiles[self.profile_index][name]
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return self._refuse(f"{name}: shape {shape} outside the profile {lo} .. {hi}")
            self.shapes[name] = shape
            return True

        def _outputs_at(self) -> dict[str, tuple]:
            key = tuple(sorted(self.shapes.items()))
            if key not in self._out_shapes:
                feeds = {n: np.zeros(self.shapes[n], dtype=nptype(self.engine.dtypes[n])) for n in self.engine.inputs}
                outs = self.engine.session.run(list(self.engine.outputs), feeds)
                self._out_shapes[key] = {n: o.shape for n, o in zip(self.engine.outputs, outs)}
            return self._out_shapes[key]

        def get_tensor_shape(self, name: str) -> tuple:
            if name in self.engine.inputs:
                return self.shapes.get(name, self.engine.get_tensor_shape(name))
            if set(self.shapes) != set(self.engine.inputs):
                return self.engine.get_tensor_shape(name)
            return tuple(self._outputs_at()[name])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if name not in self.engine.names:
                return self._refuse(f"set_tensor_address on unknown tensor {name!r}")
            if "set_tensor_address" in failing:
                return self._refuse("address refused (injected failure)")
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            missing = set(self.engine.inputs) - set(self.shapes)
            if missing:
                return self._refuse(f"execute before set_input_shape of {sorted(missing)}")
            unbound = set(self.engine.names) - set(self.addresses)
            if unbound:
                return self._refuse(f"execute with no address bound for {sorted(unbound)}")
            if "execute_async_v3" in failing:
                return self._refuse("enqueue failed (injected failure)")
            shapes = {**self.shapes, **self._outputs_at()}
            if cuda is None:
                raise TrtContractError("the fake TensorRT needs a FakeCuda or a CudaRuntime to reach buffers")
            if not hasattr(cuda, "device_view"):  # the real runtimes.cuda.CudaRuntime: device memory via copies
                return self._execute_on_device(stream_handle, shapes)

            def views(name):
                dtype = np.dtype(nptype(self.engine.dtypes[name]))
                nbytes = int(np.prod(shapes[name])) * dtype.itemsize
                return cuda.device_view(self.addresses[name], nbytes).view(dtype).reshape(shapes[name])

            for name in self.engine.names:  # bounds are checked when the work is queued, as TensorRT would fault
                views(name)

            captured = dict(self.shapes)

            def work() -> None:
                if self.shapes != captured:  # a replayed graph runs the kernels of the shapes it was captured at
                    raise TrtContractError(f"CUDA graph replayed after its context's shapes changed ({captured} -> "
                                           f"{self.shapes}): give each graph a context of its own")
                feeds = {n: views(n).copy() for n in self.engine.inputs}
                outs = self.engine.session.run(list(self.engine.outputs), feeds)
                for name, value in zip(self.engine.outputs, outs):
                    views(name)[...] = value

            cuda.enqueue(stream_handle, work)
            return True

        def _execute_on_device(self, stream_handle: int, shapes: dict) -> bool:
            """Buffers in real device memory (runtimes.cuda.CudaRuntime on a GPU, or over
            tests/doubles/fake_cudart): wait for the stream's earlier work, copy the inputs to the host,
            run ONNX Runtime, copy the outputs back. Synchronous, so it cannot be captured in a CUDA graph."""
            rt = cuda.rt

            def ok(result, call: str) -> None:
                code = result[0] if isinstance(result, tuple) else result
                if code != rt.cudaError_t.cudaSuccess:
                    raise TrtContractError(f"{call} failed: {code}")

            ok(rt.cudaStreamSynchronize(stream_handle), "cudaStreamSynchronize")
            feeds = {}
            for name in self.engine.inputs:
                host = np.empty(shapes[name], np.dtype(nptype(self.engine.dtypes[name])))
                ok(rt.cudaMemcpy(host.ctypes.data, self.addresses[name], host.nbytes,
                                 rt.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy(device->host)")
                feeds[name] = host
            outs = self.engine.session.run(list(self.engine.outputs), feeds)
            for name, value in zip(self.engine.outputs, outs):
                value = np.ascontiguousarray(value, np.dtype(nptype(self.engine.dtypes[name])))
                ok(rt.cudaMemcpy(self.addresses[name], value.ctypes.data, value.nbytes,
                                 rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy(host->device)")
            return True

    return SimpleNamespace(
        __version__=version, Logger=Logger, ILogger=ILogger, IProgressMonitor=IProgressMonitor, DataType=DataType,
        TensorIOMode=TensorIOMode, MemoryPoolType=MemoryPoolType, nptype=nptype,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, BuilderFlag=BuilderFlag, Builder=Builder,
        OnnxParser=OnnxParser, Runtime=Runtime, builds=builds, is_test_double=True)


def nptype(dtype) -> type:
    """trt.nptype: the real table, TypeError for the types it does not map."""
    try:
        return _NPTYPE[dtype]
    except (KeyError, TypeError):
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {dtype!r}") from None
