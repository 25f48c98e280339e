"""The built wheel on a core-only install: what `pip install sacvit-edge` gives a robot's container.

Builds the wheel from this checkout, installs it with its core dependencies only into a fresh
virtual environment (no torch, no onnx, no matplotlib), and runs, outside the checkout, an
ONNX Runtime prediction on an export directory made by the checkout's exporter, `sacvit-edge
demo`, and a command that needs an extra. Fails if an import or a data file is missing.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> tuple[Path, Path]:
    import shutil

    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"  # a clean copy: a stale build/ in the checkout cannot leak into the wheel
    for name in ("sacvit_edge", "export", "runtimes", "calibration"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", src], cwd=work)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((work / "dist").glob("sacvit_edge-*.whl"))
    venv = work / "core"
    made = _run([sys.executable, "-m", "venv", venv], cwd=work)
    assert made.returncode == 0, made.stderr
    installed = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=work)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return wheel, venv


def test_wheel_carries_samples_and_the_bundled_export(core_venv):
    wheel, _ = core_venv
    names = zipfile.ZipFile(wheel).namelist()
    samples = [n for n in names if n.startswith("sacvit_edge/assets/samples/") and n.endswith(".png")]
    assert len(samples) == 10
    for f in ("ee.onnx", "sac.onnx", "manifest.json"):
        assert f"sacvit_edge/assets/sacvit_tiny_112/{f}" in names
    for pkg in ("sacvit_edge/export/bundle.py", "sacvit_edge/runtimes/ort.py", "sacvit_edge/bench/run.py",
                "sacvit_edge/calibration/__init__.py", "sacvit_edge/manifest.py", "sacvit_edge/gate.py"):
        assert pkg in names


def test_core_install_has_no_heavy_packages(core_venv, tmp_path):
    _, venv = core_venv
    probe = ("import importlib.util as u; print([m for m in ('torch', 'onnx', 'matplotlib') if u.find_spec(m)], "
             "[m for m in ('numpy', 'onnxruntime', 'PIL', 'typer', 'rich') if not u.find_spec(m)])")
    out = _run([venv / "bin" / "python", "-c", probe], cwd=tmp_path)
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr


def test_core_install_predicts_on_an_export_directory(core_venv, random_export, tmp_path):
    _, venv = core_venv
    sample = REPO / "sacvit_edge" / "assets" / "samples" / "00000_Ankle-boot.png"
    code = ("import sys; from sacvit_edge import EdgeClassifier; "
            f"p = EdgeClassifier({str(random_export)!r}, backend='auto').predict({str(sample)!r}); "
            "assert 0 <= p.class_id < 10 and 0 < p.confidence <= 1; "
            "print(sorted(m for m in ('torch', 'onnx', 'matplotlib') if m in sys.modules), p.label)")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[] "), out.stdout


def test_core_install_demo_outside_the_checkout(core_venv, tmp_path):
    import re

    _, venv = core_venv
    out = _run([venv / "bin" / "sacvit-edge", "demo"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "using the bundled export" in out.stdout
    right, total = map(int, re.search(r"(\d+)/(\d+) correct", out.stdout).groups())
    assert total == 10 and right >= 8, out.stdout


def test_core_install_names_the_extra_a_command_needs(core_venv, random_ckpt, tmp_path):
    _, venv = core_venv
    for args, extra in ((["export", random_ckpt, "-o", tmp_path / "x"], "export"), (["eval", random_ckpt], "train"),
                        (["bench"], "bench")):
        out = _run([venv / "bin" / "sacvit-edge", *args], cwd=tmp_path)
        text = out.stdout + out.stderr
        assert out.returncode == 4 and f"pip install 'sacvit-edge[{extra}]'" in text and "Traceback" not in text, text


def test_core_install_profiles_on_image_files(core_venv, tmp_path):
    """profile on the user's images needs no extra: GFLOPs come from the manifest's cost table."""
    import json

    _, venv = core_venv
    site = _run([venv / "bin" / "python", "-c", "import sacvit_edge.cli as c; print(c.BUNDLED_EXPORT)"], cwd=tmp_path)
    bundled = site.stdout.strip()
    out = _run([venv / "bin" / "sacvit-edge", "profile", bundled, "--images", REPO / "sacvit_edge" / "assets" / "samples",
                "--iters", "5", "--warmup", "1", "--json", tmp_path / "p.json"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads((tmp_path / "p.json").read_text())
    assert rep["latency_ms"]["count"] == 5 and rep["gflops"]["ee"] > 0 and rep["environment"]["torch"] is None
    out = _run([venv / "bin" / "sacvit-edge", "profile", bundled], cwd=tmp_path)  # default: synthetic canvases
    assert out.returncode == 4 and "--images DIR" in out.stdout + out.stderr and "[train]" in out.stdout + out.stderr


def test_core_install_calibrates_and_evaluates_on_a_folder(core_venv, random_export, tmp_path):
    """calibrate and eval of an export directory on the user's folder run on the core install
    (ONNX Runtime, no torch); INT8 names the extra it needs."""
    import json
    import shutil

    from PIL import Image

    from sacvit_edge.datasets import folder_name
    from sacvit_edge.manifest import read_manifest

    _, venv = core_venv
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in read_manifest(random_export).class_names:
        (data / folder_name(name)).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(data / folder_name(name) / f"{i}.png")
    exp = tmp_path / "exp"
    shutil.copytree(random_export, exp)
    out = _run([venv / "bin" / "sacvit-edge", "calibrate", exp, "--data", data, "--batch", "4", "--timing-reps", "1"],
               cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "only 30 calibration images" in out.stderr and "install [bench] for the PNG plot" in out.stdout
    cal = json.loads((exp / "calibration.json").read_text())
    assert cal["environment"]["backend"] == "onnxruntime" and cal["dataset"]["images"] == 30
    js = tmp_path / "e.json"
    out = _run([venv / "bin" / "sacvit-edge", "eval", exp, "--data", data, "--json", js], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(js.read_text())["eta_source"] == "calibrated"
    out = _run([venv / "bin" / "sacvit-edge", "calibrate", exp, "--data", data, "--int8"], cwd=tmp_path)
    assert out.returncode == 4 and "pip install 'sacvit-edge[export]'" in out.stdout + out.stderr
