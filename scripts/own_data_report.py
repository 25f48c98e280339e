"""Summarise own-data training runs: per arm and seed, top-1 against the DeiT baseline.

Reads `sacvit-edge eval --json` files named `ARM.sSEED.eval.json` (one per run) from a directory,
pairs every SAC-ViT arm with the DeiT arm of the same folder by seed, and writes a JSON summary,
a Markdown table and a PNG (each seed's top-1, the pairs joined) to OUT:

    python scripts/own_data_report.py RUNS OUT --arm deit=digits:deit --arm final=digits:sacvit ...

`--arm FILE_PREFIX=FOLDER:LABEL` names the runs of one arm: the folder they ran on (arms of one
folder are compared with that folder's `deit` arm) and the label the table gives them. The
report is a measurement record (issue 22); it never writes into the repository unless told to.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def load_runs(runs: Path, prefix: str) -> dict[int, dict]:
    out = {}
    for f in sorted(runs.glob(f"{prefix}.s*.eval.json")):
        seed = f.name[len(prefix) + 2:].split(".")[0]
        if seed.isdigit():
            out[int(seed)] = json.loads(f.read_text())
    return out


def summarise(runs: Path, arms: list[tuple[str, str, str]]) -> list[dict]:
    rows = []
    baselines = {folder: load_runs(runs, prefix) for prefix, folder, label in arms if label == "deit"}
    for prefix, folder, label in arms:
        by_seed = load_runs(runs, prefix)
        if not by_seed:
            raise SystemExit(f"no runs {runs}/{prefix}.s*.eval.json")
        seeds = sorted(by_seed)
        row = {"arm": prefix, "folder": folder, "label": label, "seeds": seeds,
               "top1": [by_seed[s]["top1"] for s in seeds]}
        if "top1_sac" in by_seed[seeds[0]]:
            row.update(head=[by_seed[s]["top1_sac"] for s in seeds], ee=[by_seed[s]["top1_ee"] for s in seeds],
                       exit_rate=[by_seed[s]["exit_rate"] for s in seeds], gflops=[by_seed[s]["gflops"] for s in seeds])
            base = baselines.get(folder, {})
            pairs = [by_seed[s]["top1"] - base[s]["top1"] for s in seeds if s in base]
            if pairs:
                row["vs_deit"] = pairs
                row["vs_deit_mean"] = statistics.mean(pairs)
                row["vs_deit_se"] = statistics.stdev(pairs) / math.sqrt(len(pairs)) if len(pairs) > 1 else None
        row["top1_mean"] = statistics.mean(row["top1"])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    lines = ["| folder | arm | seeds | top-1 at the tuned eta (mean; per seed) | vs DeiT, paired (mean ± s.e.) | "
             "exit rate (mean) | SAC head, no exit (mean) | EE head (mean) |", "|" + " --- |" * 8]
    for r in rows:
        vs = (f"{r['vs_deit_mean']:+.2f} ± {r['vs_deit_se']:.2f}" if r.get("vs_deit_se") is not None else "-")
        lines.append(f"| {r['folder']} | {r['label']} | {r['seeds'][0]}-{r['seeds'][-1]} | {r['top1_mean']:.2f} "
                     f"({fmt(r['top1'])}) | {vs} | "
                     + (f"{statistics.mean(r['exit_rate']):.3f} | {statistics.mean(r['head']):.2f} | "
                        f"{statistics.mean(r['ee']):.2f} |" if "head" in r else "- | - | - |"))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = sorted({r["folder"] for r in rows})
    fig, axes = plt.subplots(1, len(folders), figsize=(4.5 * len(folders), 4), squeeze=False)
    for ax, folder in zip(axes[0], folders):
        arms = [r for r in rows if r["folder"] == folder]
        for i, r in enumerate(arms):
            ax.scatter([i] * len(r["top1"]), r["top1"], s=18, alpha=0.7)
            ax.hlines(r["top1_mean"], i - 0.3, i + 0.3, color="black")
        for s in sorted({s for r in arms for s in r["seeds"]}):  # each seed joined across the arms
            pts = [(i, r["top1"][r["seeds"].index(s)]) for i, r in enumerate(arms) if s in r["seeds"]]
            ax.plot(*zip(*pts), color="grey", linewidth=0.5, alpha=0.5)
        ax.set_xticks(range(len(arms)), [r["label"] for r in arms], rotation=20, ha="right", fontsize=8)
        ax.set_title(folder)
        ax.set_ylabel("held-out top-1 (%) at the tuned eta")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("out", type=Path, help="output stem: OUT.json, OUT.md, OUT.png")
    ap.add_argument("--arm", action="append", required=True, help="FILE_PREFIX=FOLDER:LABEL")
    args = ap.parse_args()
    arms = []
    for a in args.arm:
        prefix, _, rest = a.partition("=")
        folder, _, label = rest.partition(":")
        if not (prefix and folder and label):
            raise SystemExit(f"--arm {a!r}: expected FILE_PREFIX=FOLDER:LABEL")
        arms.append((prefix, folder, label))
    rows = summarise(args.runs, arms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
