"""Record the real cuda-python runtime API runtimes/cuda.py calls into tests/fixtures/cuda_python_api.json.

    .venv/bin/python scripts/record_cuda_api.py [--versions 12.4.0 12.9.0 13.4.4]

For each version a throw-away virtual environment gets `pip install cuda-python==VERSION` (NVIDIA's
real bindings; no driver is needed to import them), and a child interpreter records: which module
holds the runtime API (cuda.cudart up to 12.5, cuda.bindings.runtime after), whether every function
and constant runtimes/cuda.py uses exists, the integer values of the enum members it uses, and what
cudaSetDevice(0) does on a machine without an NVIDIA driver (a tuple of an error code, or an
exception). tests/test_cuda_api.py checks runtimes/cuda.py and the cuda-python-level test double
(tests/doubles/fake_cudart.py) against the file, with no network.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r'''
import json, sys
names = json.loads(sys.argv[1])
try:
    from cuda.bindings import runtime as rt
    module = "cuda.bindings.runtime"
except ImportError:
    from cuda import cudart as rt
    module = "cuda.cudart"
out = {"module": module, "members": {}, "values": {}}
for name in names:
    obj = rt
    try:
        for part in name.split("."):
            obj = getattr(obj, part)
        out["members"][name] = True
        if "." in name or name in ("cudaStreamNonBlocking", "cudaEventDisableTiming"):
            out["values"][name] = int(obj)
    except AttributeError:
        out["members"][name] = False
try:
    res = rt.cudaSetDevice(0)
    out["cudaSetDevice_without_driver"] = {"returns": type(res).__name__, "length": len(res),
                                           "error": getattr(res[0], "name", str(res[0]))}
except Exception as exc:
    out["cudaSetDevice_without_driver"] = {"raises": type(exc).__name__, "message": str(exc)[:120]}
print(json.dumps(out))
'''


def used_names() -> list[str]:
    """Every rt.X and rt.X.Y runtimes/cuda.py uses."""
    return sorted(set(re.findall(r"self\.rt\.([A-Za-z_]+(?:\.[A-Za-z_]+)?)", (ROOT / "runtimes" / "cuda.py").read_text())))


def record(version: str, work: Path) -> dict:
    venv = work / f"venv-{version}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"cuda-python=={version}"],
                   check=True)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE, json.dumps(used_names())], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", nargs="+", default=["12.4.0", "12.9.0", "13.4.4"])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "cuda_python_api.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cuda-api-") as tmp:
        surface = {v: record(v, Path(tmp)) for v in args.versions}
    args.out.write_text(json.dumps({"recorded_with": "scripts/record_cuda_api.py (real cuda-python, no NVIDIA driver)",
                                    "versions": surface}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {', '.join(surface)}")


if __name__ == "__main__":
    main()
