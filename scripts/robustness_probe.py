"""Re-run of the damaged-artifact probe: mutate every field of an export's manifest and
of a checkpoint, damage the files, and count what happens at load.

    .venv/bin/python scripts/robustness_probe.py [--export DIR] [--checkpoint model.pt] [--json out.json]

Outcomes: "refused" (the project's own error, naming the file), "raw" (any other exception: a
defect), "loaded" (the artifact loads: a defect unless the mutation left it unchanged).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sacvit_edge import EdgeClassifier
from sacvit_edge.errors import SacvitError

MUTATIONS: list[Any] = [None, "x", -1, 0, 1e30, [], {}, True, [0, 0, 0], 224]
DELETE = object()


def leaves(obj: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, (*path, i))


def mutate(obj: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(obj)
    if not path:
        return value
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def tally(counts: dict[str, int], result: str, label: str) -> None:
    """Count one case; print it when it was not refused (a defect, or a harmless valid value)."""
    counts[result] = counts.get(result, 0) + 1
    counts["cases"] = counts.get("cases", 0) + 1
    if result != "refused":
        print(f"{result}: {label}")


def outcome(fn) -> str:
    try:
        fn()
    except SacvitError:
        return "refused"
    except Exception as exc:  # noqa: BLE001 - what the probe counts
        return f"raw {type(exc).__name__}"
    return "loaded"


def probe_exports(src: Path, work: Path) -> dict[str, int]:
    original = json.loads((src / "manifest.json").read_text())
    counts: dict[str, int] = {}
    image = np.zeros((112, 112, 3), np.uint8)

    def load(d: Path) -> None:
        EdgeClassifier(d, backend="onnxruntime").predict(image)

    variants: list[tuple[str, Any]] = []
    for path in leaves(original):
        if not path:
            continue
        for value in (DELETE, *MUTATIONS):
            variants.append((f"manifest {'.'.join(map(str, path))} = {value if value is not DELETE else 'deleted'}",
                             mutate(original, path, value)))
    variants += [("manifest []", []), ("manifest deep", "deep"), ("manifest empty", "")]
    files = ["ee.onnx", "sac.onnx", "manifest.json"]
    for i, (label, data) in enumerate(variants):
        if data == original:
            continue  # a mutation that changed nothing
        d = work / f"m{i}"
        shutil.copytree(src, d)
        text = "[" * 100_000 + "]" * 100_000 if data == "deep" else data if isinstance(data, str) else json.dumps(data)
        (d / "manifest.json").write_text(text)
        tally(counts, outcome(lambda: load(d)), label)
        shutil.rmtree(d)
    for name in files:
        for how in ("truncate-half", "truncate-10", "delete", "zero-byte", "flip-byte"):
            d = work / f"f-{name}-{how}"
            shutil.copytree(src, d)
            f = d / name
            data = f.read_bytes()
            if how == "truncate-half":
                f.write_bytes(data[: len(data) // 2])
            elif how == "truncate-10":
                f.write_bytes(data[:10])
            elif how == "delete":
                f.unlink()
            elif how == "zero-byte":
                f.write_bytes(b"")
            else:
                f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
            tally(counts, outcome(lambda: load(d)), f"file {name} {how}")
            shutil.rmtree(d)
    return counts


def probe_checkpoints(src: Path, work: Path) -> dict[str, int]:
    import torch

    from sacvit_edge.checkpoint import load_checkpoint

    raw = torch.load(src, weights_only=True)
    counts: dict[str, int] = {}
    skip = ("state_dict",)  # tensors: covered by the shape/finite checks and tests
    for path in leaves({k: v for k, v in raw.items() if k not in skip}):
        if not path or path[0] == "training":
            continue
        for value in (DELETE, *MUTATIONS):
            data = mutate(raw, path, value)
            if str(data) == str(raw):
                continue
            f = work / "c.pt"
            torch.save(data, f)
            tally(counts, outcome(lambda: load_checkpoint(f)),
                  f"checkpoint {'.'.join(map(str, path))} = {value if value is not DELETE else 'deleted'}")
    for name, tensor_edit in (("nan", float("nan")), ("inf", float("inf"))):
        data = copy.deepcopy(raw)
        data["state_dict"]["head.weight"][0, 0] = tensor_edit
        torch.save(data, work / "c.pt")
        tally(counts, outcome(lambda: load_checkpoint(work / "c.pt")), f"checkpoint head.weight {name}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--export", type=Path, default=root / "sacvit_edge" / "assets" / "sacvit_tiny_112")
    ap.add_argument("--checkpoint", type=Path, default=root / "checkpoints" / "sacvit_tiny_112.pt")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"exports": probe_exports(args.export, Path(tmp)), "checkpoints": probe_checkpoints(args.checkpoint, Path(tmp))}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
