"""The project's CF-ViT and LF-ViT modes against the official code's outputs.

tests/fixtures/{cfvit,lfvit}_golden.npz hold the weights, the input and what the OFFICIAL model
computed (scripts/peer_golden.py ran ChenMnZ/CF-ViT and edgeai1/LF-ViT once; the official code is
not needed here). The weights are mapped onto the project's model in the peer's mode, and the
coarse logits, the selected coarse tokens and the second-stage logits must agree to fp32
rounding. Each of the three options the check found (coarse resampling, GCA start block, reuse
input) is also shown to matter: set back to the project's old value, agreement breaks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sacvit_edge.clustering import select_targets
from sacvit_edge.config import ModelConfig, with_mode
from sacvit_edge.model import SACViT
from sacvit_edge.tokens import build_sac_group

FIXTURES = Path(__file__).parent / "fixtures"
COARSE_TOL, FINE_TOL = 1e-3, 2e-2  # fp32, max abs difference of logits


def _load(method: str) -> dict:
    data = np.load(FIXTURES / f"{method}vit_golden.npz")
    return {k: data[k] for k in data.files}


def _model(fix: dict, method: str, **overrides) -> SACViT:
    g = json.loads(str(fix["meta"]))["geometry"]
    base = ModelConfig(img_size=g["img"], patch_size=g["patch"], embed_dim=g["embed_dim"], depth=g["depth"],
                       num_heads=g["num_heads"], num_classes=g["num_classes"])
    cfg = with_mode(base, method).replace(**overrides)
    model = SACViT(cfg).eval()
    w = {k[2:]: torch.from_numpy(v) for k, v in fix.items() if k.startswith("w/")}
    mapped = {
        "pos_embed_coarse": w.pop("pos_embed_list.0"), "pos_embed": w.pop("pos_embed_list.1"),
        "ee_head.weight": w["head.weight"], "ee_head.bias": w["head.bias"],  # one shared head in the official model
        "reuse.0.weight": w.pop("reuse_block.0.weight"), "reuse.0.bias": w.pop("reuse_block.0.bias"),
        "reuse.1.weight": w.pop("reuse_block.1.fc1.weight"), "reuse.1.bias": w.pop("reuse_block.1.fc1.bias"),
        "reuse.3.weight": w.pop("reuse_block.1.fc2.weight"), "reuse.3.bias": w.pop("reuse_block.1.fc2.bias"),
        **w,
    }
    model.load_state_dict(mapped, strict=True)
    return model


def _run(model: SACViT, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coarse logits, GCA, selected coarse sets and second-stage logits of the project's model."""
    x = torch.from_numpy(image.astype(np.float32))
    with torch.no_grad():
        ee = model.forward_ee(x)
        split = select_targets(ee.gca.numpy(), model.cfg)
        g = build_sac_group(split.order, split.counts)
        t = torch.from_numpy(g.target_idx)
        fine = model.forward_sac(model.crop_targets(x, t), t, torch.from_numpy(g.nontarget_idx), ee.final, ee.hidden)
    selected = np.sort(g.target_idx, axis=1)
    return ee.logits.numpy(), ee.gca.numpy(), selected, fine.numpy()


@pytest.mark.parametrize("method", ["cf", "lf"])
def test_mode_computes_what_the_official_code_computes(method):
    fix = _load(method)
    model = _model(fix, method)
    coarse, gca, selected, fine = _run(model, fix["image"])
    k = selected.shape[1]
    print(f"{method}: coarse {np.abs(coarse - fix['coarse_logits']).max():.2e}, "
          f"selected identical {np.array_equal(selected, fix['selected'])}, fine {np.abs(fine - fix['fine_logits']).max():.2e}")
    assert k == fix["selected"].shape[1] == (25 if method == "cf" else 22)
    # the fixture is not decided by rounding: the selection has a margin far above fp32 noise
    if method == "cf":
        s = np.sort(gca, axis=1)[:, ::-1]
        assert ((s[:, k - 1] - s[:, k]) / s[:, k - 1]).min() > 1e-3  # fp32 resolves ~1e-7 relative
    assert np.abs(coarse - fix["coarse_logits"]).max() <= COARSE_TOL
    assert np.array_equal(selected, fix["selected"])
    assert np.abs(fine - fix["fine_logits"]).max() <= FINE_TOL
    assert np.abs(fix["fine_logits"]).max() > 0.5  # logits of a real size, not all ~0


@pytest.mark.parametrize("option, old", [("coarse_resample", "avgpool"), ("gca_start_block", 2),
                                         ("reuse_input", "pre_norm")])
def test_each_aligned_option_matters(option, old):
    """The check's three findings: with any one set back, the project no longer agrees."""
    fix = _load("cf")
    coarse, _, selected, fine = _run(_model(fix, "cf", **{option: old}), fix["image"])
    agrees = (np.abs(coarse - fix["coarse_logits"]).max() <= COARSE_TOL and np.array_equal(selected, fix["selected"])
              and np.abs(fine - fix["fine_logits"]).max() <= FINE_TOL)
    assert not agrees


def test_old_checkpoints_keep_what_they_were_trained_with():
    """A config saved before the options existed loads with the old computation."""
    old = {k: v for k, v in ModelConfig(gca_start_block=2).to_dict().items()
           if k not in ("coarse_resample", "reuse_input", "window_keep", "cluster_space")}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.coarse_resample, cfg.reuse_input, cfg.gca_start_block, cfg.cluster_space) == (
        "avgpool", "pre_norm", 2, "raw")
    new = ModelConfig()
    assert (new.coarse_resample, new.reuse_input, new.gca_start_block, new.cluster_space) == (
        "avgpool", "post_norm", 3, "log")


@pytest.mark.parametrize("method", ["cf", "lf"])
def test_deployed_mode_agrees_with_the_official_code(tmp_path, method):
    """What runs on the edge agrees too: the mapped model exported to ONNX (bilinear coarse
    input as an ONNX Resize) and run by EdgeClassifier on ONNX Runtime."""
    from sacvit_edge import NEVER_EXIT, EdgeClassifier
    from sacvit_edge.checkpoint import save_checkpoint
    from sacvit_edge.export.bundle import export_checkpoint

    fix = _load(method)
    model = _model(fix, method)
    path = save_checkpoint(tmp_path / "peer.pt", model, [f"c{i}" for i in range(10)], eta=0.5)
    export_checkpoint(path, tmp_path / "exp", batch_max=4)
    clf = EdgeClassifier(tmp_path / "exp", backend="onnxruntime", eta=NEVER_EXIT)
    res = clf.run(fix["image"].astype(np.float32))

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    assert np.abs(res.ee_probs - softmax(fix["coarse_logits"])).max() <= 1e-4
    assert np.array_equal(np.sort(np.flatnonzero(res.target_mask[0])), fix["selected"][0])
    assert np.abs(res.probs - softmax(fix["fine_logits"])).max() <= 1e-3
