"""Benchmark reports: Markdown tables, the PNG plot, and the targets a run is judged against.

The targets are the project's goals for its benchmark (issue thresholds), not properties of
the SDK, so they live here with the report and not in the measuring code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sacvit_edge.extras import require_extra

LABELS = {"deit": "DeiT (baseline)", "sac": "SAC-ViT", "cf": "CF-ViT mode", "lf": "LF-ViT mode"}

TARGETS = {"accuracy_margin_pt": 0.3,  # SAC-ViT points count when within this of DeiT's top-1
           "speedup": 2.5, "flops_ratio": 0.38, "realised_over_ideal": 0.9}


@dataclass
class BenchReport:
    """One `sacvit-edge bench` run: every row measured side by side, the DeiT baseline's accuracy
    and cost, the environment, and (paper geometry) the geometry tables. Rows stay dicts: their
    columns differ by method (CF/LF points carry a k, DeiT rows none) and they go straight to JSON."""

    config: dict[str, Any]
    deit_top1: float
    deit_gflops: float
    rows: list[dict[str, Any]]
    environment: dict[str, Any]
    paper_geometry: list[dict[str, Any]] | None = None
    latency_geometries: list[dict[str, Any]] | None = None
    targets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets:
            self.targets = check_targets(self.rows, self.deit_top1)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _best_at_accuracy(rows, method: str, backend: str, min_top1: float) -> dict | None:
    ok = [r for r in rows if r["method"] == method and r["backend"] == backend and r["top1"] >= min_top1]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def check_targets(rows: list[dict], deit_top1: float, backend: str = "onnxruntime") -> dict[str, Any]:
    """The issue's targets, evaluated on the ONNX Runtime rows of this run."""
    floor = deit_top1 - TARGETS["accuracy_margin_pt"]
    best = _best_at_accuracy(rows, "sac", backend, floor)
    out: dict[str, Any] = {"accuracy_floor": floor, "sac_point": best}
    if best:
        out.update(speedup=best["realised_speedup"], speedup_target=TARGETS["speedup"],
                   speedup_met=best["realised_speedup"] >= TARGETS["speedup"],
                   flops_ratio=1 / best["flop_ideal_speedup"], flops_target=TARGETS["flops_ratio"],
                   flops_met=1 / best["flop_ideal_speedup"] <= TARGETS["flops_ratio"],
                   realised_over_ideal=best["realised_over_ideal"], realised_target=TARGETS["realised_over_ideal"],
                   realised_met=best["realised_over_ideal"] >= TARGETS["realised_over_ideal"])
    # SAC-ViT beats a peer when, at the peer's every point, some SAC point is at least as accurate AND
    # at least as fast; reported as the share of peer points dominated.
    sac_pts = [(r["top1"], r["images_per_s"]) for r in rows if r["method"] == "sac" and r["backend"] == backend]
    for peer in ("cf", "lf"):
        peer_pts = [(r["top1"], r["images_per_s"]) for r in rows if r["method"] == peer and r["backend"] == backend]
        dominated = sum(any(a >= pa and s >= ps for a, s in sac_pts) for pa, ps in peer_pts)
        best_peer = _best_at_accuracy(rows, peer, backend, floor)
        out[f"vs_{peer}"] = {"peer_points_dominated": dominated, "peer_points": len(peer_pts),
                             "peer_best_at_floor_ips": best_peer["images_per_s"] if best_peer else None,
                             "sac_best_at_floor_ips": best["images_per_s"] if best else None}
    return out


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: BenchReport) -> str:
    lines = ["| method | backend | eta | top-1 % | exit rate | mean k | GFLOPs | img/s @32 | p50 ms @1 | p99 ms @1 "
             "| speedup | FLOP-ideal | realised/ideal | host share |",
             "|" + "---|" * 14]
    for r in result.rows:
        lines.append(f"| {LABELS[r['method']]} | {r['backend']} | {_f(r['eta'], '.2f')} | {_f(r['top1'], '.2f')} "
                     f"| {_f(r['exit_rate'], '.3f')} | {_f(r.get('mean_target_tokens'), '.1f')} | {r['gflops']:.4f} "
                     f"| {r['images_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {_f(r['realised_speedup'], '.2f')}x | {r['flop_ideal_speedup']:.2f}x "
                     f"| {_f(r['realised_over_ideal'], '.2f')} | {r['host_share']:.3f} |")
    return "\n".join(lines)


def markdown_paper(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | GFLOPs | exit rate | mean k | img/s @32 | speedup | FLOP-ideal | realised/ideal | host share |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {LABELS[r['method']]} | {r['gflops']:.3f} | {r['exit_rate']:.3f} "
                     f"| {_f(r.get('mean_target_tokens'), '.1f')} | {r['images_per_s']:.1f} "
                     f"| {_f(r.get('realised_speedup'), '.2f')} | {_f(r.get('flop_ideal_speedup'), '.2f')} "
                     f"| {_f(r.get('realised_over_ideal'), '.2f')} | {_f(r.get('host_share'), '.3f')} |")
    return "\n".join(lines)


def markdown_latency(rows: list[dict[str, Any]]) -> str:
    lines = ["| geometry | DeiT ms @1 mean / p50 / p99 | SAC-ViT ms @1 mean / p50 / p99 | exit frame | no-exit frame "
             "(k_max) | realised @1 (/ideal) | DeiT img/s @32 | SAC-ViT img/s @32 | realised @32 (/ideal) | FLOP-ideal |",
             "|" + "---|" * 10]
    for r in rows:
        d, s, e, k = r["deit_b1_ms"], r["sac_b1_ms"], r["exit_frame_ms"], r["no_exit_frame_ms"]
        lines.append(f"| {r['geometry']}{' (trained)' if r['trained'] else ''} | {d['mean']:.2f} / {d['p50']:.2f} / "
                     f"{d['p99']:.2f} | {s['mean']:.2f} / {s['p50']:.2f} / {s['p99']:.2f} | {e['mean']:.2f} | "
                     f"{k['mean']:.2f} ({r['no_exit_over_deit_b1']:.2f}x DeiT) | {r['realised_b1']:.2f}x "
                     f"({r['realised_over_ideal_b1']:.2f}) | {r['deit_images_per_s']:.1f} | {r['sac_images_per_s']:.1f} "
                     f"| {r['realised_b32']:.2f}x ({r['realised_over_ideal_b32']:.2f}) | {r['flop_ideal_speedup']:.2f}x |")
    graphs = [r for r in rows if r.get("graphs")]
    if graphs:  # which graph each method ran, and its size
        lines += ["", "| geometry | DeiT graph (nodes) | SAC-ViT graphs (nodes) | batch-1 threads DeiT / SAC-ViT |",
                  "|---|---|---|---|"]
        for r in graphs:
            g, t = r["graphs"], r.get("batch1_threads", {})
            fmt = lambda d: ", ".join(f"{name} ({n})" for name, n in d.items())  # noqa: E731
            lines.append(f"| {r['geometry']} | {fmt(g['deit'])} | {fmt(g['sac'])} | {t.get('deit', '-')} / {t.get('sac', '-')} |")
    return "\n".join(lines)


def plot(result: BenchReport, path: Path, backend: str = "onnxruntime") -> Path:
    """Accuracy against GFLOPs and against images/s, one curve per method, DeiT marked."""
    require_extra("bench", "the benchmark plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"sac": "tab:red", "cf": "tab:blue", "lf": "tab:green", "deit": "black"}
    for ax, key, xlabel in ((axes[0], "gflops", "expected GFLOPs / image"),
                            (axes[1], "images_per_s", f"images/s (batch {result.config['batch']}, {backend})")):
        for method in ("sac", "cf", "lf"):
            rows = sorted((r for r in result.rows if r["method"] == method and r["backend"] == backend),
                          key=lambda r: r["eta"])  # one curve along the eta sweep
            pts = [(r[key], r["top1"]) for r in rows]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[method], label=LABELS[method])
        deit = [r for r in result.rows if r["method"] == "deit" and r["backend"] == backend]
        if deit:
            ax.scatter([deit[0][key]], [deit[0]["top1"]], marker="*", s=250, color="black", label=LABELS["deit"], zorder=5)
            margin = TARGETS["accuracy_margin_pt"]
            ax.axhline(deit[0]["top1"] - margin, color="gray", ls=":", lw=1, label=f"DeiT - {margin} pt")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 % (cluttered Fashion-MNIST test)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle("SAC-ViT vs DeiT and the CF-ViT / LF-ViT modes (eta sweep)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(result: BenchReport, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md", "plot": out_dir / "bench.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    md = ["## Trained small model (tiny_112), cluttered Fashion-MNIST test split", "", markdown(result)]
    if result.paper_geometry is not None:
        md += ["", "## Paper geometry (deit_s_224, untrained weights, exit pattern of the trained model)", "",
               markdown_paper(result.paper_geometry)]
    if result.latency_geometries is not None:
        md += ["", "## Batch-1 latency and batch-32 throughput by geometry (ONNX Runtime, the shipped exit pattern)", "",
               markdown_latency(result.latency_geometries)]
    paths["markdown"].write_text("\n".join(md) + "\n")
    plot(result, paths["plot"])
    return paths
