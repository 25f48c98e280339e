"""Calibration on the user's data: datasets, the exit sweep, calibrate, deadline gating, INT8."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sacvit_edge.calibration.collect import nondecreasing
from sacvit_edge.calibration.sweep import ExitRecords, Request, choose, token_range, wilson_interval
from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.datasets import ImageFolderSource, folder_name, open_source, stratified_split
from sacvit_edge.errors import ConfigError, DataError, ExportError
from sacvit_edge.gate import NEVER_EXIT, deadline_gate
from sacvit_edge.manifest import CALIBRATION_FILE, read_manifest

CLI = [sys.executable, "-m", "sacvit_edge.cli"]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """An ImageFolder as a user would make it: 12 canvases per class of the built-in
    calibration split, class folders named by the documented rule (T-shirt/top -> T-shirt-top)."""
    from sacvit_edge.data import fashion_split

    root = tmp_path_factory.mktemp("user") / "data"
    ds = fashion_split("calibration", limit=600)
    per_class: dict[int, int] = {}
    for images, labels in ds.batches(200):
        for img, label in zip(images, labels.tolist()):
            if per_class.get(label, 0) >= 12:
                continue
            folder = root / folder_name(ds.classes[label])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{per_class.get(label, 0):03d}.png")
            per_class[label] = per_class.get(label, 0) + 1
    assert sorted(per_class.values()) == [12] * 10
    return root


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, shipped_export, user_folder) -> tuple[Path, dict]:
    from sacvit_edge.calibration.calibrate import calibrate_export

    out = tmp_path_factory.mktemp("cal") / "calibrated"
    manifest = read_manifest(shipped_export)
    source = open_source(user_folder, "calibration", manifest.class_names)
    result = calibrate_export(shipped_export, source, Request("max_drop", 1.0), out=out, batch=8, timing_reps=2,
                              deadline_budgets=(0.01, 1e4))
    return out, result.report


# ---- datasets -------------------------------------------------------------------------------------

def test_folders_match_classes_by_name_not_sort_order(user_folder, shipped_export):
    names = read_manifest(shipped_export).class_names
    src = ImageFolderSource(user_folder, names)
    # sorted folder names differ from the model's class order; each file gets its class's index
    for path, label in src.samples:
        assert folder_name(names[label]) == path.parent.name
    assert sorted(p.name for p in user_folder.iterdir()) != [folder_name(c) for c in names]


def test_class_mismatch_lists_the_difference(user_folder, tmp_path, shipped_export):
    names = read_manifest(shipped_export).class_names
    bad = tmp_path / "data"
    shutil.copytree(user_folder, bad)
    shutil.rmtree(bad / "Bag")
    (bad / "Bagg").mkdir()
    Image.new("RGB", (8, 8)).save(bad / "Bagg" / "a.png")
    with pytest.raises(DataError, match=r"missing \['Bag'\].*not classes of the model \['Bagg'\]"):
        ImageFolderSource(bad, names)


def test_unreadable_images_are_listed_and_their_share_enforced(user_folder, tmp_path, shipped_export):
    from sacvit_edge.calibration.collect import collect

    names = read_manifest(shipped_export).class_names
    data = tmp_path / "data"
    shutil.copytree(user_folder, data)
    (data / "Bag" / "broken.png").write_bytes(b"not a png")
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    got = collect(clf, ImageFolderSource(data, names, max_bad_share=0.05), batch_size=16)
    assert len(got.records.labels) == 120 and [Path(f).name for f, _ in got.bad] == ["broken.png"]
    with pytest.raises(DataError, match="broken.png"):
        collect(clf, ImageFolderSource(data, names, max_bad_share=0.0), batch_size=16)


def test_stratified_split_holds_out_each_class():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    tr, va = stratified_split(labels, 0.2, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [2, 4, 1]
    assert np.array_equal(va, stratified_split(labels, 0.2, seed=1)[1])
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=2)[1])


def test_builtin_calibration_split_is_disjoint_from_train():
    from sacvit_edge.data import fashion_split

    from sacvit_edge.data import load_fashion_mnist

    train, cal = fashion_split("train"), fashion_split("calibration")
    assert len(train) + len(cal) == 60000 and len(cal) == 5000
    assert cal.seed == train.seed + 1
    images, labels = load_fashion_mnist("train")  # the official items each split holds, compared directly
    assert np.array_equal(train.items[:, 0].mul(255).round().byte().numpy(), images[:55000])
    assert np.array_equal(cal.items[:, 0].mul(255).round().byte().numpy(), images[55000:])
    assert np.array_equal(cal.labels.numpy(), labels[55000:])


# ---- the sweep ------------------------------------------------------------------------------------

def synthetic_records(n: int = 400, seed: int = 0) -> ExitRecords:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    conf = rng.uniform(0.25, 1.0, n)
    ee_pred = np.where(rng.uniform(size=n) < conf, labels, (labels + 1) % 4)  # confident answers are right more often
    probs = np.full((n, 4), 0.0)
    probs[np.arange(n), ee_pred] = conf
    probs[np.arange(n), (ee_pred + 1) % 4] = 1 - conf
    sac_pred = np.where(rng.uniform(size=n) < 0.9, labels, (labels + 2) % 4)
    return ExitRecords(labels=labels, sac_pred=sac_pred, ee_probs=probs, counts=rng.integers(4, 20, n))


class FlatCost:
    """Test double of manifest.CostTable: 1 GFLOP for EE, k/10 for SAC at k."""

    ee = 1.0

    def expected(self, exited, counts):
        return self.ee + float(np.where(exited, 0, np.asarray(counts) / 10).mean())


def test_choose_meets_each_request_and_refuses_impossible_budgets():
    rec = synthetic_records()
    curve = rec.curve(FlatCost())
    never = next(p for p in curve if p["eta"] == NEVER_EXIT)
    pick = choose(curve, Request("max_drop", 2.0))
    assert pick["top1"] >= never["top1"] - 2.0
    assert all(p["gflops"] >= pick["gflops"] for p in curve if p["top1"] >= never["top1"] - 2.0)
    budget = choose(curve, Request("gflops_budget", 1.5))
    assert budget["gflops"] <= 1.5 and all(p["top1"] <= budget["top1"] for p in curve if p["gflops"] <= 1.5)
    with pytest.raises(ConfigError, match=r"lowest achievable is 1 GFLOPs"):
        choose(curve, Request("gflops_budget", 0.5))
    # the sweep's accuracy at an eta is the gate's decision applied per image
    exited = rec.ee_probs.max(1) >= 0.6
    direct = np.mean(np.where(exited, rec.ee_probs.argmax(1), rec.sac_pred) == rec.labels) * 100
    assert rec.point(0.6)["top1"] == pytest.approx(direct)


def test_wilson_interval_contains_the_estimate():
    lo, hi = wilson_interval(70, 100)
    assert lo < 70 < hi and hi - lo == pytest.approx(17.7, abs=0.5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 100.0


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=30))
def test_sac_latencies_fitted_non_decreasing_in_k(values):
    """The fit is the least-squares non-decreasing one: ordered, the measured total kept, and every
    prefix's residual non-negative (the optimality condition of isotonic regression), zero where a
    pooled run ends; a measurement already ordered is returned as it is."""
    fit = np.array(nondecreasing(values))
    x = np.array(values)
    assert fit.shape == x.shape and np.all(np.diff(fit) >= -1e-9)
    residual = np.cumsum(x - fit)
    assert np.all(residual >= -1e-6 * (1 + np.abs(np.cumsum(x)))) and residual[-1] == pytest.approx(0, abs=1e-6 * x.sum())
    assert nondecreasing(sorted(values)) == pytest.approx(sorted(values))
    assert nondecreasing([2.0, 15.6, 3.0, 10.6]) == pytest.approx([2.0, 9.3, 9.3, 10.6])


def test_token_range_covers_the_asked_share():
    counts = np.array([5] * 500 + [6] * 300 + [7] * 190 + [30] * 10)
    tr = token_range(counts, coverage=0.99)
    assert (tr["k_min"], tr["k_max"]) == (5, 7) and tr["coverage"] == 0.99 and tr["above"] == 10
    assert token_range(counts, coverage=0.999)["k_max"] == 30


def test_deadline_gate_cuts_the_costliest_first():
    def sac_ms(m, k):  # test double of LatencyTable.sac_ms: 1 ms per image-token
        return m * k

    counts = np.array([10, 2, 5])
    assert deadline_gate(counts, 0.0, 100.0, sac_ms).tolist() == [False, False, False]
    assert deadline_gate(counts, 0.0, 15.0, sac_ms).tolist() == [True, False, False]  # 2 images at mean 3.5 = 7 ms
    assert deadline_gate(counts, 3.0, 3.0, sac_ms).tolist() == [True, True, True]


# ---- calibrate ------------------------------------------------------------------------------------

def test_offline_sweep_equals_running_at_each_eta(shipped_export, user_folder):
    """What the sweep predicts from one pass is what EdgeClassifier answers when run at that eta."""
    from sacvit_edge.calibration.collect import collect

    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    src = ImageFolderSource(user_folder, clf.class_names)
    rec = collect(clf, src, batch_size=16).records
    files = [p for p, _ in src.samples]
    for eta in (0.5, 0.75, 0.95):
        preds = clf.predict_batch(files, eta=eta)
        answers = np.array([p.class_id for p in preds])
        exits = np.array([p.exited_early for p in preds])
        assert np.array_equal(exits, rec.exited(eta))
        assert np.mean(answers == rec.final_pred(eta)) >= 0.99  # float differences of batch vs one pass


def test_calibrate_writes_a_checked_calibration(calibrated, shipped_export):
    out, report = calibrated
    manifest = read_manifest(out)
    assert CALIBRATION_FILE in manifest.files and CALIBRATION_FILE not in read_manifest(shipped_export).files
    chosen = report["precisions"]["fp32"]["chosen"]
    curve = report["precisions"]["fp32"]["curve"]
    never = next(p for p in curve if p["eta"] == NEVER_EXIT)
    assert chosen["top1"] >= never["top1"] - 1.0
    assert report["dataset"]["images"] == 120 and len(report["dataset"]["fingerprint"]) == 64
    assert report["token_range"]["coverage"] >= 0.999
    clf = EdgeClassifier(out, backend="onnxruntime")
    assert clf.eta == pytest.approx(float(chosen["eta"]))  # the calibrated eta is the default
    assert clf.latency_table is not None and set(clf.latency_table.sac[1]) == set(range(*np.add(clf.k_range, (0, 1))))
    assert manifest.content_sha256 == read_manifest(shipped_export).content_sha256  # engines' digests still match
    rt = report["runtime"]  # measured batch-1 thread count, used by the batch-1 sessions
    assert rt["onnxruntime_batch1_threads"] in (1, None) and set(rt["batch1_frame_ms"]) == {"1", "default"}
    assert clf.backend.batch1_threads == rt["onnxruntime_batch1_threads"]
    assert EdgeClassifier(out, backend="onnxruntime", threads=2).backend.batch1_threads == 2  # explicit threads win
    deadline = {r["deadline_ms"]: r for r in report["precisions"]["fp32"]["deadline"]}
    assert deadline[1e4]["deadline_exit_rate"] == 0.0 and deadline[1e4]["top1"] == deadline[1e4]["top1_without_deadline"]
    assert deadline[0.01]["deadline_exit_rate"] == pytest.approx(1 - chosen["exit_rate"])
    floor = report["precisions"]["fp32"]["deadline_floor"]  # the lowest deadline that lets any SAC stage run
    assert 0 < floor["ee_host_ms"] < floor["any_sac_ms"] <= floor["all_sac_ms"]
    assert 0.01 < floor["any_sac_ms"] and floor["all_sac_ms"] < 1e4  # the two budgets above lie either side


def test_edited_or_foreign_calibration_is_refused(calibrated, random_export, tmp_path):
    out, _ = calibrated
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    cal = json.loads((edited / CALIBRATION_FILE).read_text())
    cal["precisions"]["fp32"]["eta"] = 0.01
    (edited / CALIBRATION_FILE).write_text(json.dumps(cal))
    with pytest.raises(ExportError, match="do not match the manifest"):
        read_manifest(edited)
    from sacvit_edge.manifest import parse_calibration

    cal = json.loads((out / CALIBRATION_FILE).read_text())
    cal["runtime"]["onnxruntime_batch1_threads"] = -3
    with pytest.raises(ExportError, match="onnxruntime_batch1_threads"):
        parse_calibration(cal, read_manifest(out), out / CALIBRATION_FILE)
    foreign = tmp_path / "foreign"
    shutil.copytree(random_export, foreign)
    shutil.copyfile(out / CALIBRATION_FILE, foreign / CALIBRATION_FILE)
    from sacvit_edge.manifest import sha256_file

    raw = json.loads((foreign / "manifest.json").read_text())
    raw["files"][CALIBRATION_FILE] = sha256_file(foreign / CALIBRATION_FILE)
    (foreign / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ExportError, match="calibrated for another export"):
        read_manifest(foreign)


def test_deadline_gating_returns_ee_answers_on_time(calibrated, user_folder):
    out, _ = calibrated
    files = sorted(user_folder.rglob("*.png"))[:24]
    # eta given: on these 120 canvases (objects the backbone saw) the calibrated eta may exit them all
    free = EdgeClassifier(out, backend="onnxruntime", eta=0.9)
    base = free.predict_batch(files)
    tight = EdgeClassifier(out, backend="onnxruntime", eta=0.9, deadline_ms=0.01)
    preds = tight.predict_batch(files)
    went_to_sac = [not p.exited_early for p in base]
    assert any(went_to_sac)
    for b, p in zip(base, preds):
        assert p.deadline_exit == (not b.exited_early)
        if p.deadline_exit:  # the EE answer, as an exit would give
            assert p.exited_early and p.num_target_tokens == 0
    assert tight.counters["deadline_exits"] == sum(went_to_sac) and free.counters["deadline_exits"] == 0
    loose = free.predict_batch(files, deadline_ms=1e4)
    assert [p.class_id for p in loose] == [p.class_id for p in base] and not any(p.deadline_exit for p in loose)


def test_deadline_needs_a_calibrated_directory(shipped_export):
    with pytest.raises(ConfigError, match="calibrate"):
        EdgeClassifier(shipped_export, backend="onnxruntime", deadline_ms=5)
    with pytest.raises(ConfigError, match="int8"):
        EdgeClassifier(shipped_export, backend="onnxruntime", precision="int8")


def test_k_clamp_counter_counts_the_split_outside_the_engines_range(shipped_export, user_folder):
    clf = EdgeClassifier(shipped_export, backend="onnxruntime")
    res = clf.run(clf.preprocess(sorted(user_folder.rglob("*.png"))), eta=NEVER_EXIT)
    lo, hi = clf.k_range
    assert clf.counters["k_clamped_low"] == int((res.raw_counts < lo).sum())
    assert clf.counters["k_clamped_high"] == int((res.raw_counts > hi).sum())
    assert np.array_equal(res.counts, np.clip(res.raw_counts, lo, hi))


def test_int8_engines_are_calibrated_on_their_own(shipped_export, user_folder, tmp_path):
    """INT8 Q/DQ engines beside the fp32 ones, their own eta, answers close to fp32."""
    import onnx

    from sacvit_edge.calibration.calibrate import calibrate_export

    src = open_source(user_folder, "calibration", read_manifest(shipped_export).class_names)
    out = tmp_path / "int8"
    report = calibrate_export(shipped_export, src, Request("max_drop", 1.0), out=out, batch=8, timing_reps=1,
                              int8=True).report
    entry = report["precisions"]["int8"]
    assert entry["ee_file"] == "ee.int8.onnx" and "at_fp32_eta" in entry and entry["chosen"]["top1"] > 40
    graph = onnx.load(str(out / "ee.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 4 and ops.count("DequantizeLinear") > 4
    assert entry["fp32_nodes"]["ee"], "the EE head stays fp32: the exit gate reads its confidence"
    files = sorted(user_folder.rglob("*.png"))
    fp32 = EdgeClassifier(out, backend="onnxruntime").predict_batch(files, eta=NEVER_EXIT)
    int8 = EdgeClassifier(out, backend="onnxruntime", precision="int8")
    assert int8.eta == pytest.approx(float(entry["eta"]))
    got = int8.predict_batch(files, eta=NEVER_EXIT)
    agree = np.mean([a.class_id == b.class_id for a, b in zip(fp32, got)])
    assert agree >= 0.9, agree
    assert read_manifest(out).engine_files("int8") == ("ee.int8.onnx", "sac.int8.onnx")
    # honest about int8: both measured here, the faster-and-accurate-enough one recommended and used by "auto"
    advice = report["precision_advice"]
    f, i = report["precisions"]["fp32"]["chosen"], entry["chosen"]
    assert advice["fp32_ms"] == pytest.approx(f["latency_ms"]) and advice["int8_ms"] == pytest.approx(i["latency_ms"])
    assert advice["top1_drop"] == pytest.approx(f["top1"] - i["top1"])
    good = advice["int8_ms"] < advice["fp32_ms"] and advice["top1_drop"] <= 1.0
    assert advice["recommended"] == ("int8" if good else "fp32") and advice["recommended"] in advice["why"]
    assert EdgeClassifier(out, backend="onnxruntime", precision="auto").precision == advice["recommended"]
    assert EdgeClassifier(shipped_export, backend="onnxruntime", precision="auto").precision == "fp32"
    # a later fp32-only calibration keeps the int8 section, marked as the earlier request's answer
    again = calibrate_export(out, src, Request("gflops_budget", 0.05), batch=8, timing_reps=1).report
    assert again["precisions"]["int8"]["kept_from"] == report["request"]["description"]
    assert "kept_from" not in again["precisions"]["fp32"]


# ---- command line ---------------------------------------------------------------------------------

def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_calibrate_budget_below_ee_cost_names_the_lowest(calibrated, user_folder, tmp_path):
    out, _ = calibrated
    proc = run_cli("calibrate", out, "--data", user_folder, "--gflops-budget", "0.001", "-o", tmp_path / "x",
                   "--timing-reps", "1", "--batch", "4")
    assert proc.returncode == 2, proc.stderr
    assert "lowest achievable is 0.01" in proc.stderr and not (tmp_path / "x").exists()


def test_progress_in_a_log_is_plain_lines(calibrated, user_folder, tmp_path):
    """Outside a terminal (a log, CI) progress is a line per tenth of the work or per step: no
    live bar, no control characters, and the tables are not cut."""
    out, _ = calibrated
    proc = run_cli("calibrate", out, "--data", user_folder, "-o", tmp_path / "c", "--batch", "8", "--timing-reps", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("calibrate: ")]
    assert "calibrate: 120/120 pass over 120 images (fp32, onnxruntime)" in lines, lines
    assert any("timing the stages" in l for l in lines) and 5 <= len(lines) <= 20, lines
    assert "\x1b[" not in proc.stderr + proc.stdout and "\r" not in proc.stderr
    assert "mean_target_tokens" in proc.stdout and "…" not in proc.stdout  # full column names


def test_an_unreachable_latency_budget_is_refused_before_the_pass(calibrated, user_folder, tmp_path, monkeypatch):
    """A budget below the EE stage's own time per image is refused from a quick timing, before the
    pass over the data (which the spy counts)."""
    import sacvit_edge.calibration.calibrate as calibrate_module
    from sacvit_edge.calibration.calibrate import calibrate_export

    out, _ = calibrated
    passes = []
    real = calibrate_module.collect
    monkeypatch.setattr(calibrate_module, "collect", lambda *a, **k: passes.append(1) or real(*a, **k))
    source = open_source(user_folder, "calibration", read_manifest(out).class_names)
    with pytest.raises(ConfigError, match=r"--latency-budget-ms 1e-06 cannot be met: the EE stage alone takes"):
        calibrate_export(out, source, Request("latency_budget_ms", 1e-6), out=tmp_path / "x", batch=4, timing_reps=1)
    assert passes == [] and not (tmp_path / "x").exists()


def test_cli_eval_on_an_export_directory_uses_the_calibrated_eta(calibrated, user_folder, tmp_path):
    out, report = calibrated
    js = tmp_path / "e.json"
    proc = run_cli("eval", out, "--data", user_folder, "--json", js)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(js.read_text())
    assert res["eta_source"] == "calibrated" and res["eta"] == report["precisions"]["fp32"]["eta"]
    assert res["images"] == 120  # one image may flip between batchings: 0.83 points
    assert res["top1"] == pytest.approx(report["precisions"]["fp32"]["chosen"]["top1"], abs=0.9)


def test_cli_tune_eta_never_overwrites_silently(tmp_path, random_ckpt, user_folder):
    from sacvit_edge.checkpoint import load_checkpoint

    ck = tmp_path / "m.pt"
    shutil.copyfile(random_ckpt, ck)
    before = ck.read_bytes()
    proc = run_cli("tune-eta", ck, "--data", user_folder, "--tolerance", "100")
    assert proc.returncode == 0, proc.stderr
    assert ck.read_bytes() == before and "nothing written" in proc.stdout
    proc = run_cli("tune-eta", ck, "--data", user_folder, "--tolerance", "100", "-o", tmp_path / "t.pt")
    assert proc.returncode == 0, proc.stderr
    assert ck.read_bytes() == before and load_checkpoint(tmp_path / "t.pt").eta == 0.0  # any exit is within 100 points: every image exits


def test_cli_eval_on_a_mismatched_folder_lists_classes(tmp_path, shipped_export):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    proc = run_cli("eval", shipped_export, "--data", tmp_path)
    assert proc.returncode == 3 and "not classes of the model ['cat']" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_train_on_a_folder_reports_validation_accuracy(tmp_path, user_folder):
    out = tmp_path / "m.pt"
    proc = run_cli("train", "--data", user_folder, "--epochs", "1", "--batch-size", "16", "--warmup-steps", "2",
                   "-o", out, "--preset", "tiny_112")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from sacvit_edge.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    row = ck.training["history"][-1]
    assert "top1" in row and row["images"] == 10  # 10 % of each class of 12: one image per class
    assert ck.class_names == sorted(folder_name(c) for c in ck.class_names)
    warn = run_cli("train", "--data", user_folder, "--epochs", "0.1", "--batch-size", "64", "-o", tmp_path / "w.pt",
                   "--val-share", "0.1")
    assert warn.returncode == 0 and "warm-up" in warn.stderr


def test_apply_k_range_re_exports_with_the_measured_range(shipped_export, user_folder, tmp_path):
    from sacvit_edge.calibration.calibrate import calibrate_export

    src = open_source(user_folder, "calibration", read_manifest(shipped_export).class_names)
    out = tmp_path / "k"
    report = calibrate_export(shipped_export, src, Request("max_drop", 1.0), out=out, batch=8, timing_reps=1,
                              apply_k_range=True, coverage=0.99).report
    k = report["token_range"]
    manifest = read_manifest(out)
    assert k["applied"] and manifest.k_range == (k["k_min"], k["k_max"]) != read_manifest(shipped_export).k_range
    assert set(manifest.cost.sac) == set(range(k["k_min"], k["k_max"] + 1))
    assert EdgeClassifier(out, backend="onnxruntime").eta == pytest.approx(float(report["precisions"]["fp32"]["eta"]))


def test_cli_calibrate_on_the_shipped_checkpoint_writes_a_copy(shipped_sac, user_folder, tmp_path):
    from sacvit_edge.checkpoint import load_checkpoint

    out = tmp_path / "tuned.pt"
    before = shipped_sac.read_bytes()
    proc = run_cli("calibrate", shipped_sac, "--data", user_folder, "--max-drop", "1", "-o", out)
    assert proc.returncode == 0, proc.stderr
    eta = float(proc.stdout.split("chosen eta = ")[1].split()[0])
    assert load_checkpoint(out).eta == pytest.approx(eta) and "95 % interval" in proc.stdout
    assert shipped_sac.read_bytes() == before  # the input is untouched
    proc = run_cli("calibrate", shipped_sac, "--data", user_folder, "--int8")
    assert proc.returncode == 2 and "export" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--deadline-ms", "abc"], "comma-separated positive milliseconds"),
    (["--deadline-ms", "-2"], "comma-separated positive milliseconds"),
    (["--limit", "-5"], "positive number of images"),
    (["--max-bad-share", "2"], "share in [0, 1]"),
    (["--max-drop", "nan"], "finite number"),
    (["--batch", "1000"], "batch_max"),
    (["--coverage", "2"], "coverage"),
    (["--max-drop", "1", "--gflops-budget", "1"], "give one of"),
])
def test_cli_calibrate_refuses_bad_options_with_usage_errors(shipped_export, tmp_path, args, message):
    proc = run_cli("calibrate", shipped_export, "-o", tmp_path / "o", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_deadline_and_precision_arguments_are_checked(calibrated):
    out, _ = calibrated
    for bad in ("x", -1, float("nan"), True):
        with pytest.raises(ConfigError, match="deadline_ms"):
            EdgeClassifier(out, backend="onnxruntime", deadline_ms=bad)
    clf = EdgeClassifier(out, backend="onnxruntime")
    with pytest.raises(ConfigError, match="deadline_ms"):
        clf.predict(np.zeros((112, 112, 3), np.uint8), deadline_ms=0)
    with pytest.raises(ConfigError, match="precision"):
        EdgeClassifier(out, backend="onnxruntime", precision="fp16")


def test_bench_reads_a_user_folder_by_class_name(user_folder, shipped_export):
    from sacvit_edge.bench.run import eval_images

    manifest = read_manifest(shipped_export)
    x, y = eval_images(40, manifest.mean, manifest.std, data=user_folder, class_names=manifest.class_names, size=112)
    assert x.shape == (40, 3, 112, 112) and x.dtype == np.float32 and len(y) == 40
    src = ImageFolderSource(user_folder, manifest.class_names)
    assert set(y.tolist()) <= set(src.labels.tolist()) and len(set(y.tolist())) > 3  # a sample across classes


def test_drop_bound_does_not_count_on_lucky_swaps():
    """100 images; below eta 0.5 ten more images exit, five of them turning a right SAC answer
    wrong and five a wrong one right: net drop 0, so the plain rule takes eta 0.3. The upper
    bound (z = 1) sees ten changed answers in a hundred and stops at 0.5, where nothing changed;
    an eta above a failing one never passes either (the bound is checked downwards from 1)."""
    n, c = 100, 4
    labels = np.zeros(n, dtype=np.int64)
    sac_pred = np.zeros(n, dtype=np.int64)
    sac_pred[95:] = 1  # five images the SAC head gets wrong
    ee_probs = np.full((n, c), 0.1, dtype=np.float32)
    ee_probs[:, 0] = 0.7  # EE agrees with SAC-right answers at confidence 0.7 (exits from eta 0.7 down)
    ee_probs[85:90] = [0.4, 0.6, 0.0, 0.0]  # five confident at 0.4/0.6 on a wrong class: harmful exits below 0.6
    ee_probs[95:] = [0.4, 0.2, 0.2, 0.2]  # five where EE is right and SAC wrong: helpful exits at eta <= 0.4
    records = ExitRecords(labels=labels, sac_pred=sac_pred, ee_probs=ee_probs, counts=np.full(n, 9))
    curve = records.curve()
    plain = choose(curve, Request("max_drop", 0.5))
    bounded = choose(curve, Request("max_drop", 0.5, confidence_z=1.0))
    assert plain["eta"] <= 0.4 and plain["drop"] == pytest.approx(0.0)  # five lost, five won back
    assert bounded["eta"] == pytest.approx(0.605) and bounded["drop"] == pytest.approx(0.0)
    assert bounded["drop_se"] == pytest.approx(0.0) and bounded["exit_rate"] == pytest.approx(0.9)
    assert "upper bound" in Request("max_drop", 0.5, confidence_z=1.0).describe()


def test_exit_floor_lowers_eta_only_where_the_accuracy_rule_exits_too_few():
    """200 images; the EE head is right on the 40 most confident (0.9) and wrong on 60 at 0.6, so
    the accuracy rule stops at 0.605 with 20 % exiting. A floor of 30 % takes the highest eta
    exiting that share (0.6: the 60 wrong ones join, 50 % exit) and says the floor decided it. A
    floor of 20 % is met by 0.605 as measured (z = 0) but not as a lower bound (z = 1.645: 20 %
    of 200 images is 15.7 % at 95 %), so the bound moves it too; a bad floor is refused when asked."""
    n, c = 200, 4
    labels = np.zeros(n, dtype=np.int64)
    sac_pred = np.zeros(n, dtype=np.int64)
    ee_probs = np.full((n, c), 0.1, dtype=np.float32)
    ee_probs[:40] = [0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3]
    ee_probs[40:100] = [0.2, 0.6, 0.1, 0.1]
    ee_probs[100:] = [0.4, 0.2, 0.2, 0.2]
    curve = ExitRecords(labels=labels, sac_pred=sac_pred, ee_probs=ee_probs, counts=np.full(n, 9)).curve()
    rule = choose(curve, Request("max_drop", 0.5, confidence_z=1.0))
    assert rule["eta"] == pytest.approx(0.605) and rule["exit_rate"] == pytest.approx(0.2) and "limited_by" not in rule
    floored = choose(curve, Request("max_drop", 0.5, confidence_z=1.0, min_exit_rate=0.3))
    assert floored["eta"] == pytest.approx(0.6) and floored["exit_rate"] == pytest.approx(0.5)
    assert floored["limited_by"] == "min_exit_rate" and floored["accuracy_rule_eta"] == pytest.approx(0.605)
    assert floored["drop"] == pytest.approx(30.0)  # the cost is reported, not hidden
    assert choose(curve, Request("max_drop", 0.5, confidence_z=1.0, min_exit_rate=0.2, exit_floor_z=0.0)) == rule
    bounded = choose(curve, Request("max_drop", 0.5, confidence_z=1.0, min_exit_rate=0.2))
    assert bounded["eta"] == pytest.approx(0.6) and bounded["limited_by"] == "min_exit_rate"
    assert choose(curve, Request("max_drop", 0.5, confidence_z=1.0, min_exit_rate=0.1)) == rule  # 15.7 % >= 10 %
    assert "exiting at least 30% of the images" in Request("max_drop", 0.5, min_exit_rate=0.3).describe()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="--min-exit-rate"):
            Request("max_drop", 0.5, min_exit_rate=bad)
    with pytest.raises(ConfigError, match="not to a budget"):
        Request("gflops_budget", 0.05, min_exit_rate=0.1)
