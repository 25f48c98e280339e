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
from sacvit_edge.gate import NEVER_EXIT
from sacvit_edge.model import build_model
from sacvit_edge.train import TrainConfig, evaluate, sac_loss, to_input, train


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
