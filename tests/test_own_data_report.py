"""scripts/own_data_report.py: arms paired with their folder's DeiT by seed, as `eval --json` writes them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "own_data_report.py"


def _write(runs: Path, name: str, seed: int, top1: float, sac: bool) -> None:
    d = {"checkpoint": f"{name}.s{seed}.pt", "images": 538, "top1": top1}
    if sac:
        d.update(top1_sac=top1 + 1.0, top1_ee=40.0 + seed, exit_rate=0.1 * seed, gflops=0.05)
    (runs / f"{name}.s{seed}.eval.json").write_text(json.dumps(d))


def test_report_pairs_each_arm_with_its_folders_deit_by_seed(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for s, (base, sac, other) in enumerate([(60.0, 61.0, 10.0), (62.0, 61.0, 20.0), (64.0, 67.0, 30.0)]):
        _write(runs, "deit", s, base, sac=False)
        _write(runs, "sac", s, sac, sac=True)
        _write(runs, "gdeit", s, other, sac=False)
    _write(runs, "sac", 3, 50.0, sac=True)  # a seed the baseline lacks: in the mean, not in the pairs
    out = tmp_path / "rep" / "own"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(runs), str(out), "--arm", "deit=digits:deit",
                           "--arm", "sac=digits:sacvit", "--arm", "gdeit=glyphs:deit"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["arm"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    sac = rows["sac"]
    assert sac["vs_deit"] == [1.0, -1.0, 3.0] and sac["vs_deit_mean"] == pytest.approx(1.0)
    assert sac["vs_deit_se"] == pytest.approx(2.0 / 3 ** 0.5)  # stdev of (1, -1, 3) is 2
    assert sac["top1_mean"] == pytest.approx((61 + 61 + 67 + 50) / 4) and sac["seeds"] == [0, 1, 2, 3]
    assert "vs_deit" not in rows["gdeit"] and rows["gdeit"]["top1_mean"] == pytest.approx(20.0)
    assert "+1.00 ± 1.15" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(SCRIPT), str(runs), str(out), "--arm", "nothing=digits:x"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "nothing.s*.eval.json" in bad.stderr
