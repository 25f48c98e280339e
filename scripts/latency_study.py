"""Where batch-1 time goes, and what each candidate optimisation buys: one run per call.

    .venv/bin/python scripts/latency_study.py [--geometries tiny_112,deit_ti_224,deit_s_224]
        [--variants base,spin,ortopt,openvino] [--iters 200] -o results/latency

For each geometry (the shipped model at tiny_112; untrained SAC-ViT and DeiT at DeiT-Ti-224 and
DeiT-S-224: speed does not depend on weight values) and each variant, in one process:
DeiT at batch 1 (mean/p50/p99) and 32 (images/s); SAC-ViT frames at batch 1: an exit frame (EE
only), k = 9, k = k_max (the no-exit worst case), and the mean over the shipped model's exit
pattern (exits and target counts from 256 test canvases at its eta), and images/s at batch 32
with that pattern; FLOP-ideal speedup from the cost model. With --profile, ONNX Runtime's
per-node profile of the base variant (EE, SAC at k = 9, DeiT; batch 1 and 32) by operator type.

Variants (each applied to SAC-ViT's two engines AND the DeiT baseline):
  base      the shipped session options (SAC: no spinning; DeiT: spinning on, its best)
  spin      intra-op spinning on for SAC-ViT's sessions too
  ortopt    ONNX Runtime's transformer optimizer (onnxruntime.transformers, model_type vit) on
            every graph, as a derived artifact (the exported graphs are untouched)
  static1   batch-1 sessions: the batch axis fixed to 1 (ONNX Runtime free-dimension override,
            so shape arithmetic folds away), DeiT too; what OrtBackend now does for batch-1 calls
  threads1  one intra-op thread per session (SAC-ViT's two and DeiT's)
  openvino  both engines and DeiT compiled by OpenVINO for the CPU (if installed)
Writes latency_study.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sacvit_edge.checkpoint import load_checkpoint, save_checkpoint
from sacvit_edge.classifier import EdgeClassifier, ImposedDecisions
from sacvit_edge.config import preset
from sacvit_edge.export.bundle import export_checkpoint
from sacvit_edge.export.torch2onnx import export_single
from sacvit_edge.flops import CostModel
from sacvit_edge.model import build_model
from sacvit_edge.runtimes.base import EEResult, HostBackend
from sacvit_edge.runtimes.ort import OrtBackend, session_options

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("latency_study")


def geometry_configs(name: str):
    if name == "deit_ti_224":
        return preset("deit_s_224", embed_dim=192, num_heads=3, num_classes=10)
    if name == "deit_s_224":
        return preset("deit_s_224", num_classes=10)
    raise ValueError(name)


def stats(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def time_calls(fn: Callable[[int], Any], iters: int, warmup: int = 10) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(iters):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e3)
    return out


# ---- derived engines for the variants --------------------------------------------------------------

def ort_optimized(src: Path, dst: Path, num_heads: int, hidden: int) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="vit", num_heads=num_heads, hidden_size=hidden, opt_level=0)
    model.save_model_to_file(str(dst))
    log.info("ortopt %s: %s", src.name, model.get_fused_operator_statistics())
    return dst


class OrtSingle:
    def __init__(self, path: Path, spinning: bool, batch1: bool = False, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = session_options(threads, spinning=spinning)
        if batch1:
            opts.add_free_dimension_override_by_name("batch", 1)
        self.s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.s.run(None, {"image": x})[0]


class OvSingle:
    def __init__(self, path: Path) -> None:
        import openvino as ov

        core = ov.Core()
        self.c = core.compile_model(core.read_model(str(path)), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        self.r = self.c.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.r.infer({"image": x})[0]


class OvBackend(HostBackend):
    """Both engines on OpenVINO (study only; promoted to runtimes/ if it wins clearly)."""

    name = "openvino"

    def __init__(self, ee: Path, sac: Path) -> None:
        import openvino as ov

        core = ov.Core()
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.ee = core.compile_model(core.read_model(str(ee)), "CPU", cfg).create_infer_request()
        self.sac = core.compile_model(core.read_model(str(sac)), "CPU", cfg).create_infer_request()

    def run_ee(self, image):
        out = self.ee.infer({"image": image})
        vals = {k.get_any_name(): v for k, v in out.items()}
        return EEResult(logits=vals["ee_logits"], gca=vals["gca"], final=vals["ee_final"], hidden=vals["ee_hidden"],
                        image=image)

    def run_sac_feeds(self, feeds):
        return next(iter(self.sac.infer(feeds).values()))

    def device(self) -> str:
        return "openvino CPU"

    def describe(self) -> dict:
        return {"backend": "openvino"}

    def close(self) -> None:
        pass


# ---- one geometry -----------------------------------------------------------------------------------

def measure(clf: EdgeClassifier, deit: Callable, x: np.ndarray, pattern: tuple[np.ndarray, np.ndarray],
            iters: int, batch: int, with_b32: bool = True) -> dict[str, Any]:
    exited, counts = pattern
    lo, hi = clf.k_range
    one = [np.ascontiguousarray(x[i % len(x)][None]) for i in range(len(x))]
    res: dict[str, Any] = {}
    res["deit_b1"] = stats(time_calls(lambda i: deit(one[i % len(one)]), iters))

    def frame(e: bool, k: int):
        imp = ImposedDecisions(np.array([e]), np.array([0 if e else k], np.int64))
        return lambda i: clf.run(one[i % len(one)], imposed=imp)

    res["exit_frame_b1"] = stats(time_calls(frame(True, 0), iters))
    res["k9_frame_b1"] = stats(time_calls(frame(False, 9), iters))
    res["kmax_frame_b1"] = stats(time_calls(frame(False, hi), iters))
    n = len(exited)
    res["pattern_b1"] = stats(time_calls(
        lambda i: clf.run(one[i % len(one)], imposed=ImposedDecisions(exited[i % n][None], counts[i % n][None])), iters))
    if not with_b32:  # batch-1-only sessions: batch 32 is the base variant's
        res["deit_ips_b32"] = res["sac_ips_b32"] = float("nan")
        return res
    xb = [np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))]
    reps = max(3, 96 // batch)
    rb = lambda i: ImposedDecisions(exited[(i * batch) % n:][:batch] if (i * batch) % n + batch <= n else exited[:batch],  # noqa: E731
                                    counts[(i * batch) % n:][:batch] if (i * batch) % n + batch <= n else counts[:batch])
    t_deit = time_calls(lambda i: deit(xb[0]), reps, warmup=1)
    t_sac = time_calls(lambda i: clf.run(xb[0], imposed=rb(i)), reps, warmup=1)
    res["deit_ips_b32"] = batch * 1e3 / float(np.median(t_deit))
    res["sac_ips_b32"] = batch * 1e3 / float(np.median(t_sac))
    return res


def ortprofile(path: Path, feeds: dict, iters: int = 50) -> dict[str, Any]:
    import onnxruntime as ort

    opts = session_options(None)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        opts.profile_file_prefix = str(Path(d) / "p")
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(10):
            s.run(None, feeds)
        t = time.perf_counter()
        for _ in range(iters):
            s.run(None, feeds)
        wall_ms = (time.perf_counter() - t) * 1e3 / iters
        events = json.loads(Path(s.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    nodes = 0
    runs = [e for e in events if e.get("name") == "model_run"]
    per_run_us = float(np.mean([e["dur"] for e in runs[-iters:]])) if runs else 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
            nodes += 1
    total_runs = len(runs)
    by_op = {k: v / max(total_runs, 1) / 1e3 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}
    kernel_ms = sum(by_op.values())
    return {"wall_ms": wall_ms, "model_run_ms": per_run_us / 1e3, "kernel_ms": kernel_ms,
            "nodes_per_run": nodes / max(total_runs, 1), "by_op_ms": dict(list(by_op.items())[:12])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--geometries", default="tiny_112,deit_ti_224,deit_s_224")
    ap.add_argument("--variants", default="base,spin,ortopt,openvino")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "results" / "latency")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    shipped = load_checkpoint(REPO / "checkpoints" / "sacvit_tiny_112.pt")
    probe = EdgeClassifier(export_checkpoint(shipped.path, work / "probe").directory, backend="onnxruntime")
    from sacvit_edge.bench.run import eval_images

    x_small, _ = eval_images(256, shipped.mean, shipped.std)
    r = probe.run(x_small, eta=shipped.eta)
    pattern = (r.exited.copy(), r.counts.copy())
    result: dict[str, Any] = {"pattern": {"exit_rate": float(r.exited.mean()), "mean_k": float(r.counts[~r.exited].mean()),
                                          "eta": shipped.eta}, "geometries": {}}
    for geo in args.geometries.split(","):
        torch.manual_seed(0)
        if geo == "tiny_112":
            sac_path, deit_model = shipped.path, load_checkpoint(REPO / "checkpoints" / "deit_tiny_112.pt").model
            sac_model = shipped.model
        else:
            cfg = geometry_configs(geo).replace(k_min=shipped.config.k_min, k_max=shipped.config.k_max)
            sac_model, deit_model = build_model(cfg), build_model(cfg.replace(arch="deit"))
            sac_path = save_checkpoint(work / f"{geo}.pt", sac_model, shipped.class_names)
        d = export_checkpoint(sac_path, work / geo).directory
        deit_onnx = export_single(deit_model, work / f"{geo}_deit.onnx")
        cost = CostModel(sac_model)
        ideal = cost.full / cost.expected(*pattern)
        size = sac_model.cfg.img_size
        x = np.random.default_rng(0).standard_normal((64, 3, size, size)).astype(np.float32)
        rows: dict[str, Any] = {"flop_ideal": ideal, "gflops_deit": cost.full, "gflops_sac": cost.expected(*pattern),
                                "gflops_ee": cost.ee, "gflops_kmax": cost.ee + cost.sac(shipped.config.k_max)}
        for variant in args.variants.split(","):
            log.info("%s / %s", geo, variant)
            clf = EdgeClassifier(d, backend="onnxruntime")
            if variant == "base":
                deit = OrtSingle(deit_onnx, spinning=True)
            elif variant == "spin":
                import onnxruntime as ort

                opts = session_options(None, spinning=True)
                clf.backend.ee = ort.InferenceSession(str(d / "ee.onnx"), opts, providers=["CPUExecutionProvider"])
                clf.backend.sac = ort.InferenceSession(str(d / "sac.onnx"), opts, providers=["CPUExecutionProvider"])
                deit = OrtSingle(deit_onnx, spinning=True)
            elif variant in ("static1", "threads1"):
                import onnxruntime as ort

                th = 1 if variant == "threads1" else None
                opts = session_options(th)
                if variant == "static1":
                    opts.add_free_dimension_override_by_name("batch", 1)
                clf.backend.ee = ort.InferenceSession(str(d / "ee.onnx"), opts, providers=["CPUExecutionProvider"])
                clf.backend.sac = ort.InferenceSession(str(d / "sac.onnx"), opts, providers=["CPUExecutionProvider"])
                deit = OrtSingle(deit_onnx, spinning=True, batch1=variant == "static1", threads=th)
            elif variant == "ortopt":
                c = sac_model.cfg
                ee_o = ort_optimized(d / "ee.onnx", work / f"{geo}_ee_opt.onnx", c.num_heads, c.embed_dim)
                sac_o = ort_optimized(d / "sac.onnx", work / f"{geo}_sac_opt.onnx", c.num_heads, c.embed_dim)
                deit_o = ort_optimized(deit_onnx, work / f"{geo}_deit_opt.onnx", c.num_heads, c.embed_dim)
                clf.close()
                clf = EdgeClassifier(d, backend="onnxruntime",
                                     backend_wrapper=lambda opened: (opened.close(), OrtBackend(ee_o, sac_o))[1])
                deit = OrtSingle(deit_o, spinning=True)
            elif variant == "openvino":
                try:
                    clf.close()
                    clf = EdgeClassifier(d, backend="onnxruntime", backend_wrapper=lambda opened: (
                        opened.close(), OvBackend(d / "ee.onnx", d / "sac.onnx"))[1])
                    deit = OvSingle(deit_onnx)
                except ImportError:
                    log.info("openvino not installed: skipped")
                    continue
            else:
                raise SystemExit(f"unknown variant {variant}")
            m = measure(clf, deit, x, pattern, args.iters, args.batch, with_b32=variant != "static1")
            m["realised_b1"] = m["deit_b1"]["mean"] / m["pattern_b1"]["mean"]
            m["realised_over_ideal_b1"] = m["realised_b1"] / ideal
            m["realised_b32"] = m["sac_ips_b32"] / m["deit_ips_b32"]
            m["realised_over_ideal_b32"] = m["realised_b32"] / ideal
            m["kmax_over_deit_b1"] = m["kmax_frame_b1"]["mean"] / m["deit_b1"]["mean"]
            rows[variant] = m
            log.info("  deit %.2f ms, mean %.2f ms (%.2f of ideal), kmax %.2f ms; b32 %.2f of ideal",
                     m["deit_b1"]["mean"], m["pattern_b1"]["mean"], m["realised_over_ideal_b1"],
                     m["kmax_frame_b1"]["mean"], m["realised_over_ideal_b32"])
        if args.profile:
            c = sac_model.cfg
            ee1 = {"image": x[:1]}
            clf = EdgeClassifier(d, backend="onnxruntime")
            rec: list = []
            orig = clf.backend.run_sac_feeds

            def grab(feeds):
                rec.append(feeds)
                return orig(feeds)

            clf.backend.run_sac_feeds = grab
            clf.run(x[:1], imposed=ImposedDecisions(np.array([False]), np.array([9])))
            sac1 = rec[-1]
            rows["profile"] = {"ee_b1": ortprofile(d / "ee.onnx", ee1), "sac_k9_b1": ortprofile(d / "sac.onnx", sac1),
                               "deit_b1": ortprofile(deit_onnx, ee1),
                               "ee_b32": ortprofile(d / "ee.onnx", {"image": x[:32]}, 10),
                               "deit_b32": ortprofile(deit_onnx, {"image": x[:32]}, 10)}
        result["geometries"][geo] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency_study.json").write_text(json.dumps(result, indent=2, default=float))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["| geometry | variant | DeiT ms @1 | exit frame | k=9 frame | no-exit frame (k_max) | mean @1 (pattern) | "
             "realised/ideal @1 | DeiT img/s @32 | SAC img/s @32 | realised/ideal @32 | FLOP-ideal |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for geo, rows in result["geometries"].items():
        for v, m in rows.items():
            if v == "profile" or not isinstance(m, dict) or "deit_b1" not in m:
                continue
            lines.append(f"| {geo} | {v} | {m['deit_b1']['mean']:.2f} | {m['exit_frame_b1']['mean']:.2f} | "
                         f"{m['k9_frame_b1']['mean']:.2f} | {m['kmax_frame_b1']['mean']:.2f} ({m['kmax_over_deit_b1']:.2f}x DeiT) | "
                         f"{m['pattern_b1']['mean']:.2f} | {m['realised_over_ideal_b1']:.2f} | {m['deit_ips_b32']:.0f} | "
                         f"{m['sac_ips_b32']:.0f} | {m['realised_over_ideal_b32']:.2f} | {rows['flop_ideal']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
