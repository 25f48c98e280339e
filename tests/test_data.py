import numpy as np
import pytest
import torch
from PIL import Image

from sacvit_edge.data import ClutteredFashionMNIST, load_fashion_mnist
from sacvit_edge.folders import NO_AUGMENT, Augment, ImageFolderSource
from sacvit_edge.errors import DataError


def test_official_splits():
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert set(np.unique(ytr)) == set(range(10)) and np.bincount(yte).tolist() == [1000] * 10


def test_canvases_deterministic_and_batch_independent():
    ds = ClutteredFashionMNIST("test", seed=3, limit=64)
    a = ds.render(np.arange(8))
    b = ds.render(np.array([5, 6]))
    assert a.shape == (8, 3, 112, 112) and a.dtype == torch.uint8
    assert torch.equal(a[5:7], b)
    assert not torch.equal(ClutteredFashionMNIST("test", seed=4, limit=64).render(np.arange(8)), a)


def test_train_layouts_change_per_epoch_test_do_not():
    tr = ClutteredFashionMNIST("train", limit=16)
    assert not torch.equal(tr.render(np.arange(4), epoch=0), tr.render(np.arange(4), epoch=1))
    te = ClutteredFashionMNIST("test", limit=16)
    assert torch.equal(te.render(np.arange(4), epoch=0), te.render(np.arange(4), epoch=1))


def test_object_is_placed_and_canvas_mostly_background():
    ds = ClutteredFashionMNIST("test", limit=32)
    x = ds.render(np.arange(32)).float()
    bright = (x.amax(1) > 80).float().mean((1, 2))  # share of clearly lit pixels
    assert (bright > 0.002).all() and bright.mean() < 0.35


def test_clutter_uses_same_split_only():
    ds = ClutteredFashionMNIST("test", limit=100)
    srcs = np.concatenate([ds._layout(i, 0)[9:].reshape(4, 8)[:, 0] for i in range(100)])
    assert srcs.max() < 100  # fragments come from this split's (limited) items


def test_missing_dataset(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_image_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = ImageFolderSource(tmp_path)
    assert ds.classes == ("cat", "dog") and len(ds) == 6
    x, y = next(ds.batches(4, size=112))
    assert x.shape == (4, 112, 112, 3) and x.dtype == np.uint8 and y.tolist() == [0, 0, 0, 1]
    assert (x[1] == 40).all()  # decoded and stretched as the deployment path does: a flat grey stays flat
    with pytest.raises(DataError):
        ImageFolderSource(tmp_path / "cat")


def test_builtin_and_folder_batches_are_one_format():
    """One data stack: the built-in canvases come as (B, H, W, 3) uint8 like a folder's batches."""
    x, y = next(ClutteredFashionMNIST("test", limit=8).batches(8))
    assert x.shape == (8, 112, 112, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    ref = ClutteredFashionMNIST("test", limit=8).render(np.arange(8)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(x, ref)
    with pytest.raises(DataError, match="224x224"):
        next(ClutteredFashionMNIST("test", limit=8).batches(8, size=224))


def test_augment_moves_the_object_and_keeps_the_size():
    img = np.zeros((64, 64, 3), np.uint8)
    img[24:40, 24:40] = 255  # a bright square in the middle
    rng = np.random.default_rng(0)
    outs = [Augment(shift=0.2, scale=(0.8, 1.2)).apply(img, rng) for _ in range(8)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    centres = {tuple(np.round(np.argwhere(o[..., 0] > 128).mean(0)).astype(int)) for o in outs}
    areas = {int((o[..., 0] > 128).sum()) for o in outs}
    assert len(centres) >= 4 and len(areas) >= 4  # shifted and scaled, not returned as it came
    assert np.array_equal(NO_AUGMENT.apply(img, rng), img)


def test_folder_augmentation_is_per_epoch_and_reproducible(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            arr = np.zeros((48, 48, 3), np.uint8)
            arr[10 + 5 * i:30, 12:30] = 200
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    folder = ImageFolderSource(tmp_path)
    run = lambda epoch: next(folder.batches(4, epoch=epoch, size=48, augment=Augment()))[0]  # noqa: E731
    plain = next(folder.batches(4, size=48))[0]
    assert np.array_equal(run(0), run(0)) and not np.array_equal(run(0), run(1))
    assert not np.array_equal(run(0), plain)


def test_an_unreadable_training_image_is_reported_once(tmp_path, caplog):
    """The first epoch names the bad file (once per line); later epochs skip it without a word."""
    import logging

    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    folder = ImageFolderSource(tmp_path, max_bad_share=0.5)
    with caplog.at_level(logging.WARNING):
        for epoch in range(3):
            seen = sum(len(y) for _, y in folder.batches(4, epoch=epoch, shuffle=True, size=16))
            assert seen == 6
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].count("broken.png") == 1, lines
