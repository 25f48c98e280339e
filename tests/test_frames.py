"""What a camera or robot app meets: BGR frames, frame dtypes, honest timings, and the errors and
CLI output of issue 13 (the part of it done so far)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sacvit_edge import EdgeClassifier
from sacvit_edge.cli import app
from sacvit_edge.errors import CheckpointError, ConfigError, ExportError, ImageError
from sacvit_edge.images import load_image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))
runner = CliRunner()


@pytest.fixture(scope="module")
def colour_export(tmp_path_factory):
    """A random model whose answer depends on colour: its patch embedding reads only the red channel."""
    from sacvit_edge.checkpoint import save_checkpoint
    from sacvit_edge.config import preset
    from sacvit_edge.export.bundle import export_checkpoint
    from sacvit_edge.model import build_model

    torch.manual_seed(1)
    model = build_model(preset("tiny_112", embed_dim=32, depth=3, num_heads=2, reuse_layer=1, gca_start_block=0))
    with torch.no_grad():
        model.patch_embed.proj.weight[:, 1:] = 0  # green and blue are invisible
        model.ee_head.weight.mul_(200)
        model.head.weight.mul_(200)
    d = tmp_path_factory.mktemp("colour")
    path = save_checkpoint(d / "c.pt", model, [f"c{i}" for i in range(10)], eta=0.5)
    return export_checkpoint(path, d / "exp").directory


def _frame() -> np.ndarray:
    rng = np.random.default_rng(3)
    f = np.zeros((112, 112, 3), np.uint8)
    f[..., 0] = rng.integers(0, 60, (112, 112))     # dark red
    f[..., 2] = rng.integers(180, 255, (112, 112))  # bright blue
    return f


def test_bgr_frames_change_the_answer_of_a_colour_model_and_color_fixes_it(colour_export):
    rgb = _frame()
    bgr = rgb[..., ::-1].copy()  # what OpenCV delivers
    clf = EdgeClassifier(colour_export, backend="onnxruntime")
    truth = clf.predict(rgb)
    wrong = clf.predict(bgr)  # read as RGB: red and blue swapped
    assert (wrong.class_id, round(wrong.confidence, 4)) != (truth.class_id, round(truth.confidence, 4))
    for p in (clf.predict(bgr, color="bgr"), EdgeClassifier(colour_export, backend="onnxruntime", color="bgr").predict(bgr)):
        assert p.class_id == truth.class_id and abs(p.confidence - truth.confidence) < 1e-6
    bgra = np.concatenate([bgr, np.full((112, 112, 1), 255, np.uint8)], 2)
    p = clf.predict(bgra, color="bgr")  # BGRA with an opaque alpha: the same frame
    assert p.class_id == truth.class_id and abs(p.confidence - truth.confidence) < 1e-6
    with pytest.raises(ConfigError, match="color"):
        EdgeClassifier(colour_export, backend="onnxruntime", color="BGR?")
    with pytest.raises(ImageError, match="color"):
        clf.predict(rgb, color="hsv")


def test_frame_dtypes_convert_as_users_expect():
    rgb = _frame()
    assert np.array_equal(load_image(rgb.astype(np.uint16) * 257), rgb)  # 16-bit full range
    assert np.array_equal(load_image(rgb.astype(np.float32) / 255), rgb)  # float in [0, 1]
    rgba = np.concatenate([rgb, np.zeros((112, 112, 1), np.uint8)], 2)
    assert load_image(rgba).max() == 0  # transparent composites on black, as for PNG files
    with pytest.raises(ImageError, match="astype"):
        load_image(rgb.astype(np.int64))
    for empty in (np.zeros((0, 5), np.uint8), np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0, 3), np.uint8)):
        with pytest.raises(ImageError, match="empty"):
            load_image(empty)


def test_timings_cover_decoding_and_say_whose_they_are(random_export, tmp_path):
    clf = EdgeClassifier(random_export, backend="onnxruntime")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(big)
    t0 = time.perf_counter()
    p = clf.predict(big)
    wall = (time.perf_counter() - t0) * 1e3
    assert p.timings["preprocess"] > p.timings["ee"]  # decoding a 3 Mpx PNG outweighs the tiny EE engine
    assert p.timings["total"] <= wall and p.timings["total"] >= 0.8 * wall  # total is the whole call
    batch = clf.predict_batch([SAMPLES[0], SAMPLES[1], SAMPLES[2]])
    assert {q.batch_size for q in batch} == {3} and batch[0].timings == batch[2].timings
    assert batch[0].timings is not batch[1].timings


def test_error_messages_a_user_meets(tmp_path, random_export):
    with pytest.raises(ExportError, match="missing.pt: no such file"):
        EdgeClassifier(tmp_path / "missing.pt")
    r = runner.invoke(app, ["profile", str(random_export), "--images", str(tmp_path / "nope")])
    assert r.exit_code == 3 and "no such directory" in r.output
    from sacvit_edge.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="not a checkpoint") as info:
        load_checkpoint(SAMPLES[0])  # a PNG
    assert "weights_only" not in str(info.value)
    r = runner.invoke(app, ["export", str(SAMPLES[0]), "-o", str(tmp_path / "x")])
    assert r.exit_code == 3 and "not a checkpoint" in r.output and "weights_only" not in r.output


def test_predict_takes_a_directory_and_shows_names_and_per_image_time(tmp_path, random_export, monkeypatch):
    import sacvit_edge.cli as cli

    monkeypatch.setattr(cli.console, "width", 200)  # a wide terminal: nothing wraps
    d = tmp_path / "imgs"
    d.mkdir()
    for s in SAMPLES[:3]:
        (d / s.name).write_bytes(s.read_bytes())
    r = runner.invoke(app, ["predict", str(random_export), str(d), "--backend", "onnxruntime", "--json"])
    assert r.exit_code == 0, r.output
    files = [row["file"] for row in json.loads(r.output)["predictions"]]
    assert files == [str(d / s.name) for s in SAMPLES[:3]]  # sorted, full paths in JSON
    r = runner.invoke(app, ["predict", str(random_export), str(d), "--backend", "onnxruntime", "--batch"])
    assert r.exit_code == 0 and "ms/image (batch of 3)" in r.output
    assert all(s.name in r.output for s in SAMPLES[:3]) and str(d) not in r.output  # names, not cut paths
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["predict", str(random_export), str(tmp_path / "empty")])
    assert r.exit_code == 3 and "no image files" in r.output


def test_eval_writes_json_only_when_asked(tmp_path, random_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["eval", str(random_ckpt), "--limit", "16"])
    assert r.exit_code == 0, r.output
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_cache_export_is_announced(tmp_path, random_ckpt, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="sacvit_edge.classifier"):
        EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=tmp_path / "c")
    assert "exporting" in caplog.text and str(tmp_path / "c") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sacvit_edge.classifier"):
        EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=tmp_path / "c")
    assert "exporting" not in caplog.text  # once


@pytest.mark.parametrize("mode", ["stretch", "center_crop", "letterbox"])
def test_resize_modes_and_target_boxes_in_frame_coordinates(random_export, mode):
    """A 224x112 frame whose right half is black: the boxes map back onto the frame; with
    center_crop every box lies in the central square, with letterbox none leaves the frame."""
    clf = EdgeClassifier(random_export, backend="onnxruntime", eta="never", resize=mode)
    frame = np.zeros((112, 224, 3), np.uint8)
    frame[:, :112] = np.asarray(Image.open(SAMPLES[0]).convert("RGB"))
    p = clf.predict(frame)
    assert p.target_boxes and len(p.target_boxes) <= p.num_target_tokens
    if mode != "letterbox":
        assert len(p.target_boxes) == p.num_target_tokens  # only letterbox bars hold cells outside the frame
    for left, top, right, bottom in p.target_boxes:
        assert 0 <= left < right <= 224 and 0 <= top < bottom <= 112
        if mode == "center_crop":
            assert 56 <= left and right <= 168
        if mode == "stretch":
            assert right - left == 32 and bottom - top == 16  # a 16x16 model cell, stretched 2x horizontally
    boxes = {m: EdgeClassifier(random_export, backend="onnxruntime", eta="never", resize=m).predict(frame).target_boxes
             for m in ("stretch", "letterbox")}
    assert boxes["stretch"] != boxes["letterbox"]  # the mode changes what the model sees
    square = np.asarray(Image.open(SAMPLES[0]).convert("RGB"))
    same = [EdgeClassifier(random_export, backend="onnxruntime", resize=m).predict(square) for m in
            ("stretch", "center_crop", "letterbox")]
    assert len({(q.class_id, round(q.confidence, 5)) for q in same}) == 1  # a square frame is the same in all modes
    with pytest.raises(ConfigError, match="resize"):
        EdgeClassifier(random_export, backend="onnxruntime", resize="fill")


def test_draw_prediction_and_save_overlay(tmp_path, random_export):
    from sacvit_edge import draw_prediction

    clf = EdgeClassifier(random_export, backend="onnxruntime", eta="never")
    p = clf.predict(SAMPLES[0])
    img = draw_prediction(SAMPLES[0], p)
    arr = np.asarray(img)
    plain = np.asarray(Image.open(SAMPLES[0]).convert("RGB"))
    factor = 4  # a 112 px frame is drawn at 448 px (pixels repeated) so the label hides little of it
    assert img.size == (112 * factor, 112 * factor) and not np.array_equal(arr[::factor, ::factor], plain)
    outside = np.ones((112, 112), bool)  # pixels under no outline and below the label banner
    outside[:20] = False
    for l, t, r, b in p.target_boxes:
        outside[max(0, t - 1):b + 1, max(0, l - 1):r + 1] = False
    assert (arr[::factor, ::factor][outside] == plain[outside]).all()  # there the picture is the frame itself
    left, top, right, bottom = (v * factor for v in p.target_boxes[0])
    assert tuple(arr[top + 20 if top + 20 < bottom - 1 else bottom - 1, left]) == (255, 64, 32) or \
        (arr[top:bottom, left] == (255, 64, 32)).all(axis=1).any()  # the outline is drawn on the box
    r = runner.invoke(app, ["predict", str(random_export), str(SAMPLES[0]), str(SAMPLES[1]), "--backend", "onnxruntime",
                            "--save-overlay", str(tmp_path / "ov")])
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (tmp_path / "ov").iterdir())
    assert written == [f"0000_{SAMPLES[0].stem}.png", f"0001_{SAMPLES[1].stem}.png"]
    assert Image.open(tmp_path / "ov" / written[0]).size == (448, 448)


def _frames(n: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(SAMPLES[i % len(SAMPLES)]).convert("RGB")) for i in range(n)]


@pytest.mark.parametrize("overlap", [False, True])
def test_stream_equals_predict_in_order(random_export, overlap):
    frames = _frames(12)
    probe = EdgeClassifier(random_export, backend="onnxruntime", eta="never").run(
        EdgeClassifier(random_export, backend="onnxruntime").preprocess(frames))
    eta = float(np.median(probe.ee_probs.max(1)))  # about half the frames exit
    clf = EdgeClassifier(random_export, backend="onnxruntime", eta=eta)
    expected = [clf.predict(f) for f in frames]
    s = clf.stream(iter(frames), overlap=overlap)
    got = list(s)
    assert [i for i, _, _ in got] == list(range(12)) and s.dropped == 0
    for (_, frame, p), e in zip(got, expected):
        assert (p.class_id, p.num_target_tokens, p.target_boxes) == (e.class_id, e.num_target_tokens, e.target_boxes)
        assert abs(p.confidence - e.confidence) < 1e-6
    assert {p.exited_early for _, _, p in got} == {True, False}
    snap = s.monitor.snapshot()
    assert snap["frames"] == 12 and snap["fps"] > 0 and 0 < snap["p50_ms"] <= snap["p99_ms"]
    assert snap["exit_rate"] == pytest.approx(np.mean([e.exited_early for e in expected]))


def test_stream_drops_oldest_frames_instead_of_building_a_backlog(random_export):
    """A camera that delivers faster than the consumer: with drop='oldest' frames are skipped
    (counted), the ones delivered are the newest, and nothing waits in a growing queue."""
    clf = EdgeClassifier(random_export, backend="onnxruntime")
    frames = _frames(40)

    def camera():
        for f in frames:
            time.sleep(0.002)  # 500 fps
            yield f

    s = clf.stream(camera(), max_inflight=2, drop="oldest")
    seen = []
    for i, _, _ in s:
        seen.append(i)
        time.sleep(0.03)  # a slow app
    assert s.dropped > 0 and len(seen) + s.dropped == 40
    assert seen == sorted(seen) and seen[-1] == 39  # in order, and the last frame is not lost
    s = clf.stream(camera(), max_inflight=2, drop="none")
    assert [i for i, _, _ in s] == list(range(40)) and s.dropped == 0


def test_stream_errors(random_export):
    clf = EdgeClassifier(random_export, backend="onnxruntime")
    for overlap in (False, True):
        with pytest.raises(ImageError, match="shape"):
            list(clf.stream([_frames(1)[0], np.zeros((3, 3, 3, 3), np.uint8)], overlap=overlap))

    def broken():
        yield _frames(1)[0]
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="unplugged"):
        list(clf.stream(broken()))
    for bad in (dict(drop="newest"), dict(max_inflight=0), dict(eta=2)):
        with pytest.raises(ConfigError):
            clf.stream([], **bad)


def test_help_shows_flags_as_flags():
    for cmd in ([], ["predict"], ["export"], ["profile"], ["bench"], ["tune-eta"], ["train"], ["eval"], ["demo"]):
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0 and "<bool>" not in r.output, cmd


def test_cli_texts_a_user_meets(tmp_path):
    r = runner.invoke(app, ["profile", "--help"])
    assert "also what runs without --images" in r.output
    r = runner.invoke(app, ["train", "--help"])
    for text in ("passes over the training set", "images per optimiser step", "smallest target count",
                 "largest target count"):
        assert text in " ".join(r.output.split()), text
    r = runner.invoke(app, ["train", "-o", str(tmp_path / "t.pt"), "--limit", "64", "--epochs", "1", "--batch-size",
                            "32", "--eval-limit", "32", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "per epoch" in r.output and "{'epoch'" not in r.output  # a table, not raw dicts
