"""EdgeClassifier: inputs, batching, threads, errors, and parity with the PyTorch model."""

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacvit_edge import EdgeClassifier, Prediction
from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.data import ClutteredFashionMNIST
from sacvit_edge.errors import BackendError, ConfigError, ExportError, ImageError, SacvitError
from sacvit_edge.train import to_input
from helpers import torch_early_exit

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sacvit_edge" / "assets" / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def canvases():
    ds = ClutteredFashionMNIST("test", limit=24)
    x, y = next(ds.batches(24))
    return x.copy(), y


@pytest.fixture(scope="module")
def eta(random_export, canvases):
    """The median EE confidence: about half the images exit, half go to the SAC stage."""
    probe = EdgeClassifier(random_export, backend="onnxruntime", eta=1.0)
    conf = probe.backend.run_ee(probe.preprocess(list(canvases[0]))).logits
    p = np.exp(conf - conf.max(1, keepdims=True))
    return float(np.median((p / p.sum(1, keepdims=True)).max(1)))


@pytest.fixture(scope="module")
def clf(random_export, eta):
    return EdgeClassifier(random_export, backend="onnxruntime", eta=eta)


def test_prediction_fields(clf, canvases):
    preds = [clf.predict(img) for img in canvases[0]]
    assert {p.exited_early for p in preds} == {True, False}, "the fixture must show both kinds of prediction"
    for p in preds:
        assert isinstance(p, Prediction) and clf.backend_name == "onnxruntime"
        assert 0 <= p.class_id < 10 and p.label == clf.class_names[p.class_id]
        assert len(p.topk) == 5 and p.topk[0][0] == p.class_id and p.topk[0][2] == pytest.approx(p.confidence)
        assert all(p.topk[i][2] >= p.topk[i + 1][2] for i in range(4))
        assert set(p.timings) == {"preprocess", "ee", "host", "sac", "total"} and p.batch_size == 1
        assert p.timings["total"] >= p.timings["preprocess"] + p.timings["ee"] + p.timings["sac"]
        if p.exited_early:
            assert p.target_mask is None and p.num_target_tokens == 0 and p.target_boxes == []
            assert p.confidence >= clf.eta
        else:
            assert p.target_mask.shape == (7, 7) and p.target_mask.sum() == p.num_target_tokens > 0
            assert clf.k_range[0] <= p.num_target_tokens <= clf.k_range[1] and p.target_boxes
    with pytest.raises(dataclasses.FrozenInstanceError):
        preds[0].class_id = 3  # type: ignore[misc]


def test_batch_equals_one_at_a_time_with_mixed_counts(clf, canvases):
    images = list(canvases[0])
    batch = clf.predict_batch(images)
    single = [clf.predict(img) for img in images]
    counts = {p.num_target_tokens for p in batch}
    assert 0 in counts and len(counts - {0}) >= 2, f"test needs images that take different paths: {counts}"
    for a, b in zip(batch, single):
        assert (a.class_id, a.exited_early, a.num_target_tokens) == (b.class_id, b.exited_early, b.num_target_tokens)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert (a.target_mask is None) == (b.target_mask is None)
        if a.target_mask is not None:
            assert np.array_equal(a.target_mask, b.target_mask)


def test_matches_pytorch_reference(clf, random_ckpt, canvases):
    model = load_checkpoint(random_ckpt).model
    x = to_input(canvases[0])
    ref = torch_early_exit(model, x, clf.eta, per_image=True)  # one image at a time, unpadded
    res = clf.run(x.numpy())
    assert 0 < res.exited.sum() < len(x) and len(set(res.counts[~res.exited])) >= 2  # grouped, padded calls
    assert np.array_equal(res.exited, ref["exited"]) and np.array_equal(res.counts, ref["counts"])
    assert np.abs(res.probs - ref["probs"]).max() < 1e-4


def test_eta_extremes(clf, canvases):
    imgs = list(canvases[0][:4])
    assert all(p.exited_early for p in clf.predict_batch(imgs, eta=0.0))
    assert not any(p.exited_early for p in clf.predict_batch(imgs, eta=1.0))


def test_input_kinds_agree(clf, tmp_path, canvases):
    arr = canvases[0][1]
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    ref = clf.predict(arr)
    for src in (path, str(path), Image.open(path)):
        assert clf.predict(src).confidence == pytest.approx(ref.confidence, abs=1e-6)


def test_conversions(clf, tmp_path, canvases):
    arr = canvases[0][2]
    gray = arr.mean(2).astype(np.uint8)
    ref_gray = clf.predict(np.repeat(gray[..., None], 3, 2))
    assert clf.predict(gray).confidence == pytest.approx(ref_gray.confidence, abs=1e-6)  # 2-D array
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    assert clf.predict(tmp_path / "g.png").confidence == pytest.approx(ref_gray.confidence, abs=1e-6)
    # 16-bit grayscale PNG: scaled to 8 bits
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert clf.predict(tmp_path / "g16.png").confidence == pytest.approx(ref_gray.confidence, abs=1e-6)
    # RGBA with opaque alpha behaves as RGB
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert clf.predict(tmp_path / "a.png").confidence == pytest.approx(clf.predict(arr).confidence, abs=1e-6)
    # any size is resized
    big = np.asarray(Image.fromarray(arr).resize((224, 224), Image.BILINEAR))
    assert clf.predict(big).class_id in range(10)


def test_exif_rotation(clf, tmp_path, canvases):
    arr = canvases[0][3]
    rotated = np.rot90(arr, k=1).copy()  # stored rotated; EXIF says rotate back
    img = Image.fromarray(rotated)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    Image.fromarray(arr).save(tmp_path / "u.jpg", quality=100)
    from sacvit_edge.images import load_image

    shown = load_image(tmp_path / "r.jpg")
    assert shown.shape == arr.shape
    assert np.abs(shown.astype(int) - load_image(tmp_path / "u.jpg").astype(int)).mean() < 3


def test_threads_equal_sequential(clf, canvases):
    """8 threads released together, each running 30 mixed calls (single images and batches of
    mixed exit paths and target counts) on one shared classifier: every answer equals the
    sequential one."""
    images = list(canvases[0])
    expected = clf.predict_batch(images)
    n_threads, rounds = 8, 30
    start = threading.Barrier(n_threads)
    failures: list[str] = []

    def work(t: int) -> None:
        start.wait()
        rng = np.random.default_rng(t)
        for _ in range(rounds):
            idx = rng.choice(len(images), size=int(rng.integers(1, 6)), replace=False)
            got = clf.predict_batch([images[i] for i in idx]) if len(idx) > 1 else [clf.predict(images[idx[0]])]
            for i, p in zip(idx, got):
                e = expected[i]
                if (p.class_id, p.num_target_tokens) != (e.class_id, e.num_target_tokens) \
                        or abs(p.confidence - e.confidence) > 1e-5:
                    failures.append(f"thread {t} image {i}: {p.class_id}/{p.confidence} vs {e.class_id}/{e.confidence}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert {p.exited_early for p in expected} == {True, False}  # both paths were exercised


@pytest.mark.parametrize("bad, match", [
    (np.full((10, 10, 3), 2.0, np.float32), r"values in \[2, 2\]"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.zeros((10, 10, 3), np.int32), "dtype int32"),
    (np.zeros((10, 10, 5), np.uint8), "shape"),
    (np.zeros((10, 10, 3, 2), np.uint8), "shape"),
    (12, "unsupported image input"),
])
def test_bad_arrays(clf, bad, match):
    with pytest.raises(ImageError, match=match):
        clf.predict(bad)


def test_bad_files(clf, tmp_path, canvases):
    Image.fromarray(canvases[0][0]).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"\x00garbage" * 50)
    for name, match in (("trunc.png", "trunc.png: corrupt or truncated"), ("junk.jpg", "junk.jpg: not an image"),
                        ("missing.png", "no such image")):
        with pytest.raises(ImageError, match=match):
            clf.predict(tmp_path / name)
    with pytest.raises(ImageError, match="sequence"):
        clf.predict_batch(tmp_path / "ok.png")
    with pytest.raises(ImageError, match="float32"):
        clf.run(np.zeros((1, 3, 64, 64), np.float32))


def test_bad_directories_and_backends(tmp_path, random_export, random_ckpt):
    with pytest.raises(ExportError, match="nope: no such file or directory"):
        EdgeClassifier(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="incomplete export, manifest.json is missing"):
        EdgeClassifier(tmp_path / "empty")
    d = tmp_path / "d"
    shutil.copytree(random_export, d)
    data = json.loads((d / "manifest.json").read_text())
    data["files"]["sac.onnx"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="do not match the manifest"):
        EdgeClassifier(d)
    # engines swapped: hashes updated so only the I/O check can catch it (ONNX Runtime runs the
    # attention graphs; the opset-17 pair is what the other backends open, checked the same way)
    import hashlib
    from sacvit_edge.runtimes.ort import OrtBackend

    for ee_file, sac_file in (("ee.attention.onnx", "sac.attention.onnx"), ("ee.onnx", "sac.onnx")):
        shutil.rmtree(d)
        shutil.copytree(random_export, d)
        (d / ee_file).write_bytes((random_export / sac_file).read_bytes())
        data = json.loads((d / "manifest.json").read_text())
        data["files"][ee_file] = hashlib.sha256((d / ee_file).read_bytes()).hexdigest()
        (d / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(BackendError, match="not the ee engine"):
            if ee_file == "ee.onnx":
                OrtBackend(d / ee_file, d / sac_file)
            else:
                EdgeClassifier(d, backend="onnxruntime")
    with pytest.raises(BackendError, match="unknown backend"):
        EdgeClassifier(random_export, backend="tpu")
    with pytest.raises(ConfigError, match="eta"):
        EdgeClassifier(random_export, backend="onnxruntime", eta=2.0)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA|tensorrt"):
            EdgeClassifier(random_export, backend="tensorrt")
        with pytest.raises(BackendError, match="CUDA"):
            EdgeClassifier(random_export, backend="pytorch-cuda")
    assert issubclass(ExportError, SacvitError) and issubclass(ImageError, SacvitError)


def test_model_pt_is_exported_into_cache(tmp_path, random_ckpt):
    clf = EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=tmp_path)
    (cached,) = [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert (cached / "manifest.json").is_file() and clf.manifest.directory == cached
    before = (cached / "ee.onnx").stat().st_mtime_ns
    again = EdgeClassifier(random_ckpt, backend="onnxruntime", cache_dir=tmp_path)  # reuses, no re-export
    assert again.manifest.directory == cached and (cached / "ee.onnx").stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached.name]  # the writer's lock file is gone too


def test_auto_backend_says_what_it_picked(random_export, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="sacvit_edge.runtimes"):
        clf = EdgeClassifier(random_export)
    assert clf.backend_name in ("onnxruntime", "tensorrt")
    assert "backend auto ->" in caplog.text


def test_pytorch_backend_agrees_with_onnxruntime(random_export, canvases, eta):
    a = EdgeClassifier(random_export, backend="onnxruntime", eta=eta)
    b = EdgeClassifier(random_export, backend="pytorch", eta=eta)
    images = list(canvases[0][:8])
    for p, q in zip(a.predict_batch(images), b.predict_batch(images)):
        assert p.class_id == q.class_id and p.num_target_tokens == q.num_target_tokens
        assert p.confidence == pytest.approx(q.confidence, abs=1e-4)


@pytest.mark.slow
def test_shipped_model_whole_test_split_equals_pytorch(shipped_export, shipped_sac):
    """EdgeClassifier (ONNX Runtime) == PyTorch early-exit predictions on all 10,000 test images."""
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    model = load_checkpoint(shipped_sac).model
    ds = ClutteredFashionMNIST("test")
    mismatches, exits, n = 0, 0, 0
    for images, _ in ds.batches(250):
        x = to_input(images)
        ref = torch_early_exit(model, x, clf.eta)
        res = clf.run(x.numpy())
        mismatches += int((res.probs.argmax(1) != ref["probs"].argmax(1)).sum())
        assert np.array_equal(res.exited, ref["exited"]) and np.array_equal(res.counts, ref["counts"])
        exits += int(res.exited.sum())
        n += len(images)
    assert n == 10000 and mismatches == 0
    assert 0 < exits < n  # both paths exercised


def test_batches_beyond_batch_max_are_chunked(tmp_path, random_ckpt, canvases, eta):
    from sacvit_edge.export.bundle import export_checkpoint

    d = export_checkpoint(random_ckpt, tmp_path / "b4", batch_max=4).directory
    clf = EdgeClassifier(d, backend="onnxruntime", eta=eta)
    images = list(canvases[0][:10])
    chunked = clf.predict_batch(images)  # 10 images through engines built for batch <= 4
    single = [clf.predict(i) for i in images]
    assert [p.class_id for p in chunked] == [p.class_id for p in single]
    assert [p.num_target_tokens for p in chunked] == [p.num_target_tokens for p in single]
