"""Nothing the CLI or the library runs writes into the working directory. The whole suite is guarded too: conftest.pytest_sessionfinish fails the
run when the repository's `git status` or the working directory changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
CLI = [sys.executable, "-m", "sacvit_edge.cli"]


@pytest.mark.slow
def test_int8_calibration_and_fp16_derivation_leave_the_working_directory_empty(tmp_path):
    pytest.importorskip("onnx", reason="the [export] extra is not installed")
    work = tmp_path / "cwd"
    work.mkdir()
    export = shutil.copytree(BUNDLED, tmp_path / "exp")
    from sacvit_edge.datasets import folder_name
    from sacvit_edge.manifest import read_manifest

    data = tmp_path / "data"
    for name in read_manifest(BUNDLED).class_names:  # sample files spell the label with '-' for ' ' and '/'
        (sample,) = [s for s in SAMPLES if s.stem.split("_", 1)[1] == name.replace("/", "-").replace(" ", "-")]
        folder = data / folder_name(name)
        folder.mkdir(parents=True)
        for i in range(3):
            shutil.copy(sample, folder / f"{i}_{sample.name}")
    # a relative path, as the README writes it (the library once changed directory and lost it)
    calib = subprocess.run([*CLI, "calibrate", "../exp", "--data", str(data), "--int8", "--batch", "4",
                            "--timing-reps", "1"], cwd=work, capture_output=True, text=True, timeout=900)
    assert calib.returncode == 0, calib.stderr[-2000:]
    fp16 = subprocess.run([*CLI, "build-engine", str(export), "--format", "onnx", "--precision", "fp16"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert fp16.returncode == 0, fp16.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir()) == []
    names = {p.name for p in export.iterdir()}
    assert {"ee.int8.onnx", "sac.int8.onnx", "ee.fp16.onnx", "calibration.json"} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "data", "exp"]  # no temporaries beside it


def test_import_layers_hold():
    """The import-linter contracts (.importlinter: layers, a torch-free deployment path,
    independent backends, no cycles counting imports inside functions) hold. CI runs this."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "lint_imports.py")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]
