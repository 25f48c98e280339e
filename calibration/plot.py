"""The calibration picture: accuracy against cost along the eta sweep, chosen point marked
(matplotlib, from the [bench] extra; the CLI skips the plot without it)."""

from __future__ import annotations

from pathlib import Path


def plot_calibration(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = {k: v for k, v in report["precisions"].items() if "curve" in v}
    panels = [("gflops", "expected GFLOPs per image"), ("latency_ms", f"expected ms per image (batch "
                                                                        f"{next(iter(precisions.values()))['latency_batch']})")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, label) in zip(axes, panels):
        for name, entry in precisions.items():
            pts = [p for p in entry["curve"] if key in p]
            ax.plot([p[key] for p in pts], [p["top1"] for p in pts], ".-", ms=3, label=name)
            c = entry["chosen"]
            if key in c:
                ax.plot([c[key]], [c["top1"]], "o", ms=10, mfc="none", mew=2, color="red")
                ax.annotate(f"{name} eta {c['eta']}", (c[key], c["top1"]), textcoords="offset points", xytext=(6, -12))
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"calibration on {report['dataset']['images']} images: {report['request']['description']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
