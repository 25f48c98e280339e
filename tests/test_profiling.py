"""profile / bench: report structure and invariants (no speed goals), tegrastats parsing."""

import json
import time

import numpy as np
from PIL import Image
import pytest
import torch

from sacvit_edge import EdgeClassifier
from sacvit_edge.checkpoint import load_checkpoint
from sacvit_edge.gate import NEVER_EXIT
from sacvit_edge.profiling import (ProfileConfig, TegrastatsSampler, latency_stats, load_image_batches,
                                   nvpmodel_mode, parse_tegrastats_line, profile)

# Lines in the formats NVIDIA documents for tegrastats (L4T 32 Nano/TX2; L4T 35/36 Orin).
NANO = ("RAM 2448/3964MB (lfb 41x4MB) SWAP 0/1982MB (cached 0MB) CPU [9%@1479,3%@1479,6%@1479,5%@1479] "
        "EMC_FREQ 0% GR3D_FREQ 12% PLL@29C CPU@31.5C PMIC@50C GPU@30C AO@38C thermal@30.75C "
        "POM_5V_IN 2451/2451 POM_5V_GPU 120/95 POM_5V_CPU 405/405")
ORIN_AGX = ("RAM 2779/30536MB (lfb 6644x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729,0%@729] "
            "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] CV0@-256C CPU@42.875C GPU@41.625C "
            "VDD_GPU_SOC 2769mW/2769mW VDD_CPU_CV 396mW/396mW VIN_SYS_5V0 2816mW/2816mW VDDQ_VDD2_1V8AO 303mW/303mW")
ORIN_NANO = ("RAM 1997/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510] GR3D_FREQ 45% "
             "cpu@47.5C VDD_IN 5136mW/5031mW VDD_CPU_GPU_CV 792mW/780mW VDD_SOC 1584mW/1570mW")


def test_tegrastats_lines():
    nano = parse_tegrastats_line(NANO)
    assert nano["total_mw"] == 2451 and nano["rails_mw"]["POM_5V_GPU"] == 120
    assert nano["ram_used_mb"] == 2448 and nano["gpu_util_pct"] == 12
    agx = parse_tegrastats_line(ORIN_AGX)
    assert agx["total_mw"] == 2816  # board input rail, not the sum of the sub-rails
    assert agx["rails_mw"]["VDD_GPU_SOC"] == 2769 and "RAM" not in agx["rails_mw"]
    orin = parse_tegrastats_line(ORIN_NANO)
    assert orin["total_mw"] == 5136 and orin["rails_mw"]["VDD_SOC"] == 1584
    # no input rail: the rails are summed
    assert parse_tegrastats_line("VDD_A 100mW/100mW VDD_B 50mW/50mW")["total_mw"] == 150
    assert parse_tegrastats_line("garbage")["total_mw"] is None


def test_power_summary_from_samples():
    s = TegrastatsSampler()
    s.available = True
    s.samples = [parse_tegrastats_line(ORIN_NANO), parse_tegrastats_line(ORIN_NANO.replace("VDD_IN 5136", "VDD_IN 4864"))]
    summ = s.summary(seconds=2.0, images=100)
    assert summ["avg_power_w"] == pytest.approx(5.0) and summ["joules_per_image"] == pytest.approx(0.1)


def test_absent_jetson_tools_say_so(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert nvpmodel_mode()["available"] is False and "not found" in nvpmodel_mode()["reason"]
    with TegrastatsSampler() as s:
        pass
    assert s.summary(1.0, 1) == {"available": False, "reason": "tegrastats not found (not a Jetson, or not on PATH)"}


def test_latency_stats():
    st = latency_stats([1, 2, 3, 4, 100])
    assert st["count"] == 5 and st["p50"] == 3 and st["min"] == 1 and st["max"] == 100
    assert st["p50"] <= st["p90"] <= st["p99"] <= st["max"] and st["mean"] == pytest.approx(22)


def test_profile_report(random_export):
    from sacvit_edge.gate import NEVER_EXIT, validate_eta

    never = validate_eta(NEVER_EXIT)
    clf = EdgeClassifier(random_export, backend="onnxruntime", eta=0.5)
    batches = load_image_batches(None, clf, batch=4, count=16)
    assert len(batches) == 4 and batches[0].shape == (4, 3, 112, 112)
    cost = clf.manifest.cost
    reports = {}
    for eta in (0.0, never):  # every image exits / none does: both sides of the cost arithmetic
        rep = profile(clf, batches, ProfileConfig(batch=4, warmup=1, iters=6, eta=eta))
        d = rep.to_dict()
        json.dumps(d, default=str)
        assert d["latency_ms"]["count"] == 6 and d["config"]["batch"] == 4 and d["config"]["frame_graph"] is False
        assert set(d["stages_ms"]) == {"ee", "host", "sac"}
        for st in d["stages_ms"].values():
            assert st["count"] == 6 and st["min"] >= 0
        assert d["throughput_ips"] > 0
        reports[eta] = d
    exit_all, exit_none = reports[0.0], reports[never]
    assert exit_all["exit_rate"] == 1.0 and exit_all["mean_target_tokens"] == 0.0
    assert exit_all["gflops"]["executed"] == pytest.approx(cost.ee)
    assert exit_none["exit_rate"] == 0.0 and exit_none["mean_target_tokens"] >= clf.k_range[0]
    assert exit_none["gflops"]["executed"] > cost.ee + min(cost.sac.values()) * 0.99
    assert exit_none["stages_ms"]["sac"]["mean"] > exit_all["stages_ms"]["sac"]["mean"]
    d = exit_none
    assert d["environment"]["backend"] == "onnxruntime" and d["environment"]["threads"] == "onnxruntime default"
    power = d["power"]  # no Jetson here: unavailable, with the reason (a Jetson reports samples instead)
    assert power["available"] is False and "tegrastats" in power["reason"]


class SlowSacBackend:
    """Test double: the real ONNX Runtime backend with 30 ms of sleep added to every SAC call."""

    def __init__(self, real) -> None:
        self.real = real
        self.name = real.name

    def run_ee(self, image):
        return self.real.run_ee(image)

    def run_sac(self, *args):
        time.sleep(0.03)
        return self.real.run_sac(*args)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_profile_attributes_time_to_the_stage_that_spent_it(random_export):
    """The per-stage split must follow the time: slow the SAC engine down by 30 ms a call and
    only the 'sac' stage (and the total) may grow by it."""
    clf = EdgeClassifier(random_export, backend="onnxruntime", eta=NEVER_EXIT)
    batches = load_image_batches(None, clf, batch=1, count=4)
    fast_rep = profile(clf, batches, ProfileConfig(batch=1, warmup=1, iters=4))
    fast = fast_rep.stages_ms
    # unwrapped, a frame is one call of the frame graph: its time is "ee", "sac" is 0 (the report says so)
    assert fast_rep.config["frame_graph"] and fast["sac"]["max"] == 0.0
    clf = EdgeClassifier(random_export, backend="onnxruntime", eta=NEVER_EXIT, backend_wrapper=SlowSacBackend)
    rep = profile(clf, batches, ProfileConfig(batch=1, warmup=1, iters=4))
    assert not rep.config["frame_graph"]  # a wrapper sees every stage call: the two stages ran
    slow = rep.stages_ms
    assert slow["sac"]["min"] >= 30 and slow["sac"]["mean"] >= fast["sac"]["mean"] + 25
    assert slow["ee"]["mean"] < fast["ee"]["mean"] + 20 and slow["host"]["mean"] < fast["host"]["mean"] + 20
    assert rep.latency_ms["min"] >= 30


def test_profile_cli_writes_json(random_export, tmp_path):
    from typer.testing import CliRunner

    from sacvit_edge.cli import app

    out = tmp_path / "p.json"
    r = CliRunner().invoke(app, ["profile", str(random_export), "--backend", "onnxruntime", "--batch", "2",
                                 "--iters", "3", "--warmup", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["latency_ms"]["count"] == 3 and "p99" in data["latency_ms"]
    assert data["preprocess_ms"] is None  # synthetic canvases arrive preprocessed
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):  # camera-sized files: --images also times their preprocessing
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (720, 1280, 3), dtype=np.uint8)).save(frames / f"{i}.png")
    r = CliRunner().invoke(app, ["profile", str(random_export), "--backend", "onnxruntime", "--images", str(frames),
                                 "--iters", "4", "--warmup", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["preprocess_ms"]["count"] == 4 and data["preprocess_ms"]["min"] > 0 and "preprocess" in r.output
    r = CliRunner().invoke(app, ["profile", str(random_export), "--images", str(tmp_path), "--synthetic"])
    assert r.exit_code == 2 and "exclude" in r.output


def test_bench_report_structure(tmp_path, random_ckpt):
    from sacvit_edge.bench.report import write_reports
    from sacvit_edge.bench.run import BenchConfig, eval_images, run_bench
    from sacvit_edge.checkpoint import save_checkpoint
    from sacvit_edge.model import build_model

    ck = load_checkpoint(random_ckpt)
    deit = save_checkpoint(tmp_path / "deit.pt", build_model(ck.config.replace(arch="deit")), ck.class_names)
    cfg = BenchConfig(sac_checkpoint=random_ckpt, deit_checkpoint=deit, eval_images=64, speed_images=32,
                      latency_iters=3, batch=16, etas=(0.2, 0.9, 1.0), backends=("onnxruntime", "pytorch", "tensorrt"),
                      paper_geometry=False, work_dir=tmp_path / "w", include_default_eta=False)
    res = run_bench(cfg)
    rows = res.rows
    assert res.config["backends"] == ["onnxruntime", "pytorch"]  # unavailable TensorRT is skipped
    assert {(r["method"], r["backend"]) for r in rows} == {(m, b) for m in ("deit", "sac", "cf", "lf")
                                                          for b in ("onnxruntime", "pytorch")}
    for r in rows:
        assert r["images_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"] and 0 <= r["host_share"] <= 1
    # the baseline's accuracy is the DeiT checkpoint's own, computed here independently in PyTorch
    x, y = eval_images(64, ck.mean, ck.std)
    with torch.no_grad():
        deit_top1 = float((load_checkpoint(deit).model(torch.from_numpy(x)).argmax(1).numpy() == y).mean() * 100)
    for r in rows:
        if r["method"] == "deit":
            assert r["top1"] == pytest.approx(deit_top1, abs=100 / 64 + 1e-9), r["backend"]  # at most 1 image apart
    # each method's accuracy is measured on each backend; ONNX Runtime and PyTorch agree to an image
    for m in ("sac", "cf", "lf"):
        for e in cfg.etas:
            by_backend = {r["backend"]: r["top1"] for r in rows if r["method"] == m and r["eta"] == e}
            assert abs(by_backend["onnxruntime"] - by_backend["pytorch"]) <= 100 / 64 + 1e-9, (m, e, by_backend)
    sac = sorted((r for r in rows if r["method"] == "sac" and r["backend"] == "onnxruntime"), key=lambda r: r["eta"])
    # raising eta can only lower the exit rate and raise the expected cost
    assert all(a["exit_rate"] >= b["exit_rate"] and a["gflops"] <= b["gflops"] + 1e-12 for a, b in zip(sac, sac[1:]))
    assert sac[-1]["exit_rate"] <= sac[0]["exit_rate"]
    for mode, k in (("cf", 25), ("lf", 22)):  # official: top half of 49; best 22 of the 5x5 window
        pts = [r for r in rows if r["method"] == mode and r["exit_rate"] < 1]
        assert all(r["mean_target_tokens"] == k for r in pts)
    paths = write_reports(res, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["rows"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["markdown"].read_text().count("SAC-ViT |") == 2 * len(cfg.etas)
    assert {"vs_cf", "vs_lf", "accuracy_floor"} <= set(json.loads(paths["json"].read_text())["targets"])


def test_bench_latency_table_compares_like_for_like(tmp_path, random_ckpt):
    """The batch-1 geometry table: its ratios are computed from its own measurements, and the
    no-exit frame and the exit frame bracket the pattern's mean."""
    from sacvit_edge.bench.report import markdown_latency
    from sacvit_edge.bench.run import BenchConfig, latency_geometry_table
    from sacvit_edge.checkpoint import save_checkpoint
    from sacvit_edge.model import build_model

    from sacvit_edge.bench.run import eval_images
    from sacvit_edge.classifier import EdgeClassifier
    from sacvit_edge.gate import NEVER_EXIT

    ck = load_checkpoint(random_ckpt)
    x, _ = eval_images(256, ck.mean, ck.std)
    conf = EdgeClassifier(random_ckpt, backend="onnxruntime").run(x, eta=NEVER_EXIT).ee_probs.max(1)
    sac = save_checkpoint(tmp_path / "sac.pt", ck.model, ck.class_names, eta=float(np.median(conf)))  # half exit
    deit = save_checkpoint(tmp_path / "deit.pt", build_model(ck.config.replace(arch="deit")), ck.class_names)
    cfg = BenchConfig(sac_checkpoint=sac, deit_checkpoint=deit, latency_iters=30, batch=8,
                      work_dir=tmp_path / "w", latency_geometries=("tiny_112",))
    (row,) = latency_geometry_table(cfg, tmp_path / "w", lambda msg: None)
    assert row["trained"] and 0 < row["exit_rate"] < 1
    # the FLOP-ideal speedup of the imposed pattern, recomputed here from the model's own exits
    from sacvit_edge.flops import CostModel

    res = EdgeClassifier(sac, backend="onnxruntime").run(x, eta=float(np.median(conf)))
    cost = CostModel(ck.model)
    assert row["exit_rate"] == pytest.approx(res.exited.mean())
    assert row["flop_ideal_speedup"] == pytest.approx(cost.full / cost.expected(res.exited, res.counts))
    assert row["gflops_deit"] > row["gflops_no_exit_frame"] > row["gflops_sac"] > 0
    assert row["exit_frame_ms"]["p50"] < row["no_exit_frame_ms"]["p50"]
    for key in ("deit_b1_ms", "sac_b1_ms"):
        assert row[key]["p50"] <= row[key]["p99"]
    assert "tiny_112 (trained)" in markdown_latency([row])
    # which graphs each method ran, and at which batch-1 thread count (each measured at its best)
    assert set(row["graphs"]["sac"]) == {"ee.attention.onnx", "sac.attention.onnx", "sac.unpadded.attention.onnx",
                                         "frame.attention.onnx"}  # batch 1 runs the frame graph
    assert all(n > 0 for n in (*row["graphs"]["sac"].values(), *row["graphs"]["deit"].values()))
    assert {row["batch1_threads"]["deit"], row["batch1_threads"]["sac"]} <= {1, "default"}
    assert "ee.attention.onnx" in markdown_latency([row])
