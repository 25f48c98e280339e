"""`sacvit-edge serve-bench`: SAC-ViT served by Triton against DeiT served the same way and
against the in-process classifier, one run, same images, same machine.

Each served model runs in a real tritonserver on loopback (serving.server), with the same
dynamic batching and instance settings; N concurrent clients send one encoded image per request
(serving.loadtest). DeiT gets what serving it best needs: one Python-backend model that decodes
with the same code and runs its graph (the graph style and session options the benchmark gives
it: bench.run.DeitRunner) in the same process, so it pays no hop between processes; SAC-ViT's EE
and SAC engines run either as models of their own, called through BLS (the layout for Triton's
onnxruntime / tensorrt backends), or inline in the BLS model, which is what DeiT gets.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.datasets import open_source
from sacvit_edge.manifest import read_manifest
from sacvit_edge.serving.loadtest import LoadResult, run_clients
from sacvit_edge.serving.repository import ServingOptions, build_baseline_repository, build_repository
from sacvit_edge.serving.server import TritonServer, free_ports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeBenchConfig:
    """export: the SAC-ViT export directory served; or sac_checkpoint, exported afresh for the
    run (with the ONNX Attention graphs where this torch writes them). deit_checkpoint: the
    baseline, whose graph gets the same attention style as the SAC-ViT engines (None: no DeiT)."""

    export: Path | None
    deit_checkpoint: Path | None
    sac_checkpoint: Path | None = None
    clients: int = 8
    images: int = 400
    options: ServingOptions = ServingOptions()
    data: Path | None = None
    warmup: int = 32
    rounds: int = 3


def unseen_images(export: Path, n: int, data: Path | None) -> tuple[list[bytes], np.ndarray]:
    """n labelled images the model was not tuned on, encoded as PNG files (what clients send)."""
    manifest = read_manifest(export)
    source = open_source(data, "test", manifest.class_names, seed=11, limit=n)
    files, labels = [], []
    for items, ys in source.items(64):
        for item in items:
            buf = io.BytesIO()
            Image.fromarray(np.asarray(item)).save(buf, format="PNG")
            files.append(buf.getvalue())
        labels.append(np.asarray(ys))
    return files, np.concatenate(labels)


def baseline_attention(manifest) -> str:
    """The attention style of the DeiT baseline's graph: the one SAC-ViT's served engines have
    (the ONNX Attention op where its export has those graphs, which ONNX Runtime runs; else the
    opset-17 graphs), so neither side gets a graph the other lacks."""
    return "onnx" if manifest.attention_graphs is not None else "explicit"


def in_process(export: Path, items: list[bytes], batch: int) -> LoadResult:
    """EdgeClassifier.predict_batch on the same files, `batch` at a time, in this process."""
    with EdgeClassifier(export, backend="onnxruntime") as clf:
        clf.predict_batch(items[:batch])  # warm-up
        times, exited, sizes = [], [], {}
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            t = time.perf_counter()
            preds = clf.predict_batch(items[i:i + batch])
            times += [time.perf_counter() - t] * len(preds)
            exited += [p.exited_early for p in preds]
            sizes[len(preds)] = sizes.get(len(preds), 0) + 1  # the last call may be smaller
        seconds = time.perf_counter() - start
    return LoadResult(name=f"in-process predict_batch({batch})", clients=1, seconds=seconds,
                      latencies_ms=np.asarray(times) * 1e3, exited=np.asarray(exited, bool), batch_sizes=sizes)


def run_serve_bench(cfg: ServeBenchConfig, step: Callable[[str], None] = lambda _: None) -> dict:
    """Every served variant in its own server at once; rounds interleave them (one variant's
    images, then the next's), so a slow spell of the machine hits all alike."""
    with tempfile.TemporaryDirectory(prefix="sacvit-edge-serve-bench-") as work, ExitStack() as servers:
        work_dir = Path(work)
        if cfg.sac_checkpoint is not None:
            from sacvit_edge.export.bundle import export_checkpoint

            step(f"exporting {cfg.sac_checkpoint}")
            cfg = replace(cfg, export=export_checkpoint(cfg.sac_checkpoint, work_dir / "sac_export").directory)
        assert cfg.export is not None
        manifest = read_manifest(cfg.export)
        items, _ = unseen_images(cfg.export, cfg.images, cfg.data)
        variants: list[tuple[str, Path, str]] = []
        for stage_backend, name in (("python", "SAC-ViT (Triton: BLS + EE, SAC models)"),
                                    ("inline", "SAC-ViT (Triton: engines inline)")):
            step(f"{name}: writing the model repository")
            repo = build_repository(cfg.export, work_dir / f"sacvit_{stage_backend}",
                                    replace(cfg.options, stage_backend=stage_backend))
            variants.append((name, repo.path, cfg.options.model_name))
        if cfg.deit_checkpoint is not None:
            from sacvit_edge.checkpoint import load_checkpoint
            from sacvit_edge.export.torch2onnx import export_single

            attention = baseline_attention(manifest)
            step(f"DeiT: exporting its graph (attention {attention!r}, as SAC-ViT's)")
            graph = export_single(load_checkpoint(cfg.deit_checkpoint).model, work_dir / "deit.onnx", attention=attention)
            base = build_baseline_repository(graph, work_dir / "deit", manifest, cfg.options)
            variants.append(("DeiT (Triton: one model, graph inline)", base.path, base.options.model_name))
        urls = {}
        for name, path, model in variants:
            http, grpc, metrics = free_ports(3)
            t = time.perf_counter()
            srv = servers.enter_context(TritonServer(path, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                                     address="127.0.0.1"))
            step(f"{name}: server ready in {time.perf_counter() - t:.1f} s; warming up")
            run_clients(srv.http_url, model, items[: cfg.warmup], cfg.clients)
            urls[name] = (srv.http_url, model)
        results: dict[str, LoadResult] = {}
        for r in range(cfg.rounds):
            for name, (url, model) in urls.items():
                step(f"round {r + 1}/{cfg.rounds}: {name}, {len(items)} images from {cfg.clients} clients")
                got = run_clients(url, model, items, cfg.clients, name=name)
                results[name] = results[name].merged(got) if name in results else got
        step("in-process predict_batch")
        rows = [*results.values(), in_process(cfg.export, items, cfg.options.max_batch)]
    deit = next((r for r in rows if r.name.startswith("DeiT")), None)
    return {"config": {"export": str(cfg.sac_checkpoint or cfg.export), "clients": cfg.clients, "images": len(items),
                       "rounds": cfg.rounds, "graphs": "attention (opset 23)" if manifest.attention_graphs else "opset 17",
                       "max_batch": cfg.options.max_batch, "max_queue_delay_us": cfg.options.max_queue_delay_us,
                       "instances": cfg.options.instances},
            "rows": [{**r.to_dict(), "throughput_vs_deit": r.throughput / deit.throughput if deit else None}
                     for r in rows]}


def plot(result: dict, path: Path) -> Path | None:
    """Throughput and p50 / p99 latency per served variant, side by side (None without matplotlib)."""
    from sacvit_edge.extras import has_extra

    if not has_extra("bench"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["name"].replace(" (", "\n(") for r in rows]
    colors = ["tab:red" if r["name"].startswith("SAC") else "black" if r["name"].startswith("DeiT") else "tab:gray"
              for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    axes[0].barh(names, [r["throughput_img_s"] for r in rows], color=colors)
    axes[0].set_xlabel("images/s")
    y = np.arange(len(rows))
    axes[1].barh(y - 0.2, [r["p50_ms"] for r in rows], height=0.4, color=colors, alpha=0.6, label="p50")
    axes[1].barh(y + 0.2, [r["p99_ms"] for r in rows], height=0.4, color=colors, label="p99")
    axes[1].set_yticks(y, [""] * len(rows))
    axes[1].set_xlabel("request latency, ms (client side, loopback)")
    axes[1].legend()
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    c = result["config"]
    fig.suptitle(f"Triton serving load test: {c['clients']} clients, {c['images']} images x {c['rounds']} rounds, "
                 f"max batch {c['max_batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
