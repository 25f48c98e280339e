import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.config import preset
from sacvit_edge.data import ClutteredFashionMNIST
from sacvit_edge.errors import ConfigError
from sacvit_edge.gate import NEVER_EXIT
from sacvit_edge.model import build_model
from sacvit_edge.train import (TrainConfig, distill_start_step, evaluate, parse_distill_from, sac_loss, to_input,
                               train)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    cfg = preset("tiny_112", embed_dim=32, depth=2, reuse_layer=1, gca_start_block=0)
    model = build_model(cfg)
    ds = ClutteredFashionMNIST("train", limit=16)
    x, y = next(ds.batches(16))
    x, y = to_input(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        loss = sac_loss(model(x, clustering=step >= 10), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    # gradients reach the reuse MLP and the coarse positional embedding
    assert model.reuse[1].weight.grad.abs().sum() > 0 and model.pos_embed_coarse.grad.abs().sum() > 0


def test_train_writes_checkpoint_and_log(tmp_path):
    cfg = preset("tiny_112", embed_dim=32, depth=2, reuse_layer=1, gca_start_block=0)
    ds, test = ClutteredFashionMNIST("train", limit=64), ClutteredFashionMNIST("test", limit=32)
    res = train(cfg, TrainConfig(epochs=2, batch_size=32, warmup_steps=1, eval_limit=32), ds,
                tmp_path / "m.pt", eval_dataset=test)
    ck = load_checkpoint(res.checkpoint)
    assert ck.config == cfg and ck.class_names[0] == "T-shirt/top"
    rows = [json.loads(line) for line in (tmp_path / "m.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["clustering"] is True
    ev = evaluate(ck.model, test, eta=0.5, limit=32)
    assert 0 <= ev["exit_rate"] <= 1 and ev["gflops_ee"] < ev["gflops"] <= ev["gflops_ee"] + max(
        ev["gflops_sac_mean"], 0) + 1e-9 and ev["images"] == 32


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "sacvit_edge.cli", "train", "--preset", "tiny_112", "--limit", "64", "--epochs", "1",
           "--batch-size", "16", "--eval-limit", "16", "--threads", "1", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(out)
    assert ck.training["world_size"] == 2
    assert ck.training["history"][0]["step"] == 2  # 64 items / 2 ranks / 16 per batch


def test_checkpoint_calibration_picks_the_cheapest_eta_within_tolerance(shipped_sac):
    """train.choose_eta, what `calibrate model.pt` and `tune-eta` run: on the shipped model, where
    early exits at a low eta cost accuracy, the choice is within tolerance of never exiting (the
    SAC head's accuracy, computed here independently) and every cheaper point is not."""
    from sacvit_edge.calibration.sweep import Request
    from sacvit_edge.train import choose_eta

    model = load_checkpoint(shipped_sac).model
    val = ClutteredFashionMNIST("train", offset=59744, limit=256, seed=1)
    assert len(val) == 256 and int(val.labels[0]) == int(load_fashion_mnist_labels()[59744])
    sac_top1 = evaluate(model, val, eta=NEVER_EXIT, flops=False)["top1"]
    tolerance = 0.5
    curve, chosen = choose_eta(model, val, Request("max_drop", tolerance))
    points = [p for p in curve if p["eta"] != NEVER_EXIT]
    assert [p["eta"] for p in points] == sorted(p["eta"] for p in points) and len(points) == 201  # steps of 0.005
    exits = [p["exit_rate"] for p in points]
    assert all(a >= b for a, b in zip(exits, exits[1:]))  # higher eta, fewer exits
    assert chosen["top1"] >= sac_top1 - tolerance - 1e-9
    cheaper = [p for p in points if p["gflops"] < chosen["gflops"] - 1e-12]
    assert cheaper, "fixture must make the cheapest etas cost accuracy"
    assert all(p["top1"] < sac_top1 - tolerance for p in cheaper)


def load_fashion_mnist_labels():
    from sacvit_edge.data import load_fashion_mnist

    return load_fashion_mnist("train")[1]


def test_evaluate_early_exit_extremes_match_each_head(random_ckpt):
    """eta 0 exits every image (the EE head's answer, EE cost only); eta above 1 exits none (the
    SAC head's answer); in between, top-1 matches an independent per-image computation."""
    model = load_checkpoint(random_ckpt).model
    test = ClutteredFashionMNIST("test", limit=48)
    everyone_exits = evaluate(model, test, eta=0.0, batch_size=16)
    nobody_exits = evaluate(model, test, eta=NEVER_EXIT, batch_size=16)
    assert everyone_exits["exit_rate"] == 1.0 and everyone_exits["top1"] == everyone_exits["top1_ee"]
    assert everyone_exits["gflops"] == pytest.approx(everyone_exits["gflops_ee"])
    assert nobody_exits["exit_rate"] == 0.0 and nobody_exits["top1"] == nobody_exits["top1_sac"]
    assert nobody_exits["gflops"] > everyone_exits["gflops"]

    images, labels = next(test.batches(48))
    labels = torch.from_numpy(labels)
    with torch.no_grad():
        out = model(to_input(images), clustering=True)
    conf, ee_pred = out.ee_logits.softmax(-1).max(-1)
    final = torch.where(conf >= 0.5, ee_pred, out.logits.argmax(-1))
    middle = evaluate(model, test, eta=0.5, batch_size=16)
    assert middle["top1"] == pytest.approx((final == labels).float().mean().item() * 100)
    assert middle["exit_rate"] == pytest.approx((conf >= 0.5).float().mean().item())
    assert middle["mean_target_tokens_all"] == pytest.approx(np.mean(out.split.counts))


def test_recipe_settings_follow_the_data_size():
    """A 1,300-image folder gets a batch that gives 30+ steps an epoch (batch 128 gave 9 and did not
    converge); the built-in 55,000 canvases keep batch 128; a given value is kept and not explained."""
    from sacvit_edge.recipe import MIN_STEPS_PER_EPOCH, choose_settings

    small = choose_settings(1132, epochs=8)
    assert small.batch_size == 32 and -(-1132 // 32) >= MIN_STEPS_PER_EPOCH > -(-1132 // 64)
    assert small.steps == 8 * 36 and small.warmup_steps == round(0.1 * small.steps)
    assert any("batch 32" in r for r in small.reasons) and any("warm-up" in r for r in small.reasons)
    big = choose_settings(55000, epochs=5)
    assert big.batch_size == 128 and big.warmup_steps == 200
    tiny = choose_settings(40, epochs=1)
    assert tiny.batch_size == 16 and any(r.startswith("warning") for r in tiny.reasons)
    given = choose_settings(1132, epochs=8, batch_size=64, lr=3e-4, warmup_steps=5)
    assert (given.batch_size, given.lr, given.warmup_steps) == (64, 3e-4, 5) and given.reasons == ()


def _two_class_folder(root, n=24):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 40, (112, 112, 3), dtype=np.uint8)
            x = int(rng.integers(4, 40)) + 56 * c  # a bright block on the left or the right half
            y = int(rng.integers(4, 80))
            img[y:y + 24, x:x + 12] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_recipe_trains_and_writes_the_tuned_exit_threshold(tmp_path):
    """One call: train, then the exit threshold tuned on the held-out share is the one the
    checkpoint carries, and it is the sweep's choice on those images (recomputed here)."""
    from sacvit_edge.calibration.sweep import Request
    from sacvit_edge.datasets import open_source
    from sacvit_edge.recipe import (FOLDER_DISTILL_FROM, FOLDER_MIN_EXIT_RATE, FOLDER_MODEL_OPTIONS,
                                    FOLDER_WARMUP_SHARE, TrainRequest, run_training)
    from sacvit_edge.train import choose_eta

    _two_class_folder(tmp_path / "data")
    small = dict(embed_dim=32, depth=2, num_heads=2, reuse_layer=1, gca_start_block=0)
    req = TrainRequest(out=tmp_path / "m.pt", data=tmp_path / "data", epochs=1, val_share=0.25, eta_drop=1.0,
                       model_options=small, eval_limit=100)
    report = run_training(req)
    ck = load_checkpoint(tmp_path / "m.pt")
    assert report.settings.batch_size == 16 and report.eta is not None and report.eta.images == 12
    assert ck.eta == pytest.approx(report.eta.eta) and ck.training["eta_tuning"]["images"] == 12
    assert ck.training["recipe"] == list(report.settings.reasons) and ck.class_names == ["left", "right"]
    # the held-out share is the one stratified_split leaves out: the sweep on it chooses the same eta
    from sacvit_edge.folders import ImageFolderSource, stratified_split

    folder = ImageFolderSource(tmp_path / "data")
    held = folder.subset(stratified_split(folder.labels, 0.25, 0)[1])
    _, chosen = choose_eta(ck.model, held, Request("max_drop", 1.0, confidence_z=1.0, min_exit_rate=0.1))
    assert (1.0 if chosen["eta"] == "never" else chosen["eta"]) == pytest.approx(ck.eta)
    assert chosen["exit_rate"] >= 3 / 12 and FOLDER_MIN_EXIT_RATE == 0.1  # 10 % as a 95 % bound on 12 images: 3 exit
    assert "exiting at least 10% of the images (lower bound, z = 1.645)" in ck.training["eta_tuning"]["request"]
    assert any(r.startswith("exit threshold: at least 10% of new images exit") for r in report.settings.reasons)
    # the DeiT baseline with the same request: the same settings, no threshold
    base = run_training(TrainRequest(out=tmp_path / "d.pt", arch="deit", data=tmp_path / "data", epochs=1,
                                     val_share=0.25, model_options=small))
    same = lambda s: (s.batch_size, s.lr, s.warmup_steps, s.steps)  # noqa: E731
    assert base.eta is None and same(base.settings) == same(report.settings)
    # a folder fine-tuning: the model options the user left open are the recipe's, the given one kept
    assert ck.config.k_min == FOLDER_MODEL_OPTIONS["k_min"] == 20 and ck.config.reuse_layer == 1
    assert any(r.startswith("k_min 20") for r in report.settings.reasons)
    assert not any("reuse layer" in r for r in report.settings.reasons)
    assert open_source(tmp_path / "data", "test", ck.class_names).classes == ("left", "right")
    # a folder's schedule: clustering from the first step, the EE distillation from half the steps on
    assert ck.training["train_config"]["warmup_share"] == FOLDER_WARMUP_SHARE == 0.0
    assert ck.training["train_config"]["distill_from"] == pytest.approx(FOLDER_DISTILL_FROM) == 0.5
    assert any(r.startswith("clustering from the first step") for r in report.settings.reasons)
    assert any(r.startswith("EE distillation from 50% of the steps") for r in report.settings.reasons)


@pytest.mark.parametrize("warmup_share, distill_from, ee_trained", [
    (1.0, "start", True), (1.0, "clustering", False),  # the whole run is the all-targets warm stage
    (0.0, 1.0, False), (0.0, 0.0, True),  # clustering throughout; the KL term from a share of the steps
    (0.0, "0.5", True)])  # the CLI's text form: from the second of the two steps on
def test_distill_from_holds_the_ee_head_out_until_its_step(tmp_path, warmup_share, distill_from, ee_trained):
    """Before the distillation's first step the loss is the SAC head's CE alone, so the EE head, read
    by nothing else, keeps its initial weights exactly; from that step on the KL term trains it.
    "clustering" ties that step to the clustering switch; a share sets it on its own."""
    torch.manual_seed(0)
    cfg = preset("tiny_112", embed_dim=32, depth=2, reuse_layer=1, gca_start_block=0)
    init = build_model(cfg).state_dict()
    ds = ClutteredFashionMNIST("train", limit=32)
    train(cfg, TrainConfig(epochs=1, batch_size=16, warmup_steps=1, warmup_share=warmup_share, eval_limit=None,
                           distill_from=distill_from), ds, tmp_path / "m.pt", init_state=init)
    trained = load_checkpoint(tmp_path / "m.pt").model.state_dict()
    unchanged = torch.equal(trained["ee_head.weight"], init["ee_head.weight"])
    assert unchanged == (not ee_trained)
    assert not torch.equal(trained["head.weight"], init["head.weight"])  # the SAC head trained either way


def test_distill_from_values():
    assert distill_start_step("start", 7, 30) == 0 and distill_start_step("clustering", 7, 30) == 7
    assert distill_start_step(2 / 3, 7, 30) == 20 and distill_start_step(parse_distill_from("1"), 7, 30) == 30
    for bad in ("late", "1.5", -0.1, float("nan"), True, None):
        with pytest.raises(ConfigError, match="distill_from"):
            parse_distill_from(bad)


def test_recipe_refuses_bad_options_before_training(tmp_path):
    from sacvit_edge.errors import ConfigError
    from sacvit_edge.recipe import TrainRequest, run_training

    for bad in (dict(epochs=0), dict(lr=-1.0), dict(augment="flip"), dict(batch_size=0), dict(arch="vit"),
                dict(warmup_share=1.5), dict(eta_drop=float("nan")), dict(distill_from="late"),
                dict(distill_from="2"), dict(min_exit_rate=1.2), dict(min_exit_rate=-0.1)):
        with pytest.raises(ConfigError):
            run_training(TrainRequest(out=tmp_path / "m.pt", **bad))
    assert not (tmp_path / "m.pt").exists()
