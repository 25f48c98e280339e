import numpy as np
import pytest
import torch
from PIL import Image

from sacvit_edge.data import ClutteredFashionMNIST, ImageFolder, load_fashion_mnist
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
    ds = ImageFolder(tmp_path, 112)
    assert ds.classes == ("cat", "dog") and len(ds) == 6
    x, y = next(ds.batches(4))
    assert x.shape == (4, 3, 112, 112) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0, 1]
    with pytest.raises(DataError):
        ImageFolder(tmp_path / "cat", 112)


def test_an_unreadable_training_image_is_reported_once(tmp_path, caplog):
    """The first epoch names the bad file (once per line); later epochs skip it without a word."""
    import logging

    from PIL import Image

    from sacvit_edge.data import ImageFolder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path, 16, max_bad_share=0.5)
    with caplog.at_level(logging.WARNING):
        for epoch in range(3):
            seen = sum(len(y) for _, y in folder.batches(4, epoch=epoch, shuffle=True))
            assert seen == 6
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].count("broken.png") == 1, lines
