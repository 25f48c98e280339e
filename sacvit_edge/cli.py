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


if __name__ == "__main__":
    app()
