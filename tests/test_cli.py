import json
from pathlib import Path

from typer.testing import CliRunner

from sacvit_edge.cli import app

runner = CliRunner()
SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sacvit_edge" / "assets" / "samples").glob("*.png"))


def test_export_and_predict(tmp_path, random_ckpt):
    out = tmp_path / "exp"
    r = runner.invoke(app, ["export", str(random_ckpt), "-o", str(out), "--k-min", "5", "--k-max", "20"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["model_config"]["k_min"], manifest["model_config"]["k_max"]) == (5, 20)  # stored once
    from sacvit_edge.manifest import read_manifest

    assert read_manifest(out).k_range == (5, 20)
    r = runner.invoke(app, ["predict", str(out), *map(str, SAMPLES[:3]), "--backend", "onnxruntime", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["backend"] == "onnxruntime" and len(data["predictions"]) == 3
    assert {"label", "confidence", "exited_early", "num_target_tokens", "timings_ms"} <= set(data["predictions"][0])
    r = runner.invoke(app, ["predict", str(out), str(SAMPLES[0]), "--backend", "onnxruntime"])
    assert r.exit_code == 0 and "confidence" in r.output


def test_errors_are_clean(tmp_path, random_ckpt):
    (tmp_path / "bad.png").write_bytes(b"nope")
    r = runner.invoke(app, ["predict", str(random_ckpt), str(tmp_path / "bad.png"), "--backend", "onnxruntime"])
    assert r.exit_code == 3 and "bad.png" in r.output and "Traceback" not in r.output
    (tmp_path / "bad.pt").write_bytes(b"nope")
    r = runner.invoke(app, ["export", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 3 and "bad.pt" in r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "missing.pt")])
    assert r.exit_code == 3 and "no such checkpoint" in r.output
    for init in ("missing.pt", "bad.pt"):  # train --init fails before any data is built
        r = runner.invoke(app, ["train", "--init", str(tmp_path / init), "-o", str(tmp_path / "t.pt")])
        assert r.exit_code == 3 and init in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["predict", str(random_ckpt), str(tmp_path / "bad.png"), "--no-such-option"])
    assert r.exit_code == 2  # usage


def test_eval_json(tmp_path, random_ckpt):
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", str(random_ckpt), "--limit", "32", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    for key in ("top1_ee", "top1_sac", "top1", "exit_rate", "mean_target_tokens", "gflops"):
        assert key in res
    assert res["images"] == 32


def test_demo_runs_on_bundled_checkpoint(tmp_path, shipped_sac):
    import re

    r = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "demo" / "sac.onnx").is_file()
    right, total = map(int, re.search(r"(\d+)/(\d+) correct", r.output).groups())
    assert total == 10 and right >= 8, r.output  # the shipped model gets 9 of the 10 samples


def test_tune_eta_refuses_a_deit_checkpoint(tmp_path):
    from sacvit_edge.checkpoint import save_checkpoint
    from sacvit_edge.config import preset
    from sacvit_edge.model import build_model

    path = save_checkpoint(tmp_path / "deit.pt", build_model(preset("tiny_112", arch="deit", embed_dim=32)),
                           list("abcdefghij"))
    r = runner.invoke(app, ["tune-eta", str(path), "--limit", "16"])
    assert r.exit_code == 3 and "only SAC-ViT has an exit threshold" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["bench", "--sac", str(tmp_path / "missing.pt"), "--deit", str(path)])
    assert r.exit_code == 3 and "no such checkpoint" in r.output


def test_predict_resample_option(tmp_path):
    from PIL import Image

    bundled = str(Path(__file__).resolve().parents[1] / "sacvit_edge" / "assets" / "sacvit_tiny_112")
    r = runner.invoke(app, ["predict", bundled, str(SAMPLES[0]), "--backend", "onnxruntime", "--resample", "nearest"])
    assert r.exit_code == 2 and "resample='nearest'" in r.output and "Traceback" not in r.output, r.output
    # a 1080p file, so that "fast" does resample from block means (a 112-px sample is not resampled at all)
    big = tmp_path / "big.png"
    Image.open(SAMPLES[0]).convert("RGB").resize((1920, 1080), Image.BICUBIC).save(big)
    exact = runner.invoke(app, ["predict", bundled, str(big), "--backend", "onnxruntime", "--json"])
    fast = runner.invoke(app, ["predict", bundled, str(big), "--backend", "onnxruntime", "--json",
                               "--resample", "fast"])
    assert exact.exit_code == 0 and fast.exit_code == 0, fast.output
    labels = [[p["label"] for p in json.loads(x.output)["predictions"]] for x in (exact, fast)]
    assert labels[0] == labels[1]
