"""Data safety: no command deletes what sacvit-edge did not write, concurrent writers serialise,
and the bad inputs of the newer surfaces (outputs, streams, video, deadlines, backend options)
get the project's own errors. Every test runs inside a temporary directory; each one fails on
the code before issue 19 (which swapped and deleted any existing -o directory)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sacvit_edge import EdgeClassifier
from sacvit_edge.atomic import MARKER, DirectoryLock, check_replaceable
from sacvit_edge.cli import app
from sacvit_edge.errors import ConfigError, DataError, ExportError, OutputError
from sacvit_edge.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
DEAD_PID = 99_999_999  # above Linux's largest pid_max (2**22): never a live process
runner = CliRunner()


def user_files(root: Path) -> Path:
    """A directory as a user keeps one: a note and a sub-folder of data."""
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("my notes")
    (root / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return root


def assert_user_files(root: Path) -> None:
    assert (root / "notes.txt").read_text() == "my notes"
    assert (root / "sub" / "data.csv").read_text() == "a,b\n1,2\n"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory) -> Path:
    """One bundled sample per class, as an ImageFolder (class folder = label in the file name)."""
    from sacvit_edge.datasets import folder_name

    root = tmp_path_factory.mktemp("samples") / "data"
    for name in read_manifest(BUNDLED).class_names:  # sample files spell the label with '-' for ' ' and '/'
        (sample,) = [s for s in SAMPLES if s.stem.split("_", 1)[1] == name.replace("/", "-").replace(" ", "-")]
        (root / folder_name(name)).mkdir(parents=True)
        shutil.copy(sample, root / folder_name(name) / sample.name)
    return root


def bundled_copy(where: Path) -> Path:
    shutil.copytree(BUNDLED, where)
    return where


# ---- -o onto what the project did not write --------------------------------------------------------
def test_export_refuses_a_directory_of_user_files(in_tmp, random_ckpt):
    target = user_files(in_tmp / "mine")
    mode = stat.S_IMODE(target.stat().st_mode)
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(target)])
    assert r.exit_code == 3, r.output
    assert "not an export directory" in r.output and "notes.txt" in r.output
    assert_user_files(target)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(target), "--force"])  # force never deletes them
    assert r.exit_code == 3, r.output
    assert_user_files(target)
    assert sorted(p.name for p in in_tmp.iterdir()) == ["mine"]  # no lock file, no temporary left


def test_library_export_refuses_user_files_too(in_tmp, random_ckpt):
    from sacvit_edge.export.bundle import export_checkpoint

    target = user_files(in_tmp / "mine")
    with pytest.raises(ExportError, match="not an export directory"):
        export_checkpoint(random_ckpt, target)
    assert_user_files(target)


@pytest.mark.parametrize("where", ["cwd", "cwd_parent", "home", "root", "tempdir"])
def test_protected_places_are_refused_even_with_force(in_tmp, random_ckpt, where):
    place = {"cwd": in_tmp, "cwd_parent": in_tmp.parent, "home": Path.home(), "root": Path("/"),
             "tempdir": Path(tempfile.gettempdir())}[where]
    sentinel = in_tmp / "keep.txt"
    sentinel.write_text("x")
    mode = stat.S_IMODE(place.stat().st_mode)
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(place), "--force"])
    assert r.exit_code == 3, r.output
    assert sentinel.read_text() == "x" and stat.S_IMODE(place.stat().st_mode) == mode


def test_export_refuses_the_parent_of_its_checkpoint(in_tmp, random_ckpt):
    home = in_tmp / "project"
    home.mkdir()
    ckpt = Path(shutil.copy(random_ckpt, home / "model.pt"))
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(home), "--force"])
    assert r.exit_code == 3 and "holds the source" in r.output, r.output
    assert ckpt.is_file()
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(ckpt)])
    assert r.exit_code == 3 and "source itself" in r.output, r.output


def test_calibrate_refuses_the_parent_of_its_source(in_tmp, sample_folder):
    parent = in_tmp / "p"
    src = bundled_copy(parent / "src")
    (parent / "sibling.txt").write_text("mine")
    r = runner.invoke(app, ["calibrate", str(src), "--data", str(sample_folder), "-o", str(parent)])
    assert r.exit_code == 3 and "holds the source" in r.output, r.output
    assert (parent / "sibling.txt").read_text() == "mine"
    read_manifest(src)  # untouched
    r = runner.invoke(app, ["calibrate", str(src), "--data", str(sample_folder), "-o", str(user_files(in_tmp / "u"))])
    assert r.exit_code == 3 and "not an export directory" in r.output, r.output
    assert_user_files(in_tmp / "u")


def test_replacing_an_export_keeps_user_files_and_the_mode(in_tmp, random_ckpt):
    from sacvit_edge.export.bundle import export_checkpoint

    out = in_tmp / "exp"
    export_checkpoint(random_ckpt, out)
    (out / "README.user").write_text("mine")
    out.chmod(0o750)
    m = export_checkpoint(random_ckpt, out, batch_max=4)
    assert m.batch_range == (1, 4)
    assert (out / "README.user").read_text() == "mine"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert not (out / MARKER).exists()
    assert sorted(p.name for p in in_tmp.iterdir()) == ["exp"]


def test_an_empty_directory_is_used_and_a_damaged_export_needs_force(in_tmp, random_ckpt):
    from sacvit_edge.export.bundle import export_checkpoint

    empty = in_tmp / "empty"
    empty.mkdir(mode=0o700)
    export_checkpoint(random_ckpt, empty)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700 and read_manifest(empty)
    damaged = in_tmp / "damaged"
    export_checkpoint(random_ckpt, damaged)
    (damaged / "manifest.json").unlink()
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(damaged)])
    assert r.exit_code == 3 and "--force" in r.output, r.output
    assert (damaged / "ee.onnx").is_file()
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(damaged), "--force"])
    assert r.exit_code == 0, r.output
    read_manifest(damaged)
    (damaged / "manifest.json").unlink()
    (damaged / "notes.txt").write_text("mine")  # a damaged export with a user's file: never replaced
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(damaged), "--force"])
    assert r.exit_code == 3 and "notes.txt" in r.output, r.output
    assert (damaged / "notes.txt").read_text() == "mine"


def test_a_file_or_a_link_is_never_an_output_directory(in_tmp, random_ckpt):
    f = in_tmp / "file"
    f.write_text("data")
    with pytest.raises(ExportError, match="not a directory"):
        check_replaceable(f, sources=(random_ckpt,))
    (in_tmp / "real").mkdir()
    (in_tmp / "link").symlink_to(in_tmp / "real")
    with pytest.raises(ExportError, match="symbolic link"):
        check_replaceable(in_tmp / "link")
    assert f.read_text() == "data"


def test_cache_remakes_a_damaged_entry_but_keeps_foreign_files(tmp_path, random_ckpt):
    cache = tmp_path / "cache"
    clf = EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=cache)
    entry = clf.manifest.directory
    clf.close()
    (entry / "sac.onnx").write_bytes(b"damaged")
    EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=cache).close()  # remade
    read_manifest(entry)
    (entry / "sac.onnx").write_bytes(b"damaged")
    (entry / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=cache)
    assert (entry / "notes.txt").read_text() == "mine"


# ---- concurrent writers --------------------------------------------------------------------------
def test_a_second_calibration_waits_for_the_first(in_tmp, sample_folder):
    from sacvit_edge.calibration.calibrate import calibrate_export
    from sacvit_edge.calibration.sweep import Request
    from sacvit_edge.datasets import open_source

    export = bundled_copy(in_tmp / "exp")
    source = open_source(sample_folder, "calibration", read_manifest(export).class_names)
    lock = DirectoryLock(export)
    lock.acquire()  # the first writer (this test) holds the directory
    said: list[str] = []
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(calibrate_export(
        export, source, Request("max_drop", 1.0), batch=4, timing_reps=1, on_step=said.append)))
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive() and not done, "the second writer did not wait"
    assert not (export / "calibration.json").exists()
    assert any(f"process {os.getpid()}" in m for m in said), said
    lock.release()
    worker.join(120)
    assert done and read_manifest(export).calibration is not None
    assert not lock.path.exists()
    with pytest.raises(ExportError, match="another process"):
        with DirectoryLock(export):
            DirectoryLock(export).acquire(timeout=0.2)


def test_two_processes_exporting_one_directory_both_finish_whole(in_tmp, random_ckpt):
    code = ("import sys; from sacvit_edge.export.bundle import export_checkpoint; "
            "print(export_checkpoint(sys.argv[1], sys.argv[2], batch_max=int(sys.argv[3])).batch_range)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(random_ckpt), str(in_tmp / "exp"), str(b)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for b in (3, 5)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert read_manifest(in_tmp / "exp").batch_range in ((1, 3), (1, 5))
    assert sorted(p.name for p in in_tmp.iterdir()) == ["exp"]


# ---- leftovers of killed runs --------------------------------------------------------------------
def test_leftovers_of_killed_runs_are_removed_and_only_they(in_tmp, random_ckpt):
    from sacvit_edge.export.bundle import export_checkpoint

    out = in_tmp / "exp"
    export_checkpoint(random_ckpt, out)
    ours = [in_tmp / f".exp.int8-{DEAD_PID}-ab12", in_tmp / f".exp.tmp-{DEAD_PID}-cd34"]
    for d in ours:
        d.mkdir()
        (d / MARKER).write_text(str(DEAD_PID))
        (d / "ee.int8.onnx").write_bytes(b"x")
    not_ours = in_tmp / f".exp.int8-{DEAD_PID}-user"  # same pattern, no marker: a user's
    not_ours.mkdir()
    (not_ours / "mine.txt").write_text("mine")
    alive = in_tmp / f".exp.tmp-{os.getpid()}-ef56"  # a live writer's
    alive.mkdir()
    (alive / MARKER).write_text(str(os.getpid()))
    scratch = out / f".ee.fp16.onnx.{DEAD_PID}-xy.tmp"
    scratch.write_bytes(b"x")
    export_checkpoint(random_ckpt, out)
    assert not any(d.exists() for d in ours) and not scratch.exists()
    assert (not_ours / "mine.txt").read_text() == "mine" and alive.is_dir()


# ---- refused before any work ---------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["export", "{ckpt}", "-o", "{tmp}/e", "--batch-max", "0"], "--batch-max 0"),
    (["export", "{ckpt}", "-o", "{tmp}/e", "--opset", "0"], "--opset 0"),
    (["calibrate", "{export}", "--timing-reps", "0"], "--timing-reps 0"),
    (["calibrate", "{export}", "--seed", "-1"], "--seed -1"),
    (["predict", "{export}", "--video", "{tmp}/v.avi", "--max-frames", "-1"], "--max-frames -1"),
    (["predict", "{export}", "--video", "{tmp}/v.avi", "--max-frames", "0"], "--max-frames 0"),
    (["predict", "{export}", "--camera", "-1"], "--camera -1"),
    (["export", "{ckpt}", "-o", "{tmp}/e", "--format", "engine", "--workspace", "0"], "--workspace 0"),
    (["build-engine", "{export}", "--workspace", "-1"], "--workspace -1"),
    (["train", "-o", "{tmp}/m.pt", "--batch-size", "0"], "--batch-size 0"),
    (["bench", "-o", "{tmp}/b", "--batch", "0"], "--batch 0"),
])
def test_bad_counts_are_usage_errors(in_tmp, random_ckpt, args, message):
    pytest.importorskip("cv2", reason="the [video] extra is not installed")
    fill = {"ckpt": str(random_ckpt), "tmp": str(in_tmp), "export": str(BUNDLED)}
    r = runner.invoke(app, [a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (in_tmp / "e").exists()


def test_negative_camera_index_never_reaches_opencv():
    pytest.importorskip("cv2", reason="the [video] extra is not installed")
    from sacvit_edge.video import open_frames

    for bad in (-1, -5, True, 10**6, 1.5):
        with pytest.raises(ConfigError, match="camera index"):
            open_frames(bad)  # type: ignore[arg-type]
    # OpenCV itself crashes on -1 (a segmentation fault): the check must come first, in a child to be safe
    code = "from sacvit_edge.video import open_frames\ntry:\n    open_frames(-1)\nexcept Exception as e:\n    print(type(e).__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ConfigError", (r.returncode, r.stderr[-500:])


def test_an_empty_class_folder_is_an_error(tmp_path, sample_folder):
    from sacvit_edge.datasets import open_source

    data = tmp_path / "data"
    shutil.copytree(sample_folder, data)
    for f in (data / "Bag").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="Bag"):
        open_source(data, "calibration", read_manifest(BUNDLED).class_names)


# ---- streams -------------------------------------------------------------------------------------
def test_stream_refuses_what_it_would_misread():
    clf = EdgeClassifier(BUNDLED, backend="onnxruntime")
    frame = np.zeros((120, 160, 3), np.uint8)
    for bad, words in ((frame, "wrap it in a list"), (frame[..., 0], "wrap it in a list"), (None, "iterable"),
                       (5, "iterable"), ("clip.mp4", "open_frames"), (Image.new("RGB", (8, 8)), "wrap it in a list")):
        with pytest.raises(ConfigError, match=words):
            clf.stream(bad)
    stack = np.zeros((3, 112, 112, 3), np.uint8)  # an (N, H, W, C) stack is a stream of N frames
    assert [i for i, _, _ in clf.stream(stack)] == [0, 1, 2]
    clf.close()


def test_deadline_and_backend_options_are_checked():
    for bad in (10**20, 10**400, 3_600_001.0, -1, 0, float("nan"), "5", True):
        with pytest.raises(ConfigError, match="deadline_ms"):
            EdgeClassifier(BUNDLED, backend="onnxruntime", deadline_ms=bad)
    for bad in (5, "slots=2", ["slots"], {1: 2}):
        with pytest.raises(ConfigError, match="backend_options"):
            EdgeClassifier(BUNDLED, backend="onnxruntime", backend_options=bad)  # type: ignore[arg-type]


# ---- video that ends early -----------------------------------------------------------------------
def _clip(path: Path, frames: int = 30) -> Path:
    cv2 = pytest.importorskip("cv2", reason="the [video] extra is not installed")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(frames):
        rgb = np.asarray(Image.open(SAMPLES[i % len(SAMPLES)]).convert("RGB").resize((160, 120)))
        writer.write(rgb[..., ::-1].copy())
    writer.release()
    return path


def test_a_truncated_video_reports_its_frames_and_exits_3(tmp_path):
    clip = _clip(tmp_path / "clip.avi")
    r = runner.invoke(app, ["predict", str(BUNDLED), "--video", str(clip), "--backend", "onnxruntime"])
    assert r.exit_code == 0 and "30 frames" in r.output, r.output
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    r = runner.invoke(app, ["predict", str(BUNDLED), "--video", str(cut), "--backend", "onnxruntime"])
    assert r.exit_code == 3, r.output
    assert "of the 30 frames" in r.output and "truncated" in r.output


# ---- output paths --------------------------------------------------------------------------------
def test_save_overlay_paths_are_checked_before_the_run(in_tmp, monkeypatch):
    afile = in_tmp / "afile"
    afile.write_text("x")
    for target, words in ((afile, "not a directory"), (afile / "under", "cannot write")):
        r = runner.invoke(app, ["predict", str(BUNDLED), str(SAMPLES[0]), "--save-overlay", str(target)])
        assert r.exit_code == 3, r.output
        assert str(target) in r.output and words in r.output
        assert "internal error" not in r.output
    assert afile.read_text() == "x"
    ro = in_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: make the probe see what a user would
        import sacvit_edge.outputs as outputs

        real = outputs.tempfile.mkstemp

        def read_only(*a, dir=None, **k):  # test double of a read-only folder, for this path only
            if dir is not None and Path(dir) == ro:
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    r = runner.invoke(app, ["predict", str(BUNDLED), str(SAMPLES[0]), "--save-overlay", str(ro)])
    assert r.exit_code == 3 and "Permission denied" in r.output and str(ro) in r.output, r.output


def test_a_too_long_image_name_is_its_own_error_row(in_tmp):
    long_name = in_tmp / ("x" * 300 + ".png")
    r = runner.invoke(app, ["predict", str(BUNDLED), str(SAMPLES[0]), str(long_name), str(SAMPLES[1]), "--json",
                            "--backend", "onnxruntime"])
    assert r.exit_code == 3, r.output
    assert "internal error" not in r.output
    import json

    rows = json.loads(r.stdout[r.stdout.index("{"):])["predictions"]
    assert [("error" in row) for row in rows] == [False, True, False]


def test_report_and_checkpoint_outputs_never_replace_other_files(in_tmp, random_ckpt, sample_folder):
    notes = in_tmp / "notes.txt"
    notes.write_text("not json")
    r = runner.invoke(app, ["eval", str(BUNDLED), "--data", str(sample_folder), "--json", str(notes)])
    assert r.exit_code == 3 and "not a JSON report" in r.output, r.output
    r = runner.invoke(app, ["train", "--data", str(sample_folder), "-o", str(notes), "--epochs", "0.01"])
    assert r.exit_code == 3 and "not a sacvit-edge checkpoint" in r.output, r.output
    r = runner.invoke(app, ["tune-eta", str(random_ckpt), "--data", str(sample_folder), "-o", str(notes)])
    assert r.exit_code == 3 and "not a sacvit-edge checkpoint" in r.output, r.output
    assert notes.read_text() == "not json"
    with pytest.raises(OutputError, match="is a directory"):
        from sacvit_edge.outputs import check_report_file

        check_report_file(in_tmp, "--json")


@pytest.mark.parametrize("command", ["export", "overlay", "json", "bench"])
def test_too_long_output_paths_are_named_errors(in_tmp, random_ckpt, command):
    long = in_tmp / ("y" * 300)
    args = {"export": ["export", str(random_ckpt), "-o", str(long)],
            "overlay": ["predict", str(BUNDLED), str(SAMPLES[0]), "--save-overlay", str(long)],
            "json": ["profile", str(BUNDLED), "--iters", "1", "--warmup", "0", "--json", str(long) + ".json"],
            "bench": ["bench", "-o", str(long)]}[command]
    r = runner.invoke(app, args)
    assert r.exit_code == 3, r.output
    assert "File name too long" in r.output and "internal error" not in r.output
    assert sorted(p.name for p in in_tmp.iterdir()) == []
