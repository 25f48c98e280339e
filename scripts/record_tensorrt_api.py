"""Record the real TensorRT Python API surface sacvit-edge uses into tests/fixtures/tensorrt_api.json.

    .venv/bin/python scripts/record_tensorrt_api.py [--versions 10.16.1.11 11.4.0.106] [--out FILE]

For each version: `pip download --no-deps tensorrt-cu12-bindings==VERSION` (NVIDIA's real Python
bindings, 1.3 MB; the TensorRT libraries themselves are not in the package registry), then
PLACEHOLDER shared libraries named libnvinfer / libnvinfer_plugin / libnvonnxparser, built here
with the C compiler, that define the nine C entry points the bindings link against and return
NULL: they satisfy the dynamic linker and nothing else. NO TENSORRT RUNS. A child interpreter
imports the real bindings and records, per version: the enum members and integer values the
project uses, the pybind11 signatures of every method and property it calls, trt.nptype's table
over DataType, and which constructor arguments the bindings themselves refuse (TypeError before
any library call). tests/test_tensorrt_api.py checks the test double (tests/doubles) and the
project's call sites against the file, with no network. Re-run when a TensorRT version is added.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {  # library -> the C symbols the bindings link against (nm -D --undefined-only tensorrt.so)
    "libnvinfer": ["createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                   "getBuilderPluginRegistry", "getPluginRegistry"],
    "libnvinfer_plugin": ["initLibNvInferPlugins"],
    "libnvonnxparser": ["createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion"],
}
# the API the project calls (runtimes/trt.py, export/tensorrt.py): class -> methods / properties
USED = {
    "Builder": ["__init__", "create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"],
    "IBuilderConfig": ["set_flag", "clear_flag", "set_memory_pool_limit", "add_optimization_profile", "progress_monitor"],
    "IOptimizationProfile": ["set_shape"],
    "OnnxParser": ["__init__", "parse", "num_errors", "get_error"],
    "Runtime": ["__init__", "deserialize_cuda_engine"],
    "ICudaEngine": ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
                    "get_tensor_profile_shape", "create_execution_context", "num_optimization_profiles"],
    "IExecutionContext": ["set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3",
                          "set_optimization_profile_async"],
    "ILogger": ["__init__", "log"],
    "IProgressMonitor": ["__init__", "phase_start", "step_complete", "phase_finish"],
}
ENUMS = ["NetworkDefinitionCreationFlag", "BuilderFlag", "DataType", "TensorIOMode", "MemoryPoolType"]

PROBE = r'''
import inspect, json, sys
import tensorrt_bindings as trt
used, enums = json.loads(sys.argv[1])
out = {"version": trt.__version__, "enums": {}, "members": {}, "nptype": {}, "refuses": {}}
for name in enums + ["Logger.Severity"]:
    obj = trt
    for part in name.split("."):
        obj = getattr(obj, part)
    out["enums"][name] = {k: int(v) for k, v in obj.__members__.items()}
for cls, names in used.items():
    c = getattr(trt, cls)
    for n in names:
        attr = inspect.getattr_static(c, n, None)
        if attr is None:
            out["members"][f"{cls}.{n}"] = None
            continue
        kind = "property" if isinstance(attr, property) or type(attr).__name__ == "property" else "method"
        doc = (getattr(c, n).__doc__ or "") if kind == "method" else (attr.__doc__ or "")
        sigs = [line.strip() for line in doc.splitlines() if line.strip().startswith((n + "(", f"{chr(49)}. {n}(",
                "2. " + n + "(", "3. " + n + "("))]
        out["members"][f"{cls}.{n}"] = {"kind": kind, "signatures": sigs}
for k, v in trt.DataType.__members__.items():
    try:
        out["nptype"][k] = __import__("numpy").dtype(trt.nptype(v)).name
    except TypeError:
        out["nptype"][k] = "TypeError"
def refuses(fn):
    try:
        fn()
    except TypeError:
        return "TypeError"
    except Exception as exc:
        return type(exc).__name__
    return "accepted"
out["refuses"]["Runtime(None)"] = refuses(lambda: trt.Runtime(None))
out["refuses"]["OnnxParser(object(), Logger())"] = refuses(lambda: trt.OnnxParser(object(), trt.Logger()))
out["refuses"]["Builder(None)"] = refuses(lambda: trt.Builder(None))
print(json.dumps(out))
'''


def placeholder_libs(where: Path, major: str) -> None:
    """The named-as-such stand-ins for TensorRT's libraries: symbols only, each returns 0."""
    for lib, symbols in ENTRY_POINTS.items():
        src = where / f"{lib}.c"
        src.write_text("/* PLACEHOLDER, not TensorRT: satisfies the dynamic linker for API introspection. */\n"
                       + "".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(where / f"{lib}.so.{major}"), str(src)], check=True)


def record(version: str, work: Path) -> dict:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(work / "wheels"),
                    f"tensorrt-cu12-bindings=={version}"], check=True)
    wheel = next((work / "wheels").glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    site = work / f"site-{version}"
    zipfile.ZipFile(wheel).extractall(site)
    libs = work / f"libs-{version}"
    libs.mkdir()
    placeholder_libs(libs, version.split(".")[0])
    env = {"LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps([USED, ENUMS])], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", nargs="+", default=["10.16.1.11", "11.4.0.106"])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tensorrt_api.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        surface = {v: record(v, Path(tmp)) for v in args.versions}
    args.out.write_text(json.dumps({"recorded_with": "scripts/record_tensorrt_api.py (real bindings, placeholder "
                                    "libraries: no TensorRT ran)", "versions": surface}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {', '.join(surface)}")


if __name__ == "__main__":
    main()
