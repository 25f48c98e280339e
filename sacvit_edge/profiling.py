"""Latency profiling of an EdgeClassifier on the device it runs on (`sacvit-edge profile`).

Reports per-call latency (count / mean / stdev / p50 / p90 / p99) and throughput, the split
per stage (EE engine, host work, SAC engine), exit rate and mean target count, expected and
executed GFLOPs per image, and the environment. On a Jetson it also records the power mode
(`nvpmodel -q`) and samples `tegrastats` during the timed run for average power and joules
per image; where those tools are absent the report says so and goes on.
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import DataError, ExportError
from .extras import require_extra
from .gate import describe_eta
from .images import IMAGE_SUFFIXES, normalize
from .runtimes.base import cpu_name
from .version import __version__

log = logging.getLogger(__name__)


# ---- statistics -------------------------------------------------------------------------
def latency_stats(ms: Iterable[float]) -> dict[str, float]:
    """count / mean / stdev / min / p50 / p90 / p99 / max of per-call milliseconds."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    return {"count": int(a.size), "mean": float(a.mean()), "stdev": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


# ---- Jetson power -------------------------------------------------------------------------
# tegrastats prints one line per interval. Rails appear as `NAME cur/avg` with optional mW units:
#   Jetson Nano / TX2 (L4T 32):  ... POM_5V_IN 2451/2451 POM_5V_GPU 0/0 POM_5V_CPU 405/405
#   Xavier / Orin (L4T 34+):     ... VDD_GPU_SOC 2769mW/2769mW VDD_CPU_CV 396mW/396mW VIN_SYS_5V0 2816mW/2816mW
#   Orin Nano / NX (JetPack 6):  ... VDD_IN 5136mW/5136mW VDD_CPU_GPU_CV 792mW/792mW VDD_SOC 1584mW/1584mW
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?\b")
# Rails that measure the whole module's input; when present they are the total power.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO")


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """One tegrastats line -> {"rails_mw": {name: current mW}, "total_mw": float | None, "ram_mb": ...}."""
    rails = {}
    for name, cur, _avg in _RAIL.findall(line):
        if name in ("RAM", "SWAP", "IRAM", "LFB"):
            continue
        rails[name] = float(cur)
    total = None
    for name in _INPUT_RAILS[:3]:
        if name in rails:
            total = rails[name]
            break
    if total is None and rails:
        total = float(sum(rails.values()))
    ram = re.search(r"RAM (\d+)/(\d+)MB", line)
    gpu = re.search(r"GR3D_FREQ (\d+)%", line)
    return {"rails_mw": rails, "total_mw": total,
            "ram_used_mb": int(ram.group(1)) if ram else None,
            "gpu_util_pct": int(gpu.group(1)) if gpu else None}


def nvpmodel_mode() -> dict[str, Any]:
    """The Jetson power mode (`nvpmodel -q`), or why it is unknown."""
    if shutil.which("nvpmodel") is None:
        return {"available": False, "reason": "nvpmodel not found (not a Jetson, or not on PATH)"}
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": f"nvpmodel -q failed: {exc}"}
    mode = re.search(r"NV Power Mode:\s*(\S+)", out)
    num = re.search(r"^\s*(\d+)\s*$", out, re.M)
    return {"available": True, "mode": mode.group(1) if mode else None, "id": int(num.group(1)) if num else None,
            "raw": out.strip()}


class TegrastatsSampler:
    """Samples `tegrastats --interval MS` in a thread while a block of work runs."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.samples: list[dict[str, Any]] = []
        self.available = shutil.which("tegrastats") is not None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TegrastatsSampler":
        if self.available:
            try:
                self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self._thread = threading.Thread(target=self._read, daemon=True)
                self._thread.start()
            except OSError as exc:
                log.warning("tegrastats could not start: %s", exc)
                self.available = False
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.append(parse_tegrastats_line(line))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self, seconds: float, images: int) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": "tegrastats not found (not a Jetson, or not on PATH)"}
        power = [s["total_mw"] for s in self.samples if s["total_mw"] is not None]
        if not power:
            return {"available": True, "samples": 0, "reason": "tegrastats printed no power rails"}
        watts = float(np.mean(power)) / 1000.0
        return {"available": True, "samples": len(power), "avg_power_w": watts,
                "joules_per_image": watts * seconds / max(images, 1)}


# ---- environment --------------------------------------------------------------------------
def _installed_version(dist: str) -> str | None:
    """A package's version from its metadata, without importing it (torch alone takes seconds)."""

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment(backend_info: dict[str, Any]) -> dict[str, Any]:
    """Versions and hardware of this run. Imports nothing heavy; the GPU name comes from torch
    only when the run already loaded it (a PyTorch or TensorRT backend)."""


    env = {"sacvit_edge": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "cpu": cpu_name(), **{name: _installed_version(name) for name in ("onnxruntime", "torch", "onnx")},
           "tensorrt": _installed_version("tensorrt"), **backend_info}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ---- the profile ----------------------------------------------------------------------------
@dataclass
class ProfileConfig:
    batch: int = 1
    warmup: int = 10
    iters: int = 100
    eta: float | None = None


@dataclass
class ProfileReport:
    config: dict[str, Any]
    latency_ms: dict[str, float]
    stages_ms: dict[str, dict[str, float]]
    throughput_ips: float
    exit_rate: float
    mean_target_tokens: float
    gflops: dict[str, float]
    environment: dict[str, Any]
    power: dict[str, Any] = field(default_factory=dict)
    power_mode: dict[str, Any] = field(default_factory=dict)
    # --images: decoding, fitting and normalising the files, per call of `batch` images (not in
    # latency_ms, which times the model on preprocessed batches, CF-ViT's protocol)
    preprocess_ms: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_preprocessing(folder: Path, clf, batch: int, iters: int, count: int = 256) -> dict[str, float]:
    """The frame path on a folder's files: clf.preprocess of `batch` files per call (decode, fit,
    normalise), `iters` calls over the files in turn; latency_stats of the calls in ms."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise DataError(f"--images {folder}: the directory holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    calls = [[files[(i * batch + j) % len(files)] for j in range(batch)] for i in range(iters)]
    clf.preprocess(calls[0])  # warm-up (imports, first allocation)
    times = []
    for chunk in calls:
        t = time.perf_counter()
        clf.preprocess(chunk)
        times.append((time.perf_counter() - t) * 1e3)
    return latency_stats(times)


def profile(clf, batches: list[np.ndarray], cfg: ProfileConfig,
            on_iter: Callable[[int, int], None] | None = None) -> ProfileReport:
    """Time `clf.run` on preprocessed batches (cycled): warm-up, then cfg.iters timed calls.

    Decoding and resizing are excluded (CF-ViT's throughput protocol: time the model only).
    GFLOPs come from the manifest's cost table, counted at export.
    """

    if not batches:
        raise ValueError("profile needs at least one batch")
    for i in range(cfg.warmup):
        clf.run(batches[i % len(batches)], cfg.eta)
    totals, stages = [], {"ee": [], "host": [], "sac": []}
    exited, counts = [], []
    fused = True  # every call one frame-graph call (batch 1 on ONNX Runtime): "ee" is that call, "sac" 0
    with TegrastatsSampler() as power:
        t0 = time.perf_counter()
        for i in range(cfg.iters):
            res = clf.run(batches[i % len(batches)], cfg.eta)
            totals.append(res.timings["total"])
            fused = fused and res.fused
            for k in stages:
                stages[k].append(res.timings[k])
            exited.append(res.exited)
            counts.append(res.counts)
            if on_iter:
                on_iter(i + 1, cfg.iters)
        wall = time.perf_counter() - t0
    exited_a, counts_a = np.concatenate(exited), np.concatenate(counts)
    images = int(exited_a.size)
    cost = clf.manifest.cost
    if cost is None:
        raise ExportError(f"{clf.manifest.directory}: the manifest has no cost table; re-export the checkpoint")
    sac_counts = counts_a[~exited_a]
    exit_rate = float(exited_a.mean())
    mean_k = float(sac_counts.mean()) if sac_counts.size else 0.0
    executed = cost.expected(exited_a, counts_a)
    expected = cost.ee + (1 - exit_rate) * (cost.sac[int(round(mean_k))] if sac_counts.size else 0.0)
    return ProfileReport(
        config={"batch": int(batches[0].shape[0]), "warmup": cfg.warmup, "iters": cfg.iters, "eta": describe_eta(clf.eta if cfg.eta is None else cfg.eta),
                "export": str(clf.manifest.directory), "backend": clf.backend_name, "frame_graph": fused and bool(totals)},
        latency_ms=latency_stats(totals),
        stages_ms={k: latency_stats(v) for k, v in stages.items()},
        throughput_ips=images / wall,
        exit_rate=exit_rate, mean_target_tokens=mean_k,
        gflops={"expected": expected, "executed": executed, "ee": cost.ee, "deit_full_resolution": cost.full},
        environment=environment(clf.backend.describe()),
        power=power.summary(wall, images), power_mode=nvpmodel_mode(),
    )


def load_image_batches(folder: Path | None, clf, batch: int, count: int = 256) -> list[np.ndarray]:
    """Preprocessed batches from an image folder, or from the cluttered test split (synthetic)."""

    if folder is not None:
        if not Path(folder).is_dir():
            raise DataError(f"--images {folder}: no such directory")
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"--images {folder}: the directory holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        x = clf.preprocess(files[:count])
    else:
        require_extra("train", "profiling on the built-in cluttered Fashion-MNIST canvases (or pass --images DIR)")
        from .data import ClutteredFashionMNIST

        ds = ClutteredFashionMNIST("test", limit=max(count, batch))
        imgs = ds.render(np.arange(len(ds))).numpy()
        x = normalize(imgs, clf.manifest.mean, clf.manifest.std)
    reps = -(-batch // len(x))
    x = np.concatenate([x] * reps) if reps > 1 else x
    n = max(1, len(x) // batch)
    return [np.ascontiguousarray(x[i * batch:(i + 1) * batch]) for i in range(n)]
