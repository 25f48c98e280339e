"""sacvit-edge command line: a thin mirror of the Python API. Only this module prints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import SacvitError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deploy SAC-ViT classifiers on edge hardware.")
console = Console()
err = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err, transient=False)


def _fail(exc: SacvitError) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log library messages")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint to write (model.pt)")] = Path("model.pt"),
    arch: Annotated[str, typer.Option(help="sacvit or deit")] = "sacvit",
    preset: Annotated[str, typer.Option(help="model preset (tiny_112, small_112, deit_s_224)")] = "tiny_112",
    init: Annotated[Optional[Path], typer.Option(help="DeiT checkpoint or timm state_dict to fine-tune from")] = None,
    data: Annotated[Optional[Path], typer.Option(help="ImageFolder root (default: cluttered Fashion-MNIST)")] = None,
    epochs: Annotated[float, typer.Option()] = 5.0,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option()] = 1e-3,
    warmup_share: Annotated[float, typer.Option(help="share of steps before clustering switches on")] = 2 / 3,
    limit: Annotated[Optional[int], typer.Option(help="train on the first N items only")] = None,
    eval_limit: Annotated[int, typer.Option(help="test images evaluated after each epoch")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads")] = None,
    k_min: Annotated[Optional[int], typer.Option()] = None,
    k_max: Annotated[Optional[int], typer.Option()] = None,
    reuse_layer: Annotated[Optional[int], typer.Option(help="EE layer whose features non-targets reuse")] = None,
) -> None:
    """Train SAC-ViT (or the DeiT baseline with --arch deit); works under torchrun (DDP)."""
    import torch

    from .checkpoint import load_checkpoint
    from .config import preset as get_preset
    from .data import ClutteredFashionMNIST, ImageFolder
    from .train import TrainConfig, train as run_train

    try:
        overrides = {k: v for k, v in dict(arch=arch, k_min=k_min, k_max=k_max, reuse_layer=reuse_layer).items() if v is not None}
        if data is None:
            train_set, test_set = ClutteredFashionMNIST("train", seed=seed), ClutteredFashionMNIST("test", seed=seed)
        else:
            train_set, test_set = ImageFolder(data, get_preset(preset).img_size), None
            overrides["num_classes"] = len(train_set.classes)
        model_cfg = get_preset(preset, **overrides)
        init_state = None
        if init is not None:
            try:
                init_state = load_checkpoint(init).model.state_dict()
            except SacvitError:
                init_state = torch.load(init, map_location="cpu", weights_only=True)
                if isinstance(init_state, dict) and "model" in init_state:
                    init_state = init_state["model"]  # timm/DeiT release files wrap the state_dict
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_share=warmup_share, seed=seed,
                           train_limit=limit, eval_limit=eval_limit, threads=threads)
        meta = {"command": " ".join(["sacvit-edge", *sys.argv[1:]]), "init": str(init) if init else None,
                "dataset": "cluttered-fashion-mnist" if data is None else str(data)}
        with _progress() as progress:
            task = progress.add_task(f"train {model_cfg.arch}", total=None, info="")

            def on_step(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, total=total, info=f"loss {loss:.3f}")
                if not err.is_terminal and (step % 50 == 0 or step == total):  # logs of background runs
                    err.print(f"step {step}/{total} loss {loss:.4f}")

            result = run_train(model_cfg, tcfg, train_set, out, init_state=init_state, eval_dataset=test_set,
                               on_step=on_step, metadata=meta)
        for row in result.history:
            console.print(row)
        console.print(f"wrote {out}")
    except SacvitError as exc:
        _fail(exc)


@app.command("eval")
def eval_cmd(
    model_path: Annotated[Path, typer.Argument(help="model.pt")],
    eta: Annotated[Optional[float], typer.Option(help="exit threshold (default: the checkpoint's)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="evaluate the first N test images")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the results as JSON")] = None,
) -> None:
    """Top-1 of the EE head, the SAC head and the early-exit model; exit rate; GFLOPs."""
    from .checkpoint import load_checkpoint
    from .data import ClutteredFashionMNIST
    from .train import evaluate

    try:
        ckpt = load_checkpoint(model_path)
        test = ClutteredFashionMNIST("test", seed=seed)
        with _progress() as progress:
            task = progress.add_task("eval", total=None, info="")
            res = evaluate(ckpt.model, test, eta=ckpt.eta if eta is None else eta, limit=limit,
                           on_batch=lambda d, n: progress.update(task, completed=d, total=n))
        res = {"checkpoint": str(model_path), "arch": ckpt.config.arch, **res}
        table = Table("metric", "value", title=f"{model_path} on cluttered Fashion-MNIST test")
        for key, value in res.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        if json_out:
            json_out.write_text(json.dumps(res, indent=2))
            console.print(f"wrote {json_out}")
    except SacvitError as exc:
        _fail(exc)


REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


def bundled_checkpoint() -> Path:
    """The shipped SAC-ViT checkpoint (repository checkout or installed package)."""
    for candidate in (REPO_ROOT / "checkpoints" / "sacvit_tiny_112.pt", ASSETS / "sacvit_tiny_112.pt"):
        if candidate.is_file():
            return candidate
    raise SacvitError("the bundled checkpoint checkpoints/sacvit_tiny_112.pt is missing from this checkout")


@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(help="model.pt to export")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="export directory (default: exports/<name>)")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17)")] = 17,
    batch_max: Annotated[int, typer.Option(help="largest batch the engines accept")] = 64,
    k_min: Annotated[Optional[int], typer.Option(help="smallest target count (default: the checkpoint's)")] = None,
    k_max: Annotated[Optional[int], typer.Option(help="largest target count (default: the checkpoint's)")] = None,
    exporter: Annotated[str, typer.Option(help="torchscript (default) or dynamo")] = "torchscript",
) -> None:
    """Split a trained SAC-ViT into ee.onnx + sac.onnx with a manifest."""
    from .export.bundle import export_checkpoint

    if exporter not in ("torchscript", "dynamo"):
        _fail(SacvitError(f"--exporter {exporter!r}: choose 'torchscript' or 'dynamo'"))
    out = out or Path("exports") / model_path.stem
    try:
        with err.status(f"exporting {model_path} -> {out}"):
            m = export_checkpoint(model_path, out, opset=opset, batch_max=batch_max, k_min=k_min, k_max=k_max,
                                  exporter=exporter)  # type: ignore[arg-type]
    except SacvitError as exc:
        _fail(exc)
    table = Table("file", "what", title=f"exported {model_path}")
    table.add_row("ee.onnx", f"EE stage, batch {m.batch_range[0]}..{m.batch_range[1]}")
    table.add_row("sac.onnx", f"SAC stage, k {m.k_range[0]}..{m.k_range[1]} targets")
    table.add_row("manifest.json", f"fingerprint {m.fingerprint[:12]}, eta {m.eta}")
    console.print(table)
    console.print(f"wrote {out}")


def _predict_table(files: list[str], preds, title: str) -> Table:
    table = Table("file", "label", "confidence", "exited early", "target tokens", "ms", title=title)
    for f, p in zip(files, preds):
        table.add_row(f, p.label, f"{p.confidence:.3f}", "yes" if p.exited_early else "no",
                      str(p.num_target_tokens), f"{p.timings['total']:.2f}")
    return table


@app.command()
def predict(
    source: Annotated[Path, typer.Argument(help="export directory or model.pt")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    eta: Annotated[Optional[float], typer.Option(help="exit threshold")] = None,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, tensorrt, pytorch, pytorch-cuda")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    batch: Annotated[bool, typer.Option(help="run all images as one batch (default: one at a time)")] = False,
) -> None:
    """Classify images with EdgeClassifier."""
    from .classifier import EdgeClassifier

    try:
        clf = EdgeClassifier(source, backend=backend, eta=eta)
        preds = clf.predict_batch(images) if batch else [clf.predict(img) for img in images]
    except SacvitError as exc:
        _fail(exc)
    if as_json:
        rows = [{"file": str(f), "class_id": p.class_id, "label": p.label, "confidence": p.confidence,
                 "exited_early": p.exited_early, "num_target_tokens": p.num_target_tokens,
                 "topk": p.topk, "timings_ms": p.timings,
                 "target_mask": None if p.target_mask is None else p.target_mask.astype(int).tolist()}
                for f, p in zip(images, preds)]
        console.print_json(json.dumps({"backend": clf.backend_name, "eta": clf.eta, "predictions": rows}))
        return
    console.print(_predict_table([str(f) for f in images], preds, f"backend {clf.backend_name}, eta {clf.eta}"))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to export the bundled model")] = Path("exports/sacvit_tiny_112"),
    backend: Annotated[str, typer.Option(help="backend to run")] = "onnxruntime",
) -> None:
    """The main job on the bundled default: export the shipped checkpoint, classify the samples."""
    from .classifier import EdgeClassifier
    from .export.bundle import export_checkpoint

    try:
        ckpt = bundled_checkpoint()
        with err.status(f"exporting {ckpt.name}"):
            export_checkpoint(ckpt, out)
        clf = EdgeClassifier(out, backend=backend)
        samples = sorted((ASSETS / "samples").glob("*.png"))
        preds = [clf.predict(p) for p in samples]
    except SacvitError as exc:
        _fail(exc)
    console.print(f"exported {ckpt} -> {out} (ee.onnx, sac.onnx, manifest.json)")
    table = _predict_table([p.name for p in samples], preds, f"bundled samples, backend {clf.backend_name}, eta {clf.eta}")
    console.print(table)
    right = sum(p.label.replace("/", "-").replace(" ", "-") in s.stem for p, s in zip(preds, samples))
    console.print(f"{right}/{len(samples)} correct (sample file names carry the true label)")


if __name__ == "__main__":
    app()
