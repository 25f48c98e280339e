"""`sacvit-edge calibrate`: set a deployed model's knobs from the user's data on the user's device.

One pass of the deployment backend over the calibration images records every image's EE
probabilities, SAC answer and target count (collect.py); the stage latencies are measured on
this device; the exit sweep (sweep.py) then evaluates every eta from the records and picks
the one that meets the request. The result (eta per precision, the request, the whole curve,
the latency table, the token range and its coverage, the deadline gate's accuracy at the asked
budgets, the dataset's size and fingerprint) is written as calibration.json into the export
directory, listed and hashed in its manifest, in one atomic swap of the directory (or into a
copy). The engines and the manifest's content are unchanged, so their embedded digests still
match. EdgeClassifier then uses the calibrated eta by default.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sacvit_edge.atomic import DirectoryLock, check_replaceable, publish_export, remove_temporary, staging_dir, work_dir
from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.datasets import DEFAULT_MAX_BAD_SHARE, LabelledSource
from sacvit_edge.errors import ConfigError, ExportError
from sacvit_edge.extras import require_extra
from sacvit_edge.gate import NEVER_EXIT, deadline_gate, describe_eta, validate_eta
from sacvit_edge.manifest import (CALIBRATION_FILE, CALIBRATION_FORMAT, CALIBRATION_VERSION, MANIFEST, LatencyTable,
                                  Manifest, read_manifest, sha256_file)

from .collect import collect, ee_floor_ms, measure_latency, timing_environment, tune_batch1_threads
from .sweep import MIN_IMAGES, ExitRecords, Request, choose, token_range

log = logging.getLogger(__name__)


@dataclass
class CalibrationResult:
    directory: Path
    report: dict[str, Any]                      # calibration.json as written
    curves: dict[str, list[dict[str, Any]]]     # precision -> sweep
    chosen: dict[str, dict[str, Any]]           # precision -> chosen point
    warnings: list[str] = field(default_factory=list)


def deadline_report(records: ExitRecords, eta: float, latency: LatencyTable, budgets: tuple[float, ...]) -> list[dict]:
    """Accuracy of the deadline gate at each budget (batch 1, from the call's start after
    preprocessing): an image bound for the SAC stage whose predicted SAC time would overrun
    the budget keeps its EE answer, as EdgeClassifier(deadline_ms=...) decides at run time."""
    exited = records.exited(eta)
    elapsed = latency.ee_ms(1) + latency.host_ms(1)
    rows = []
    for budget in budgets:
        cut = np.zeros(len(exited), dtype=bool)
        for i in np.flatnonzero(~exited):
            cut[i] = deadline_gate(records.counts[i:i + 1], elapsed, budget, latency.sac_ms)[0]
        rows.append({"deadline_ms": budget, "eta": eta if math.isfinite(eta) else NEVER_EXIT,
                     "top1": records.top1(records.final_pred(eta, cut)), "deadline_exit_rate": float(cut.mean()),
                     "top1_without_deadline": records.top1(records.final_pred(eta))})
    return rows


def _precision_entry(manifest: Manifest, precision: str, files: tuple[str, str], records: ExitRecords,
                     latency: LatencyTable, batch: int, request: Request, budgets: tuple[float, ...]) -> dict:
    curve = records.curve(manifest.cost, latency, batch)
    chosen = choose(curve, request)
    eta = validate_eta(chosen["eta"])
    return {"ee_file": files[0], "sac_file": files[1], "eta": chosen["eta"], "chosen": chosen,
            "latency": latency.to_dict(), "latency_batch": batch,
            "top1_ee": records.top1(records.ee_pred), "top1_sac": records.top1(records.sac_pred),
            "curve": curve, "deadline": deadline_report(records, eta, latency, budgets) if budgets else [],
            "deadline_floor": deadline_floor(latency, manifest.k_range)}


def precision_advice(fp32: dict, int8: dict, request: Request) -> dict:
    """int8 against fp32 on this device, each at its own calibrated eta: which is faster, by how
    much, what it costs in accuracy, and which to run (int8 only where it is faster and loses no
    more than the request allows: --max-drop, else 0.5 points). EdgeClassifier(precision="auto")
    follows the recommendation."""
    f, i = fp32["chosen"], int8["chosen"]
    ms_f, ms_i = float(f.get("latency_ms", math.nan)), float(i.get("latency_ms", math.nan))
    drop = float(f["top1"]) - float(i["top1"])
    allowed = request.value if request.kind == "max_drop" else 0.5
    speed = ms_f / ms_i if ms_i > 0 else math.nan
    faster = speed > 1.0
    recommended = "int8" if faster and drop <= allowed else "fp32"
    how = f"{speed:.2f}x faster" if faster else f"{1 / speed:.2f}x slower" if speed > 0 else "not timed"
    why = (f"int8 is {how} than fp32 on this device ({ms_i:.3f} vs {ms_f:.3f} ms per image) and "
           f"{abs(drop):.2f} points {'less' if drop >= 0 else 'more'} accurate: use {recommended}"
           + ("" if recommended == "int8" else (" (int8 is slower here)" if not faster else
                                                f" (int8 loses more than {allowed:g} points)")))
    return {"fp32_ms": ms_f, "int8_ms": ms_i, "int8_speedup": speed, "top1_fp32": float(f["top1"]),
            "top1_int8": float(i["top1"]), "top1_drop": drop, "allowed_drop": allowed, "recommended": recommended,
            "why": why}


def deadline_floor(latency: LatencyTable, k_range: tuple[int, int]) -> dict[str, float]:
    """What deadlines can do at batch 1: below `any_sac_ms` every image bound for the SAC stage
    keeps its EE answer (EE and the split alone take `ee_host_ms`); from `all_sac_ms` none does."""
    ee_host = latency.ee_ms(1) + latency.host_ms(1)
    return {"ee_host_ms": ee_host, "any_sac_ms": ee_host + latency.sac_ms(1, k_range[0]),
            "all_sac_ms": ee_host + latency.sac_ms(1, k_range[1])}


def write_calibration(src: Path, dst: Path, calibration: dict, extra_files: dict[str, Path] | None = None, *,
                      force: bool = False) -> Manifest:
    """Publish src's export plus calibration.json (and extra engine files) at dst, atomically.

    The directory is assembled beside dst and swapped in (dst may be src: in place). The
    manifest's content is unchanged; only its `files` gain the new files' hashes. The caller
    holds dst's DirectoryLock.
    """
    manifest = read_manifest(src)
    raw = json.loads((src / MANIFEST).read_text())
    tmp = staging_dir(dst)
    try:
        for name in manifest.files:
            if name != CALIBRATION_FILE:
                shutil.copyfile(src / name, tmp / name)
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, tmp / name)
        (tmp / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1, default=_json_default))
        files = {k: v for k, v in raw["files"].items() if k != CALIBRATION_FILE}
        for name in (*(extra_files or {}), CALIBRATION_FILE):
            files[name] = sha256_file(tmp / name)
        raw["files"] = files
        publish_export(tmp, dst, raw, sources=(src,), force=force, in_place=_same(src, dst))
    except BaseException:
        remove_temporary(tmp)
        raise
    return read_manifest(dst)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def calibrate_export(directory: str | Path, source: LabelledSource, request: Request, *, out: str | Path | None = None,
                     batch: int = 32, backend: str = "onnxruntime", threads: int | None = None, int8: bool = False,
                     apply_k_range: bool = False, coverage: float = 0.999, deadline_budgets: tuple[float, ...] = (),
                     timing_reps: int = 7, max_bad_share: float = DEFAULT_MAX_BAD_SHARE, force: bool = False,
                     on_step: Callable[[str], None] | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> CalibrationResult:
    """Calibrate an export directory on `source`; see the module doc. Writes into `out` (a
    copy; replaced only if it is empty or an export directory, see atomic.check_replaceable)
    or, by default, into the directory itself. Another process writing the same directory is
    waited for, then this one reads what it wrote."""
    src = Path(directory)
    dst = Path(out) if out is not None else src
    step = on_step or (lambda msg: log.info(msg))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    if isinstance(timing_reps, bool) or not isinstance(timing_reps, int) or timing_reps < 1:
        raise ConfigError(f"--timing-reps {timing_reps} must be >= 1")
    if not 0.5 <= coverage < 1.0:
        raise ConfigError(f"coverage {coverage} must be in [0.5, 1)")
    if int8:
        require_extra("export", "calibrate --int8 (ONNX Runtime's quantiser reads the graphs with onnx)")
    check_replaceable(dst, sources=(src,), force=force, in_place=_same(src, dst))
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{dst}: cannot create its parent directory ({exc.strerror or exc})") from exc
    with DirectoryLock(dst, on_wait=step):
        return _calibrate_locked(src, dst, source, request, batch=batch, backend=backend, threads=threads, int8=int8,
                                 apply_k_range=apply_k_range, coverage=coverage, deadline_budgets=deadline_budgets,
                                 timing_reps=timing_reps, max_bad_share=max_bad_share, force=force, step=step,
                                 on_batch=on_batch)


def _calibrate_locked(src: Path, dst: Path, source: LabelledSource, request: Request, *, batch: int, backend: str,
                      threads: int | None, int8: bool, apply_k_range: bool, coverage: float,
                      deadline_budgets: tuple[float, ...], timing_reps: int, max_bad_share: float, force: bool,
                      step: Callable[[str], None], on_batch: Callable[[int, int], None] | None) -> CalibrationResult:
    manifest = read_manifest(src)
    if manifest.config.arch != "sacvit":
        raise ExportError(f"{src}: a {manifest.config.arch} export has no exit threshold to calibrate")
    if batch > manifest.batch_range[1]:
        raise ConfigError(f"--batch {batch} exceeds the engines' batch_max {manifest.batch_range[1]}")
    warnings: list[str] = []
    if request.kind == "latency_budget_ms":  # refuse what the EE stage alone already rules out, before the pass
        with EdgeClassifier(src, backend=backend, threads=threads) as probe:
            floor = ee_floor_ms(probe, batch)
        if request.value < 0.8 * floor:  # 20 % slack: the full measurement decides the close calls
            raise ConfigError(f"--latency-budget-ms {request.value:g} cannot be met: the EE stage alone takes "
                              f"{floor:.3g} ms per image at --batch {batch} on this device (every image pays it); "
                              "raise the budget or the batch")

    def run_pass(path: Path, precision: str = "fp32", record_sac: int = 0):
        wrap = None
        if record_sac:  # the SAC inputs the fp32 classifier really feeds: INT8 calibration data
            from .int8 import RecordingBackend

            wrap = lambda opened: RecordingBackend(opened, limit=record_sac)  # noqa: E731
        clf = EdgeClassifier(path, backend=backend, threads=threads, precision=precision, backend_wrapper=wrap)
        recorder = clf.backend if record_sac else None
        step(f"pass over {len(source)} images ({precision}, {clf.backend_name})")
        got = collect(clf, source, batch, max_bad_share, on_batch=on_batch)
        step(f"timing the stages ({precision}) at batch 1 and {batch}")
        latency = measure_latency(clf, got.sample, tuple(sorted({1, batch})), timing_reps)
        env = timing_environment(clf)
        clf.close()
        return got, latency, env, recorder

    got, latency, env, recorder = run_pass(src, record_sac=64 if int8 else 0)
    runtime: dict[str, Any] = {}
    k = token_range(got.records.raw_counts, coverage)
    lo_ok, hi_ok = 1, manifest.config.num_coarse - 1  # at least one target and one non-target token
    k["k_min"], k["k_max"] = max(lo_ok, k["k_min"]), min(hi_ok, k["k_max"])
    k["engines_k_range"] = list(manifest.k_range)
    counts = got.records.raw_counts
    lo, hi = manifest.k_range
    k["engines_coverage"] = float(((counts >= lo) & (counts <= hi)).mean())
    k["clamped_low"], k["clamped_high"] = int((counts < lo).sum()), int((counts > hi).sum())
    if apply_k_range and (k["k_min"], k["k_max"]) != tuple(manifest.k_range):
        require_extra("export", "calibrate --apply-k-range (re-export)")
        if not manifest.has_checkpoint:
            raise ExportError(f"{src}: --apply-k-range re-exports from model.pt, which this directory does not carry")
        from sacvit_edge.export.bundle import export_checkpoint

        step(f"re-exporting with k in [{k['k_min']}, {k['k_max']}] (was {list(manifest.k_range)})")
        with work_dir(dst, "tmp") as with_ckpt:
            shutil.copyfile(src / "model.pt", with_ckpt / "model.pt")
            export_checkpoint(with_ckpt / "model.pt", dst, opset=manifest.opset or 17, batch_max=manifest.batch_range[1],
                              k_min=k["k_min"], k_max=k["k_max"], force=force, locked=True)
        src, manifest = dst, read_manifest(dst)
        k["applied"] = True
        got, latency, env, recorder = run_pass(src, record_sac=64 if int8 else 0)

    fp32_entry = _precision_entry(manifest, "fp32", manifest.engine_files("fp32"), got.records, latency, batch,
                                  request, deadline_budgets)
    if backend == "onnxruntime":
        step("choosing ONNX Runtime's batch-1 thread count")
        rec = got.records
        exited = rec.exited(validate_eta(fp32_entry["eta"]))
        runtime = tune_batch1_threads(src, got.sample, exited, np.where(exited, 0, rec.counts))
    n = len(got.records.labels)
    if n < MIN_IMAGES:
        warnings.append(f"only {n} calibration images (fewer than {MIN_IMAGES}): the accuracy's 95 % interval is wide")
    if len(np.unique(got.records.labels)) < 2:
        warnings.append("the calibration images hold one class only: the exit threshold is tuned for that class")
    if got.bad:
        warnings.append(f"{len(got.bad)} unreadable images skipped")
    for w in warnings:  # returned in CalibrationResult.warnings (the CLI prints them)
        log.info("calibration warning: %s", w)
    report: dict[str, Any] = {
        "format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION,
        "checkpoint_fingerprint": manifest.checkpoint_fingerprint, "manifest_sha256": manifest.content_sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request": {"kind": request.kind, "value": request.value, "description": request.describe()},
        "dataset": {"name": source.name, "images": n, "fingerprint": got.fingerprint, "unreadable": len(got.bad),
                    "unreadable_files": [f"{f}: {r}" for f, r in got.bad[:50]]},
        "environment": env, "token_range": k, "warnings": warnings, "runtime": runtime,
        "precisions": {"fp32": fp32_entry},
    }
    if manifest.calibration is not None and not int8:  # keep an earlier int8 calibration unless it is redone now
        earlier_report = json.loads((manifest.directory / CALIBRATION_FILE).read_text())
        earlier = earlier_report["precisions"]
        for name, old in manifest.calibration.precisions.items():
            if name != "fp32":  # marked: its chosen point answers the earlier request, not this one
                report["precisions"][name] = {**earlier[name], "kept_from": earlier_report.get("request", {}).get(
                    "description", "an earlier calibration")}
                warnings.append(f"kept the earlier {name} calibration (eta {describe_eta(old.eta)}); rerun with --int8 to redo it")
    extra: dict[str, Path] = {}
    if int8:
        from .int8 import make_int8_engines

        assert recorder is not None
        with work_dir(dst, "int8") as work:
            files = make_int8_engines(src / manifest.engine_files()[0], src / manifest.engine_files()[1], work,
                                      got.sample, recorder.sac_feeds, on_step=step)
            extra = {"ee.int8.onnx": files["ee"], "sac.int8.onnx": files["sac"]}
            fp32_eta = report["precisions"]["fp32"]["eta"]
            report["precisions"]["int8"] = {"ee_file": "ee.int8.onnx", "sac_file": "sac.int8.onnx", "eta": fp32_eta}
            write_calibration(src, dst, report, extra, force=force)  # provisional: the int8 engines must load to be calibrated
        got8, latency8, _, _ = run_pass(dst, "int8")
        entry = _precision_entry(read_manifest(dst), "int8", ("ee.int8.onnx", "sac.int8.onnx"), got8.records, latency8,
                                 batch, request, deadline_budgets)
        entry["at_fp32_eta"] = got8.records.point(fp32_eta, manifest.cost, latency8, batch)
        entry["fp32_nodes"] = {"ee": files["ee_fp32_nodes"], "sac": files["sac_fp32_nodes"]}
        report["precisions"]["int8"] = entry
        report["precision_advice"] = advice = precision_advice(report["precisions"]["fp32"], entry, request)
        if advice["recommended"] == "fp32":
            warnings.append(advice["why"])
        src, extra = dst, {}
    final = write_calibration(src, dst, report, extra, force=force)
    return CalibrationResult(directory=final.directory, report=report,
                             curves={p: e["curve"] for p, e in report["precisions"].items() if "curve" in e},
                             chosen={p: e["chosen"] for p, e in report["precisions"].items() if "chosen" in e},
                             warnings=warnings)
