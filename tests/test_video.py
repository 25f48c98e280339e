"""Video files and cameras (the [video] extra): predict --video / --camera and the example app,
on a clip generated here from the bundled samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sacvit_edge.cli import app
from sacvit_edge.errors import DataError

cv2 = pytest.importorskip("cv2", reason="the [video] extra (opencv-python-headless) is not installed")

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """20 frames of 160x120 (4:3): the samples, two frames each, written by OpenCV as MJPG/AVI."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert writer.isOpened()
    for s in SAMPLES:
        rgb = np.asarray(Image.open(s).convert("RGB").resize((160, 120)))
        for _ in range(2):
            writer.write(rgb[..., ::-1].copy())  # OpenCV writes BGR
    writer.release()
    return path


def test_open_frames_reads_the_clip_and_names_bad_sources(clip, tmp_path):
    from sacvit_edge.video import open_frames

    frames = list(open_frames(clip))
    assert len(frames) == 20 and frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    assert len(list(open_frames(clip, max_frames=5))) == 5
    with pytest.raises(DataError, match="no such video file"):
        open_frames(tmp_path / "missing.avi")
    (tmp_path / "not.avi").write_bytes(b"not a video")
    with pytest.raises(DataError, match="cannot be opened"):
        open_frames(tmp_path / "not.avi")
    with pytest.raises(DataError, match="camera 97: cannot be opened"):
        open_frames(97)  # no camera here


def test_predict_video_classifies_every_frame_like_predict(clip, tmp_path):
    from sacvit_edge import EdgeClassifier

    r = runner.invoke(app, ["predict", str(EXPORT), "--video", str(clip), "--backend", "onnxruntime", "--json",
                            "--save-overlay", str(tmp_path / "ov")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [f["frame"] for f in data["frames"]] == list(range(20)) and data["summary"]["frames"] == 20
    clf = EdgeClassifier(EXPORT, backend="onnxruntime", color="bgr")
    cap = cv2.VideoCapture(str(clip))
    ok, first = cap.read()
    cap.release()
    assert ok and clf.predict(first).label == data["frames"][0]["label"]
    assert len(list((tmp_path / "ov").glob("frame_*.png"))) == 20
    right = sum(data["frames"][2 * i]["label"].replace("/", "-").replace(" ", "-") in s.stem for i, s in enumerate(SAMPLES))
    assert right >= 6  # the shipped model on 4:3 frames of the samples, stretched as trained
    r = runner.invoke(app, ["predict", str(EXPORT), "--video", str(clip), "--backend", "onnxruntime"])
    assert r.exit_code == 0 and "20 frames" in r.output and "frames/s" in r.output


def test_predict_camera_without_a_camera_and_bad_source_combinations(clip):
    r = runner.invoke(app, ["predict", str(EXPORT), "--camera", "97", "--backend", "onnxruntime"])
    assert r.exit_code == 3 and "camera 97: cannot be opened" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["predict", str(EXPORT), str(SAMPLES[0]), "--video", str(clip)])
    assert r.exit_code == 2 and "one of them" in r.output
    r = runner.invoke(app, ["predict", str(EXPORT)])
    assert r.exit_code == 2


def test_example_camera_app_runs_on_the_clip(clip, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "camera_app.py"), str(EXPORT), "--video", str(clip),
                          "--save", str(tmp_path / "frames")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert sum(line.startswith("frame ") for line in lines) == 20 and "20 frames" in lines[-1]
    assert len(list((tmp_path / "frames").glob("*.png"))) == 20
    out = subprocess.run([sys.executable, str(REPO / "examples" / "camera_app.py"), str(EXPORT), "--camera", "97"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "camera 97" in out.stderr
