from pathlib import Path

import pytest
import torch

from sacvit_edge.checkpoint import CHECKPOINT_VERSION, load_checkpoint, load_init_state, save_checkpoint
from sacvit_edge.config import preset
from sacvit_edge.errors import CheckpointError, SacvitError
from sacvit_edge.model import build_model, load_deit_state_dict


def test_round_trip_is_exact(tmp_path, random_ckpt):
    ck = load_checkpoint(random_ckpt)
    again = save_checkpoint(tmp_path / "again.pt", ck.model, ck.class_names, ck.mean, ck.std, ck.eta,
                            training={"note": "x"})
    ck2 = load_checkpoint(again)
    assert ck2.config == ck.config and ck2.class_names == ck.class_names and ck2.eta == ck.eta
    for (k1, v1), (k2, v2) in zip(ck.model.state_dict().items(), ck2.model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(ck.model(x).logits, ck2.model(x).logits)
    assert ck2.training == {"note": "x"}


def _raw(path):
    return torch.load(path, weights_only=True)


def test_truncated_file(tmp_path, random_ckpt):
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(random_ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(bad)


def test_garbage_and_missing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "absent.pt")


class _Payload:
    """A pickled object that, if unpickled, creates a marker file (what a malicious checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_refused_by_weights_only(tmp_path, random_ckpt):
    """A COMPLETE, otherwise valid checkpoint that carries one pickled object: only weights_only
    refuses it (every key is present), and the object's code never runs."""
    marker = tmp_path / "executed"
    raw = _raw(random_ckpt)
    raw["training"] = {"note": _Payload(str(marker))}
    torch.save(raw, tmp_path / "evil.pt")
    marker.unlink(missing_ok=True)  # torch.save does not call __reduce__'s callable, but be sure
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint.*UnpicklingError"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    raw["training"] = {"note": "plain"}  # the same dict without the object loads: the object was the reason
    torch.save(raw, tmp_path / "fine.pt")
    assert load_checkpoint(tmp_path / "fine.pt").training == {"note": "plain"}


def test_raw_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model(preset("tiny_112")).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a sacvit-edge checkpoint"):
        load_checkpoint(path)


def test_newer_version_and_missing_keys(tmp_path, random_ckpt):
    raw = _raw(random_ckpt)
    raw["format_version"] = CHECKPOINT_VERSION + 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")
    raw = _raw(random_ckpt)
    del raw["class_names"]
    torch.save(raw, tmp_path / "nokey.pt")
    with pytest.raises(CheckpointError, match="class_names"):
        load_checkpoint(tmp_path / "nokey.pt")


def test_weights_of_another_model(tmp_path, random_ckpt):
    raw = _raw(random_ckpt)
    raw["state_dict"] = build_model(preset("tiny_112")).state_dict()  # width 64 vs config's 32
    torch.save(raw, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="shape|do not match"):
        load_checkpoint(tmp_path / "other.pt")
    raw = _raw(random_ckpt)
    raw["config"]["arch"] = "deit"  # DeiT config with SAC-ViT weights
    torch.save(raw, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "arch.pt")
    raw = _raw(random_ckpt)
    raw["config"]["selection"] = "magic"
    torch.save(raw, tmp_path / "cfg.pt")
    with pytest.raises(SacvitError, match="selection"):
        load_checkpoint(tmp_path / "cfg.pt")


def test_init_state_accepts_checkpoint_state_dict_and_wrapped_release(tmp_path, random_ckpt):
    """`train --init` takes three kinds of file; each yields the same tensors."""
    state = load_checkpoint(random_ckpt).model.state_dict()
    torch.save(state, tmp_path / "sd.pt")
    torch.save({"model": state}, tmp_path / "release.pt")  # how DeiT's release files wrap it
    for path in (random_ckpt, tmp_path / "sd.pt", tmp_path / "release.pt"):
        got = load_init_state(path)
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_init_state_rejects_bad_files_with_checkpoint_error(tmp_path, random_ckpt):
    with pytest.raises(CheckpointError, match="no such"):
        load_init_state(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage" * 20)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_init_state(tmp_path / "junk.pt")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "opt.pt")  # a dict, but not of tensors
    with pytest.raises(CheckpointError, match="state_dict of tensors"):
        load_init_state(tmp_path / "opt.pt")
    raw = _raw(random_ckpt)
    raw["format_version"] = CHECKPOINT_VERSION + 1  # a broken sacvit checkpoint is not re-read as a state_dict
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_init_state(tmp_path / "new.pt")


@pytest.mark.parametrize("name, space", [("deit_tiny_112_pre.pt", "raw"), ("deit_tiny_112.pt", "log"),
                                         ("sacvit_tiny_112.pt", "log"), ("manual_recipe/deit_tiny_112.pt", "log"),
                                         ("manual_recipe/sacvit_tiny_112.pt", "log")])
def test_every_shipped_checkpoint_loads_and_serves_as_init(name, space):
    """The shipped backbone predates the cluster_space option: it must still load (with the raw-GCA
    clustering it was saved under) and initialise a fresh SAC-ViT, as checkpoints/README.md's recipe does."""
    path = Path(__file__).resolve().parents[1] / "checkpoints" / name
    assert load_checkpoint(path).model.cfg.cluster_space == space
    state = load_init_state(path)
    model = build_model(preset("tiny_112"))
    load_deit_state_dict(model, state)
    assert torch.equal(model.state_dict()["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
