"""sacvit-edge command line: a thin mirror of the Python API. Only this module prints."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.traceback import Traceback

from .atomic import check_replaceable
from .bench import DEFAULT_ETAS
from .calibration.calibrate import calibrate_export
from .calibration.evaluate import evaluate_export
from .calibration.sweep import Request
from .classifier import default_cache_dir, EdgeClassifier
from .datasets import open_source
from .folders import check_seed
from .errors import BackendError, ConfigError, ImageError, SacvitError, ServeError
from .export.formats import check_export_options, FORMATS, get_format, INT8_HOW
from .export.graphs import ensure_crop_graph, ensure_fp16_graphs
from .export.tensorrt import build_engines
from .extras import has_extra, MissingExtraError, require_extra
from .gate import describe_eta, validate_eta
from .images import draw_prediction, IMAGE_SUFFIXES, load_image
from .manifest import read_manifest
from .outputs import check_output_dir, check_report_file, write_into, write_report
from .profiling import load_image_batches, profile as run_profile, ProfileConfig, time_preprocessing
from .runtimes import tensorrt_usable
from .video import check_camera, check_max_frames, open_frames, VideoEndedEarly

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Deploy SAC-ViT classifiers on edge hardware.\n\nExit codes: 0 ok, 1 internal error (a bug), "
                       "2 usage (a bad option), 3 bad input (an image, checkpoint or export; or some inputs failed), "
                       "4 environment (a missing extra, backend or GPU).")
# in a log or CI (not a terminal) rich would cut tables at 80 columns: give them room instead
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


class LogProgress(Progress):
    """Progress for a log or CI (stderr is not a terminal): no live bar (its redraws garble a log
    file), one plain line per tenth of the work or change of step instead."""

    def __init__(self, *columns, **kwargs) -> None:
        super().__init__(*columns, **{**kwargs, "disable": True})
        self._said: dict = {}

    def update(self, task_id, **fields) -> None:  # type: ignore[override]
        super().update(task_id, **fields)
        task = self._tasks[task_id]
        done, total = int(task.completed), task.total
        info = str(task.fields.get("info", ""))
        # a line per tenth of the work, or when the step changes (numbers alone, a loss, do not count)
        key = (int(10 * done / total) if total else done, re.sub(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", info))
        if self._said.get(task_id) != key:
            self._said[task_id] = key
            count = f"{done}/{int(total)}" if total else f"{done}"
            err.print(escape(f"{task.description}: {count}" + (f" {info}" if info else "")), soft_wrap=True)


def _progress() -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    if not err.is_terminal:
        return LogProgress(*columns, console=err, transient=False)
    return Progress(*columns, console=err, transient=False)


# Exit codes (documented in the README and in `sacvit-edge --help`).
EXIT_OK = 0
EXIT_INTERNAL = 1     # a bug: an error sacvit-edge did not expect (run with -v for the traceback)
EXIT_USAGE = 2        # how the command was called: an unknown option, a bad option value
EXIT_INPUT = 3        # what it was given: an unreadable image, checkpoint, export or dataset; some inputs failed
EXIT_ENVIRONMENT = 4  # what this machine lacks: an optional extra, a backend, a GPU


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, (MissingExtraError, BackendError)):
        return EXIT_ENVIRONMENT
    if isinstance(exc, SacvitError):
        return EXIT_INPUT
    return EXIT_INTERNAL


def _fail(exc: BaseException) -> None:
    code = exit_code_for(exc)
    if code == EXIT_INTERNAL:
        if logging.getLogger().isEnabledFor(logging.INFO):  # --verbose: the traceback to report
            err.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
        err.print(f"[red]internal error:[/red] {escape(type(exc).__name__)}: {escape(str(exc)[:500])} "
                  "(a bug in sacvit-edge: rerun with --verbose for the traceback and report it)")
    else:
        err.print(f"[red]error:[/red] {escape(str(exc))}")  # escaped: messages hold [brackets], e.g. extras
    raise typer.Exit(code)


@contextmanager
def _handled() -> Iterator[None]:
    """Turn errors into a message and a documented exit code, never a traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the project's errors and, as EXIT_INTERNAL, everything else
        _fail(exc)


def _eta(value: Optional[str], option: str = "--eta") -> Optional[float]:
    """A CLI threshold: a number in [0, 1] or 'never'."""

    if value is None:
        return None
    try:
        number: float | str = float(value)
    except ValueError:
        number = value
    return validate_eta(number, option)


ETA_HELP = "exit threshold in [0, 1], or 'never' (every image to the SAC stage)"
FORCE_HELP = "also replace a damaged export directory (one holding nothing but sacvit-edge's own files)"


def _check_positive(**options: Optional[int]) -> None:
    """Counts that must be >= 1 when given: a usage error naming the option, before any work."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} must be >= 1")


def _check_workspace(workspace: Optional[float]) -> None:
    if workspace is not None and not 0 < workspace < float("inf"):
        raise ConfigError(f"--workspace {workspace}: a positive number of GiB")


def _torch_threads(threads: Optional[int], backend: str) -> None:
    """--threads for the PyTorch backends: torch's pool is the process's, so the CLI sets it."""
    if threads and backend.startswith("pytorch"):
        import torch

        torch.set_num_threads(threads)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log library messages", metavar="")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # load_image refuses images above max_pixels itself; Pillow's warning before that is noise here
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint to write (model.pt)")] = Path("model.pt"),
    arch: Annotated[str, typer.Option(help="sacvit, or deit: the equal-budget baseline (same flags, no exit)")] = "sacvit",
    preset: Annotated[str, typer.Option(help="model preset (tiny_112, small_112, deit_s_224)")] = "tiny_112",
    init: Annotated[Optional[Path], typer.Option(help="DeiT checkpoint, timm state_dict or SAC-ViT checkpoint to fine-tune from")] = None,
    data: Annotated[Optional[Path], typer.Option(help="ImageFolder root, one sub-folder per class (default: cluttered Fashion-MNIST)")] = None,
    val_share: Annotated[float, typer.Option(help="--data: share of every class held out for validation and the exit threshold (stratified, seeded)")] = 0.1,
    epochs: Annotated[float, typer.Option(help="passes over the training set (fractions allowed)")] = 5.0,
    batch_size: Annotated[Optional[int], typer.Option(help="images per optimiser step over all DDP processes (default: from the data set's size)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate (default: 1e-3 at batch 128, scaled with the batch)")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="linear learning-rate warm-up steps (default: a tenth of the steps, at most 200)")] = None,
    warmup_share: Annotated[Optional[float], typer.Option(help="share of steps before clustering switches on (the all-targets warm stage; default: 0 on --data, 2/3 on the built-in data)")] = None,
    augment: Annotated[str, typer.Option(help="--data: 'shift-scale' (a random scale and shift per image and epoch) or 'none'")] = "shift-scale",
    eta_drop: Annotated[float, typer.Option(help="accuracy points on the held-out images the tuned exit threshold may cost (its upper bound, z = 1)")] = 0.5,
    min_exit_rate: Annotated[Optional[float], typer.Option(help="share of images the tuned exit threshold exits at least (a 95 % lower bound on the held-out images), even past --eta-drop (default: 0.1 on --data, 0 on the built-in data)")] = None,
    distill_from: Annotated[Optional[str], typer.Option(help="when the EE head's distillation starts: 'start', 'clustering' or a share of the steps in [0, 1] (default: 0.5 on --data, start on the built-in data)")] = None,
    tune_eta: Annotated[bool, typer.Option("--tune-eta/--no-tune-eta", help="tune the exit threshold on the held-out images at the end")] = True,
    limit: Annotated[Optional[int], typer.Option(help="train on the first N items only")] = None,
    eval_limit: Annotated[int, typer.Option(help="validation images evaluated after each epoch")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads")] = None,
    k_min: Annotated[Optional[int], typer.Option(help="smallest target count per image (default 4)")] = None,
    k_max: Annotated[Optional[int], typer.Option(help="largest target count per image (default 25)")] = None,
    reuse_layer: Annotated[Optional[int], typer.Option(help="EE layer whose features non-targets reuse")] = None,
    cluster_space: Annotated[Optional[str], typer.Option(help="2-means on 'log' (default) or 'raw' GCA")] = None,
    gca_start_block: Annotated[Optional[int], typer.Option(help="0-based first block entering the GCA EMA (default 3)")] = None,
    reuse_input: Annotated[Optional[str], typer.Option(help="reuse MLP reads 'post_norm' (default) or 'pre_norm' EE features")] = None,
    coarse_resample: Annotated[Optional[str], typer.Option(help="'avgpool' (default) or 'bilinear_align_corners'")] = None,
) -> None:
    """Fine-tune SAC-ViT (or the DeiT baseline with --arch deit) with the whole recipe: the
    all-targets warm stage, clustering, EE distillation, the exit threshold tuned on held-out
    images. Works under torchrun (DDP)."""
    with _handled():
        require_extra("train", "sacvit-edge train")
        from .recipe import TrainRequest, run_training

        options = {k: v for k, v in dict(k_min=k_min, k_max=k_max, reuse_layer=reuse_layer, cluster_space=cluster_space,
                                         gca_start_block=gca_start_block, reuse_input=reuse_input,
                                         coarse_resample=coarse_resample).items() if v is not None}
        request = TrainRequest(out=out, arch=arch, preset=preset, init=init, data=data, val_share=val_share, epochs=epochs,
                               batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, warmup_share=warmup_share,
                               limit=limit, eval_limit=eval_limit, seed=seed, threads=threads, augment=augment,
                               tune_eta=tune_eta, eta_drop=eta_drop, min_exit_rate=min_exit_rate, distill_from=distill_from,
                               model_options=options,
                               command=" ".join(["sacvit-edge", *sys.argv[1:]]))
        with _progress() as progress:
            task = progress.add_task(f"train {arch}", total=None, info="")

            def on_step(step: int, total: int, loss: float) -> None:  # in a log: a line per tenth (LogProgress)
                progress.update(task, completed=step, total=total, info=f"loss {loss:.4f}")

            report = run_training(request, on_step=on_step, on_phase=lambda what: err.print(what))
        _print_training(report)


def _print_training(report) -> None:
    s = report.settings
    console.print(f"recipe: batch {s.batch_size}, learning rate {s.lr:.3g}, warm-up {s.warmup_steps} of {s.steps} steps")
    for reason in s.reasons:
        console.print(f"  {reason}")
    for note in report.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    if report.history:
        wanted = ("epoch", "loss", "lr", "top1_ee", "top1_sac", "top1", "exit_rate", "mean_target_tokens", "elapsed_s")
        keys = [k for k in wanted if k in report.history[0]]  # the rest is in the log next to the checkpoint
        table = Table(*keys, title=f"per epoch (validation: {report.validation})")
        for row in report.history:
            table.add_row(*(f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k)) for k in keys))
        console.print(table)
    if report.eta is not None:
        _print_eta(report.eta)
    console.print(f"wrote {report.checkpoint}")


DATA_HELP = ("ImageFolder: one sub-folder per class, matched to the model's classes by name ('/' in a class name "
             "written '-'); default: the built-in cluttered Fashion-MNIST")


def _request(max_drop: Optional[float], gflops_budget: Optional[float], latency_budget_ms: Optional[float],
             default_drop: float = 0.5):
    given = [(k, v) for k, v in (("max_drop", max_drop), ("gflops_budget", gflops_budget),
                                  ("latency_budget_ms", latency_budget_ms)) if v is not None]
    if len(given) > 1:
        raise ConfigError("give one of --max-drop, --gflops-budget, --latency-budget-ms")
    kind, value = given[0] if given else ("max_drop", default_drop)
    if not value == value or value < 0 or value == float("inf"):
        raise ConfigError(f"--{kind.replace('_', '-')} {value} must be a finite number >= 0")
    return Request(kind, float(value))


def _curve_table(curve: list[dict], chosen: dict, title: str) -> Table:
    cols = [c for c in ("eta", "top1", "exit_rate", "mean_target_tokens", "gflops", "latency_ms") if c in curve[0]]
    table = Table(*cols, title=title)
    shown = [p for p in curve if p["eta"] == "never" or round(float(p["eta"]) * 20, 6).is_integer()]
    for p in sorted({id(p): p for p in (*shown, chosen)}.values(), key=lambda p: 2.0 if p["eta"] == "never" else p["eta"]):
        mark = p["eta"] == chosen["eta"]
        cells = [str(p[c]) if isinstance(p[c], str) else f"{p[c]:.4g}" for c in cols]
        table.add_row(*cells, style="bold green" if mark else None)
    return table


def _print_eta(tuning) -> None:
    console.print(_curve_table(tuning.curve, tuning.chosen, f"exit threshold on {tuning.data}: {tuning.images} images"))
    lo, hi = tuning.chosen["top1_ci95"]
    console.print(f"chosen eta = {tuning.chosen['eta']} ({tuning.request}): top-1 {tuning.chosen['top1']:.2f} % "
                  f"(95 % interval {lo:.1f}-{hi:.1f}), exit rate {tuning.chosen['exit_rate']:.3f}")
    if tuning.chosen.get("limited_by") == "min_exit_rate":
        console.print(f"  the accuracy rule alone gave eta {tuning.chosen['accuracy_rule_eta']} (exit rate "
                      f"{tuning.chosen['accuracy_rule_exit_rate']:.3f}); the exit floor lowered it, at a measured drop "
                      f"of {tuning.chosen.get('drop', 0.0):.2f} +- {tuning.chosen.get('drop_se', 0.0):.2f} points "
                      "against never exiting")


def _checkpoint_calibration(model_path: Path, data: Optional[Path], request, split: str, seed: int,
                            limit: Optional[int], out: Optional[Path], in_place: bool, what: str) -> None:
    """`calibrate model.pt` and `tune-eta`: one library call (recipe.tune_checkpoint_eta), rendered."""
    require_extra("train", f"sacvit-edge {what} on a checkpoint")
    from .checkpoint import check_checkpoint_output, load_checkpoint
    from .recipe import require_sacvit, tune_checkpoint_eta
    from .train import check_checkpoint_request

    check_checkpoint_request(request)
    if out is not None and in_place:
        raise ConfigError("-o and --in-place exclude each other")
    if out is not None:
        check_checkpoint_output(out)
    ck = load_checkpoint(model_path)
    require_sacvit(ck.model, model_path)  # before any data is read
    source = open_source(data, split, ck.class_names, seed=seed, limit=limit)
    target = out if out is not None else (model_path if in_place else None)
    with _progress() as progress:
        task = progress.add_task(f"{what} (pytorch)", total=len(source), info="")
        tuning = tune_checkpoint_eta(model_path, source, request, target, str(data or f"cluttered Fashion-MNIST {split}"),
                                     on_batch=lambda d, n: progress.update(task, completed=d, total=n))
    _print_eta(tuning)
    if target is None:
        console.print("nothing written: pass -o OUT.pt for a copy, or --in-place to rewrite the checkpoint")
    else:
        console.print(f"wrote eta {tuning.eta} into {target}")


@app.command("eval")
def eval_cmd(
    model_path: Annotated[Path, typer.Argument(help="model.pt, or an export directory (evaluated on its deployment backend)")],
    data: Annotated[Optional[Path], typer.Option(help=DATA_HELP)] = None,
    split: Annotated[str, typer.Option(help="built-in split without --data: test, calibration or train")] = "test",
    eta: Annotated[Optional[str], typer.Option(help=ETA_HELP + " (default: the calibrated one, else the checkpoint's)")] = None,
    backend: Annotated[str, typer.Option(help="export directories: onnxruntime, openvino, tensorrt, pytorch, auto")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="export directories: fp32, fp16 (derived graphs) or int8 (calibrate --int8)")] = "fp32",
    limit: Annotated[Optional[int], typer.Option(help="evaluate N images (a seeded sample of a folder)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    max_bad_share: Annotated[float, typer.Option(help="fail when more than this share of the images is unreadable")] = 0.01,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the results to this JSON file")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads")] = None,
) -> None:
    """Top-1 of the EE head, the SAC head and the early-exit model; exit rate; GFLOPs."""
    with _handled():
        eta_value = _eta(eta)
        check_seed(seed)
        if json_out is not None:
            check_report_file(json_out, "--json")
        where = str(data) if data is not None else f"cluttered Fashion-MNIST {split}"
        if model_path.is_dir():
            _torch_threads(threads, backend)
            names = read_manifest(model_path, verify_files=False).class_names  # the classifier verifies them
            source = open_source(data, split, names, seed=seed, limit=limit, max_bad_share=max_bad_share)
            with _progress() as progress:
                task = progress.add_task(f"eval on {backend}", total=len(source), info="")
                report = evaluate_export(model_path, source, eta=eta_value, backend=backend, precision=precision,
                                         threads=threads, max_bad_share=max_bad_share, data_name=where,
                                         on_batch=lambda d, n: progress.update(task, completed=d))
        else:
            require_extra("train", "sacvit-edge eval on a checkpoint (or pass an export directory)")
            from .checkpoint import load_checkpoint
            from .train import evaluate_checkpoint

            ckpt = load_checkpoint(model_path)
            test = open_source(data, split, ckpt.class_names, seed=seed, limit=limit, max_bad_share=max_bad_share)
            with _progress() as progress:
                task = progress.add_task("eval", total=None, info="")
                report = evaluate_checkpoint(model_path, test, where, eta=eta_value,
                                             on_batch=lambda d, n: progress.update(task, completed=d, total=n))
        res = report.to_dict()
        table = Table("metric", "value", title=f"{model_path} on {where}")
        for key, value in res.items():
            shown = f"{value:.4f}" if isinstance(value, float) else (
                " - ".join(f"{v:.2f}" for v in value) if isinstance(value, (tuple, list)) else str(value))
            table.add_row(key, shown)
        console.print(table)
        if json_out is not None:
            write_report(json_out, json.dumps(res, indent=2), "--json")
            console.print(f"wrote {json_out}")


@app.command()
def calibrate(
    source: Annotated[Path, typer.Argument(help="export directory (or model.pt: eta only, through PyTorch)")],
    data: Annotated[Optional[Path], typer.Option(help=DATA_HELP + " (its calibration split)")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help="accuracy points the early exit may cost vs never exiting (default 0.5)")] = None,
    gflops_budget: Annotated[Optional[float], typer.Option(help="best accuracy within this many GFLOPs per image")] = None,
    latency_budget_ms: Annotated[Optional[float], typer.Option(help="best accuracy within this latency per image at --batch (measured here)")] = None,
    batch: Annotated[int, typer.Option(help="batch size the latency is measured and budgeted at")] = 32,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write a calibrated copy here (default: in place)")] = None,
    in_place: Annotated[bool, typer.Option(help="model.pt only: rewrite the checkpoint's eta", metavar="")] = False,
    int8: Annotated[bool, typer.Option(help="also make INT8 (Q/DQ) engines and calibrate their own eta", metavar="")] = False,
    apply_k_range: Annotated[bool, typer.Option(help="re-export with the measured target-count range", metavar="")] = False,
    coverage: Annotated[float, typer.Option(help="share of images the target-count range must cover")] = 0.999,
    deadline_ms: Annotated[Optional[str], typer.Option(help="comma-separated budgets: report the deadline gate's accuracy")] = None,
    backend: Annotated[str, typer.Option(help="the deployment backend to calibrate on")] = "onnxruntime",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads")] = None,
    limit: Annotated[Optional[int], typer.Option(help="use N images (a seeded sample of a folder)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    timing_reps: Annotated[int, typer.Option(help="timed calls per stage measurement (median)")] = 7,
    max_bad_share: Annotated[float, typer.Option(help="fail when more than this share of the images is unreadable")] = 0.01,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP, metavar="")] = False,
) -> None:
    """Choose eta (and the token range, INT8 engines) from your data on this device; written into the export."""
    with _handled():
        request = _request(max_drop, gflops_budget, latency_budget_ms)
        check_seed(seed)
        _check_positive(batch=batch, timing_reps=timing_reps)
        try:
            budgets = tuple(float(b) for b in deadline_ms.split(",")) if deadline_ms else ()
        except ValueError:
            budgets = (float("nan"),)
        if any(not (b > 0 and b < float("inf")) for b in budgets):
            raise ConfigError(f"--deadline-ms {deadline_ms}: budgets must be comma-separated positive milliseconds")
        if source.is_file() or source.suffix == ".pt":
            if int8 or apply_k_range or budgets:
                raise ConfigError("--int8, --apply-k-range and --deadline-ms need an export directory: "
                                  f"`sacvit-edge export {source} -o DIR` first")
            _checkpoint_calibration(source, data, request, "calibration", seed, limit, out, in_place, "calibrate")
            return
        if in_place:
            raise ConfigError("--in-place is for model.pt; an export directory is calibrated in place unless -o is given")

        manifest = read_manifest(source)
        src = open_source(data, "calibration", manifest.class_names, seed=seed, limit=limit, max_bad_share=max_bad_share)
        _torch_threads(threads, backend)
        with _progress() as progress:
            task = progress.add_task("calibrate", total=len(src), info="")
            result = calibrate_export(source, src, request, out=out, batch=batch, backend=backend, threads=threads,
                                      int8=int8, apply_k_range=apply_k_range, coverage=coverage,
                                      deadline_budgets=budgets, timing_reps=timing_reps, max_bad_share=max_bad_share,
                                      force=force, on_step=lambda msg: progress.update(task, completed=0, info=msg),
                                      on_batch=lambda d, n: progress.update(task, completed=d, total=n))
    _print_calibration(result, batch)


def _print_calibration(result, batch: int) -> None:
    rep = result.report
    for name, entry in rep["precisions"].items():
        if "curve" in entry:
            console.print(_curve_table(entry["curve"], entry["chosen"],
                                       f"{name}: sweep on {rep['dataset']['images']} images (latency per image at batch {batch})"))
    summary = Table("", "eta", "top-1", "95% CI", "exits", "GFLOPs", f"ms/img@{batch}", "EE/SAC", "meets the request",
                    title=rep["request"]["description"])
    request = rep["request"]
    for name, entry in rep["precisions"].items():
        c = entry.get("chosen")
        if c is None:
            continue
        key = {"gflops_budget": "gflops", "latency_budget_ms": "latency_ms"}.get(request["kind"])
        meets = "yes" if key is None or c.get(key, float("inf")) <= request["value"] else "NO"
        if "kept_from" in entry:  # chosen for an earlier request: say so, never list it as this one's answer
            meets = f"{'NO, ' if meets == 'NO' else ''}kept from: {entry['kept_from']}"
        summary.add_row(name, str(c["eta"]), f"{c['top1']:.2f}", f"{c['top1_ci95'][0]:.1f}-{c['top1_ci95'][1]:.1f}",
                        f"{c['exit_rate']:.3f}", f"{c.get('gflops', 0):.4f}", f"{c.get('latency_ms', 0):.3f}",
                        f"{entry['top1_ee']:.1f}/{entry['top1_sac']:.1f}", meets)
    console.print(summary)
    advice = rep.get("precision_advice")
    if advice:
        console.print(f"int8 vs fp32 here: {advice['why']} (calibration.json precision_advice; "
                      "EdgeClassifier(precision='auto') follows it)")
    if "int8" in rep["precisions"] and "at_fp32_eta" in rep["precisions"]["int8"]:
        a = rep["precisions"]["int8"]["at_fp32_eta"]
        console.print(f"int8 at the fp32 eta {a['eta']}: top-1 {a['top1']:.2f} %, exit rate {a['exit_rate']:.3f}")
    k = rep["token_range"]
    console.print(f"target tokens: [{k['k_min']}, {k['k_max']}] covers {k['coverage']:.2%} of the images (typical k "
                  f"{k['k_typical']}); the engines' range {k['engines_k_range']} covers {k['engines_coverage']:.2%} "
                  f"(clamped at run time: {k['clamped_low']} below, {k['clamped_high']} above)"
                  + ("" if k.get("applied") else "; --apply-k-range re-exports with the measured range"))
    rt = rep.get("runtime") or {}
    if rt:
        ms = ", ".join(f"{k} thread(s) {v:.3f} ms" for k, v in rt["batch1_frame_ms"].items())
        console.print(f"ONNX Runtime batch-1 threads: {rt['onnxruntime_batch1_threads'] or 'default'} (per frame: {ms}); "
                      "EdgeClassifier uses it unless threads= is given")
    rows = rep["precisions"]["fp32"].get("deadline") or []
    if rows:
        t = Table("deadline ms", "top-1 %", "deadline exits", "top-1 without deadline", title="deadline gate, batch 1 (fp32)")
        for r in rows:
            t.add_row(f"{r['deadline_ms']:g}", f"{r['top1']:.2f}", f"{r['deadline_exit_rate']:.3f}", f"{r['top1_without_deadline']:.2f}")
        console.print(t)
        floor = rep["precisions"]["fp32"].get("deadline_floor")
        if floor:
            console.print(f"deadlines below {floor['any_sac_ms']:.2f} ms give every image its EE answer (EE and the "
                          f"split alone take {floor['ee_host_ms']:.2f} ms); from {floor['all_sac_ms']:.2f} ms no image "
                          "is cut (batch 1, this device)")
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}")
    png = _calibration_plot(result)
    console.print(escape(f"wrote {result.directory}/calibration.json" + (f" and {png}" if png else
                                                                         " (install [bench] for the PNG plot)")))


def _calibration_plot(result) -> Optional[Path]:
    if not has_extra("bench"):
        return None
    from .calibration.plot import plot_calibration

    return plot_calibration(result.report, result.directory / "calibration.png")


@app.command()
def profile(
    source: Annotated[Path, typer.Argument(help="export directory or model.pt")],
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, openvino, tensorrt, pytorch, pytorch-cuda")] = "auto",
    batch: Annotated[int, typer.Option(help="images per call")] = 1,
    images: Annotated[Optional[Path], typer.Option(help="folder of images to time on")] = None,
    synthetic: Annotated[bool, typer.Option(help="time on cluttered Fashion-MNIST test canvases (also what runs without --images)", metavar="")] = False,
    warmup: Annotated[int, typer.Option(help="untimed calls first")] = 10,
    iters: Annotated[int, typer.Option(help="timed calls")] = 100,
    eta: Annotated[Optional[str], typer.Option(help=ETA_HELP)] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the report as JSON")] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16, int8, or auto (what calibration recommends here)")] = "fp32",
    resample: Annotated[str, typer.Option(help="how --images are fitted: exact (as trained) or fast ([video])")] = "exact",
) -> None:
    """Latency / throughput / per-stage split / GFLOPs / power of EdgeClassifier on this device."""

    with _handled():
        eta_value = _eta(eta)
    if images is not None and synthetic:
        _fail(ConfigError("--images and --synthetic exclude each other"))
    if batch < 1 or iters < 1 or warmup < 0:
        _fail(ConfigError(f"need --batch >= 1, --iters >= 1, --warmup >= 0 (got {batch}, {iters}, {warmup})"))
    with _handled():
        if json_out is not None:
            check_report_file(json_out, "--json")
        _torch_threads(threads, backend)
        clf = EdgeClassifier(source, backend=backend, eta=eta_value, threads=threads, precision=precision,
                             resample=resample)
        batches = load_image_batches(images, clf, batch)
        with _progress() as progress:
            task = progress.add_task("profile", total=iters, info=clf.backend_name)
            rep = run_profile(clf, batches, ProfileConfig(batch=batch, warmup=warmup, iters=iters, eta=eta_value),
                              on_iter=lambda i, n: progress.update(task, completed=i))
        if images is not None:
            rep = replace(rep, preprocess_ms=time_preprocessing(images, clf, batch, iters))
    table = Table("", "count", "mean", "stdev", "p50", "p90", "p99", title=f"{source} on {clf.backend_name}, batch {batch} (ms)")
    stage_rows = [(f"  {k}", v) for k, v in rep.stages_ms.items()]
    if rep.config.get("frame_graph"):  # one engine call per frame: no EE / SAC split to show
        stage_rows = [("  engine (frame graph: ee, gate, split, sac)", rep.stages_ms["ee"]), ("  host", rep.stages_ms["host"])]
    rows = [("per call (model)", rep.latency_ms), *stage_rows]
    if rep.preprocess_ms is not None:
        rows.append(("preprocess (files; before the call)", rep.preprocess_ms))
    for name, st in rows:
        table.add_row(name, str(st["count"]), *(f"{st[q]:.3f}" for q in ("mean", "stdev", "p50", "p90", "p99")))
    console.print(table)
    summary = Table("metric", "value")
    summary.add_row("throughput", f"{rep.throughput_ips:.1f} images/s")
    summary.add_row("exit rate", f"{rep.exit_rate:.3f}")
    summary.add_row("mean target tokens", f"{rep.mean_target_tokens:.2f}")
    for k, v in rep.gflops.items():
        summary.add_row(f"GFLOPs {k}", f"{v:.4f}")
    summary.add_row("power", json.dumps(rep.power))
    summary.add_row("power mode", rep.power_mode.get("mode") or rep.power_mode.get("reason", ""))
    for k in ("backend", "device", "providers", "threads", "onnxruntime", "torch", "tensorrt", "gpu"):
        if k in rep.environment:
            summary.add_row(k, str(rep.environment[k]))
    console.print(summary)
    if json_out:
        with _handled():
            write_report(json_out, json.dumps(rep.to_dict(), indent=2, default=str), "--json")
        console.print(f"wrote {json_out}")


@app.command()
def bench(
    sac: Annotated[Optional[Path], typer.Option(help="SAC-ViT checkpoint (default: the bundled one)")] = None,
    deit: Annotated[Optional[Path], typer.Option(help="DeiT baseline checkpoint (default: the bundled one)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for bench.json, bench.md, bench.png")] = Path("bench"),
    eval_images: Annotated[int, typer.Option(help="test images for accuracy")] = 10000,
    speed_images: Annotated[int, typer.Option(help="images timed per point at batch --batch")] = 512,
    latency_iters: Annotated[int, typer.Option(help="batch-1 calls timed per point (8x at the shipped geometry, whose calls are ~30x cheaper; 3x at 224 px)")] = 100,
    batch: Annotated[int, typer.Option()] = 32,
    etas: Annotated[str, typer.Option(help="comma-separated exit thresholds")] = ",".join(map(str, DEFAULT_ETAS)),
    backends: Annotated[str, typer.Option(help="comma-separated; unavailable ones are skipped")] = "onnxruntime,pytorch,tensorrt,pytorch-cuda",
    threads: Annotated[Optional[int], typer.Option()] = None,
    paper_geometry: Annotated[bool, typer.Option(help="also time deit_s_224 geometry", metavar="")] = True,
    data: Annotated[Optional[Path], typer.Option(help="ImageFolder for accuracy, matched by class name (default: the built-in test split)")] = None,
) -> None:
    """DeiT vs SAC-ViT vs CF-ViT / LF-ViT modes, one run: JSON, Markdown table and PNG plot."""
    with _handled():
        require_extra("bench", "sacvit-edge bench")
        _check_positive(eval_images=eval_images, speed_images=speed_images, latency_iters=latency_iters, batch=batch)
        check_output_dir(out, "--out")
        from .bench.report import markdown, write_reports
        from .bench.run import BenchConfig, run_bench

        cfg = BenchConfig(sac_checkpoint=sac or bundled_checkpoint(), deit_checkpoint=deit or bundled_checkpoint().with_name("deit_tiny_112.pt"),
                          eval_images=eval_images, speed_images=speed_images, latency_iters=latency_iters, batch=batch,
                          etas=tuple(_eta(e.strip(), "--etas") for e in etas.split(",")), backends=tuple(backends.split(",")),
                          threads=threads, paper_geometry=paper_geometry, data=data)
        with err.status("benchmarking") as status:
            result = run_bench(cfg, on_step=lambda msg: (status.update(f"benchmarking: {msg}"), err.print(f"- {msg}")))
        paths = write_reports(result, out)
    console.print(markdown(result))
    console.print_json(json.dumps({k: v for k, v in result.targets.items() if k != "sac_point"}, default=str))
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command("tune-eta")
def tune_eta_cmd(
    model_path: Annotated[Path, typer.Argument(help="SAC-ViT model.pt")],
    max_drop: Annotated[float, typer.Option("--max-drop", "--tolerance", help="accuracy points the early exit may cost vs never exiting (--tolerance: its earlier name)")] = 0.25,
    data: Annotated[Optional[Path], typer.Option(help=DATA_HELP + " (its calibration split)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the tuned checkpoint here")] = None,
    in_place: Annotated[bool, typer.Option(help="rewrite MODEL_PATH's eta", metavar="")] = False,
    limit: Annotated[Optional[int], typer.Option(help="use N images")] = None,
    seed: Annotated[int, typer.Option(help="layout seed (the calibration split is drawn with seed + 1)")] = 0,
    min_exit_rate: Annotated[float, typer.Option(help="share of images the chosen eta exits at least (a 95 % lower bound on these images), even past --max-drop (train's --min-exit-rate)")] = 0.0,
) -> None:
    """Choose a checkpoint's default eta on held-out images: an alias of `calibrate MODEL.pt
    --max-drop P` (the same computation, train.choose_eta; 0.25 points by default here)."""
    with _handled():
        request = replace(_request(max_drop, None, None), min_exit_rate=min_exit_rate)
        _checkpoint_calibration(model_path, data, request, "calibration", seed, limit, out, in_place, "tune-eta")


def _checkout_root() -> Optional[Path]:
    """The repository checkout this package runs from (an editable install), or None when it is
    installed (site-packages holds no checkpoints: the wheel carries the bundled export)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "checkpoints").is_dir() else None


CHECKOUT = _checkout_root()
ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_EXPORT = ASSETS / "sacvit_tiny_112"  # the shipped checkpoint, exported (ships in the wheel)


def bundled_checkpoint() -> Path:
    """The shipped SAC-ViT checkpoint (repository checkout only: the wheel ships its export)."""
    candidate = CHECKOUT / "checkpoints" / "sacvit_tiny_112.pt" if CHECKOUT is not None else None
    if candidate is not None and candidate.is_file():
        return candidate
    raise SacvitError("the bundled checkpoint checkpoints/sacvit_tiny_112.pt is only in a repository checkout; "
                      f"the installed package carries its export, {BUNDLED_EXPORT}")


@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(help="model.pt to export")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="export directory (default: exports/<name>)")] = None,
    format: Annotated[str, typer.Option("--format", help="onnx (any CPU) or engine (TensorRT); `sacvit-edge formats` lists what each takes")] = "onnx",
    precision: Annotated[str, typer.Option(help="fp32, fp16 (derived graph; TensorRT 11's only route), int8 (engine, after calibrate --int8)")] = "fp32",
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (>= 17; default 17)")] = None,
    batch_max: Annotated[Optional[int], typer.Option(help="largest batch the engines accept (default 64)")] = None,
    k_min: Annotated[Optional[int], typer.Option(help="smallest target count (default: the checkpoint's)")] = None,
    k_max: Annotated[Optional[int], typer.Option(help="largest target count (default: the checkpoint's)")] = None,
    exporter: Annotated[Optional[str], typer.Option(help="torchscript (default) or dynamo")] = None,
    workspace: Annotated[Optional[float], typer.Option(help="engine: TensorRT builder workspace in GiB (default 1; lower it if a Jetson kills the build)")] = None,
    batch_opt: Annotated[Optional[int], typer.Option(help="engine: the batch TensorRT tunes for (default 1, the camera case)")] = None,
    fp16_mode: Annotated[Optional[str], typer.Option(help="engine fp16: graph (strongly typed fp16 graph, default) or flag (BuilderFlag.FP16, TensorRT 10 only)")] = None,
    with_checkpoint: Annotated[bool, typer.Option(help="copy model.pt into the export (the pytorch backend runs from it)", metavar="")] = True,
    attention_graphs: Annotated[bool, typer.Option(help="also write ee/sac.attention.onnx: the stages with the ONNX Attention operator (opset 23), which ONNX Runtime runs faster", metavar="")] = True,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP, metavar="")] = False,
) -> None:
    """Export a trained SAC-ViT: ee.onnx + sac.onnx (opset 17, what TensorRT and OpenVINO build
    from), ee/sac.attention.onnx (opset 23, what ONNX Runtime runs) and a manifest, and for
    --format engine the TensorRT engines built for the GPU here."""

    with _handled():
        fmt = get_format(format)
        check_export_options(fmt, precision, {"opset": opset, "batch-max": batch_max, "k-min": k_min, "k-max": k_max,
                                              "exporter": exporter, "workspace": workspace, "batch-opt": batch_opt,
                                              "fp16-mode": fp16_mode})
        if exporter not in (None, "torchscript", "dynamo"):
            raise ConfigError(f"--exporter {exporter!r}: choose 'torchscript' or 'dynamo'")
        _check_positive(batch_max=batch_max, batch_opt=batch_opt)
        if opset is not None and opset < 17:
            raise ConfigError(f"--opset {opset}: LayerNormalization needs opset >= 17")
        _check_workspace(workspace)
        if precision == "int8":  # engine + int8: the graphs need data; say how before exporting anything

            raise ConfigError(f"export --precision int8: {INT8_HOW}")
        if fmt.name == "engine":
            _check_engine_build_possible()
    out = out or Path("exports") / model_path.stem
    with _handled():
        check_replaceable(out, sources=(model_path,), force=force)  # before loading anything
        require_extra("export", "sacvit-edge export")
        from .export.bundle import export_checkpoint

        with err.status(f"exporting {model_path} -> {out}") as status:
            m = export_checkpoint(model_path, out, opset=17 if opset is None else opset,
                                  batch_max=64 if batch_max is None else batch_max, k_min=k_min, k_max=k_max,
                                  exporter=exporter or "torchscript", include_checkpoint=with_checkpoint, force=force,
                                  on_wait=lambda msg: status.update(escape(msg)),  # type: ignore[arg-type]
                                  attention_graphs=attention_graphs)
        if precision == "fp16":
            with err.status("deriving the fp16 graphs"):
                m = ensure_fp16_graphs(m)
        if fmt.name == "engine":
            m = _build_engines(m, precision, 1.0 if workspace is None else workspace, 1 if batch_opt is None else batch_opt,
                               fp16_mode or "graph")
    table = Table("file", "what", title=f"exported {model_path}")
    table.add_row("ee.onnx", f"EE stage, batch {m.batch_range[0]}..{m.batch_range[1]}")
    table.add_row("sac.onnx", f"SAC stage, k {m.k_range[0]}..{m.k_range[1]} targets")
    if m.attention_graphs:
        table.add_row(", ".join(m.attention_graphs), "the same stages with the ONNX Attention operator (ONNX Runtime runs these)")
    if m.unpadded_sac:
        table.add_row(m.unpadded_sac, "the SAC stage without keep masks (calls of one target count)")
    if m.frame:
        table.add_row(m.frame, "one batch-1 frame in one call: EE stage, gate, split, crop, SAC stage (ONNX Runtime)")
    if "fp16" in m.derived.graphs:
        table.add_row(", ".join(m.derived.graphs["fp16"]), "fp16 graphs (fp32 inputs and outputs)")
    _engine_rows(table, m)
    if m.has_checkpoint:
        table.add_row("model.pt", "the checkpoint (pytorch reference backend)")
    table.add_row("manifest.json", f"fingerprint {m.fingerprint[:12]}, eta {m.eta}")
    console.print(table)
    console.print(f"wrote {out}")


def _engine_rows(table: Table, m) -> None:
    for r in m.derived.tensorrt_engines:
        table.add_row(r.file, f"TensorRT {r.tensorrt} {r.stage} engine, {r.precision}, {r.gpu} (sm {r.compute_capability})")


def _check_engine_build_possible() -> None:
    """Fail before exporting when engines cannot be built here (no TensorRT, cuda-python or GPU)."""

    ok, why = tensorrt_usable()
    if not ok:
        raise BackendError(f"--format engine builds TensorRT engines on the GPU that will run them, and {why}. "
                           "Export --format onnx here and run `sacvit-edge build-engine DIR` on the device")


def _build_engines(m, precision: str, workspace: float, batch_opt: int, fp16_mode: str):
    """Build the engines with a progress bar per stage; TensorRT's own messages go to logging."""

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, phase: str, step: int, steps: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{stage} engine", total=None)
            progress.update(tasks[stage], description=f"{stage} engine: {phase}", completed=step, total=steps or None)

        return build_engines(m, precision, workspace_gib=workspace, batch_opt=batch_opt, fp16_mode=fp16_mode,
                             progress=report)


@app.command("build-engine")
def build_engine(
    directory: Annotated[Path, typer.Argument(help="an export directory (sacvit-edge export)")],
    format: Annotated[str, typer.Option("--format", help="engine (TensorRT, needs the GPU) or onnx (only derive the fp16 / crop graphs)")] = "engine",
    precision: Annotated[str, typer.Option(help="fp32, fp16, or int8 (after calibrate --int8)")] = "fp32",
    workspace: Annotated[Optional[float], typer.Option(help="TensorRT builder workspace in GiB (default 1)")] = None,
    batch_opt: Annotated[Optional[int], typer.Option(help="the batch TensorRT tunes for (default 1)")] = None,
    fp16_mode: Annotated[Optional[str], typer.Option(help="graph (default) or flag (TensorRT 10 only)")] = None,
) -> None:
    """Build an export directory's TensorRT engines for the GPU here (ahead of running), and record
    them in its manifest. Engines already built for this GPU and TensorRT are kept."""

    with _handled():
        fmt = get_format(format)
        check_export_options(fmt, precision, {"workspace": workspace, "batch-opt": batch_opt, "fp16-mode": fp16_mode},
                             command="build-engine")
        _check_positive(batch_opt=batch_opt)
        _check_workspace(workspace)
        m = read_manifest(directory)
        if fmt.name == "onnx":
            m = ensure_crop_graph(m)
            if precision == "fp16":
                m = ensure_fp16_graphs(m)
        else:
            _check_engine_build_possible()
            m = _build_engines(m, precision, 1.0 if workspace is None else workspace, 1 if batch_opt is None else batch_opt,
                               fp16_mode or "graph")
    table = Table("file", "what", title=f"{directory}")
    for p in m.precisions:
        table.add_row(", ".join(m.engine_files(p)), f"{p} graphs")
    if m.derived.crop:
        table.add_row(m.derived.crop, "device crop graph")
    _engine_rows(table, m)
    console.print(table)


@app.command()
def formats() -> None:
    """The export formats, what each runs on, and the options and precisions it takes."""

    table = Table("format", "files", "runs on", "precisions", "options", "needs", title="sacvit-edge export --format")
    for f in FORMATS:
        table.add_row(f.name, escape(f.files), f.runs_on, ", ".join(f.precisions), " ".join("--" + o for o in f.options),
                      escape(f.needs))
    console.print(table)


def _predict_frames(source: Path, stream_source, eta, backend: str, as_json: bool, resize: str, resample: str,
                    save_overlay: Optional[Path], max_frames: Optional[int]) -> None:
    """predict --video / --camera: stream the frames, a table (or JSON) of frames and a summary."""


    rows = []
    ended_early: VideoEndedEarly | None = None
    with _handled():
        live = isinstance(stream_source, int)
        if live:
            check_camera(stream_source)
        check_max_frames(max_frames)
        if save_overlay is not None:
            check_output_dir(save_overlay, "--save-overlay")
        clf = EdgeClassifier(source, backend=backend, eta=_eta(eta), resize=resize, resample=resample, color="bgr")
        frames = open_frames(stream_source, max_frames)
        s = clf.stream(frames, drop="oldest" if live else "none", max_inflight=1 if live else 2)
        try:
            for i, frame, p in s:
                rows.append({"frame": i, "label": p.label, "confidence": p.confidence, "exited_early": p.exited_early,
                             "num_target_tokens": p.num_target_tokens, "target_boxes": p.target_boxes})
                if save_overlay is not None:
                    write_into(save_overlay, f"frame_{i:06d}.png", draw_prediction(frame, p, color="bgr").save,
                               "--save-overlay")
        except VideoEndedEarly as exc:  # the frames read are still reported, then exit 3
            ended_early = exc
        summary = {**s.monitor.snapshot(), "dropped": s.dropped}
    if as_json:
        console.print_json(json.dumps({"backend": clf.backend_name, "eta": describe_eta(clf.eta), "summary": summary,
                                       "ended_early": str(ended_early) if ended_early else None, "frames": rows}))
    else:
        _frames_table(stream_source, clf, rows, summary)
    if ended_early is not None:
        err.print(f"[red]error:[/red] {escape(str(ended_early))}; {len(rows)} frame(s) classified")
        raise typer.Exit(EXIT_INPUT)


def _frames_table(stream_source, clf, rows: list[dict], summary: dict) -> None:
    table = Table("frame", "label", "confidence", "exited early", "target tokens",
                  title=f"{stream_source}: backend {clf.backend_name}, eta {describe_eta(clf.eta)}")
    hidden = max(0, len(rows) - 50)  # the first and last 25 frames; --json lists every one
    for n, r in enumerate(rows if not hidden else rows[:25] + rows[-25:]):
        if hidden and n == 25:
            table.add_row("...", f"{hidden} frames not shown (--json lists all)", "", "", "")
        table.add_row(str(r["frame"]), r["label"], f"{r['confidence']:.3f}", "yes" if r["exited_early"] else "no",
                      str(r["num_target_tokens"]))
    console.print(table)
    console.print(f"{len(rows)} frames, {summary['fps']:.1f} frames/s, latency p50 {summary['p50_ms']:.2f} ms "
                  f"p99 {summary['p99_ms']:.2f} ms, exit rate {summary['exit_rate']:.3f}, dropped {summary['dropped']}")


def _expand_images(paths: list[Path]) -> list[Path]:
    """Image arguments: files as given, a directory as its image files (sorted, recursively)."""

    out: list[Path] = []
    for p in paths:
        try:
            is_dir = p.is_dir()
        except OSError:  # a name too long: that file's own error row, the others still classified
            is_dir = False
        if is_dir:
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"{p}: a directory with no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def _predict_table(files: list[str], preds, title: str, batch: int = 1) -> Table:
    """One row per image: the file's name (full paths are in --json), and its share of the time."""
    ms = "ms" if batch == 1 else f"ms/image (batch of {batch})"
    table = Table("file", "label", "confidence", "exited early", "target tokens", ms, title=title)
    for f, p in zip(files, preds):
        name = escape(Path(f).name)
        if isinstance(p, Exception):
            table.add_row(name, "[red]error (below)[/red]", "-", "-", "-", "-")
            continue
        table.add_row(name, p.label, f"{p.confidence:.3f}", "yes" if p.exited_early else "no",
                      str(p.num_target_tokens), f"{p.timings['total'] / p.batch_size:.2f}")
    return table


@app.command()
def predict(
    source: Annotated[Path, typer.Argument(help="export directory or model.pt")],
    images: Annotated[Optional[list[Path]], typer.Argument(help="image files or directories")] = None,
    video: Annotated[Optional[Path], typer.Option(help="a video file to classify frame by frame ([video] extra)")] = None,
    camera: Annotated[Optional[int], typer.Option(help="a camera index to classify live ([video] extra)")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="stop a video or camera after N frames")] = None,
    eta: Annotated[Optional[str], typer.Option(help=ETA_HELP)] = None,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, openvino, tensorrt, pytorch, pytorch-cuda")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table", metavar="")] = False,
    batch: Annotated[bool, typer.Option(help="run all images as one batch (default: one at a time)", metavar="")] = False,
    resize: Annotated[str, typer.Option(help="fit non-square images: stretch (as trained), center_crop, letterbox")] = "stretch",
    resample: Annotated[str, typer.Option(help="exact (as trained) or fast (OpenCV block means first: about half the "
                                                "preprocessing of an HD frame, within a grey level on camera frames; "
                                                "[video] extra)")] = "exact",
    save_overlay: Annotated[Optional[Path], typer.Option(help="write each image with its target regions and label drawn into DIR")] = None,
) -> None:
    """Classify images with EdgeClassifier. A bad image is reported on its row and the others
    are still classified; the exit code is then 3."""

    if sum(x is not None and x != [] for x in (images, video, camera)) != 1:
        _fail(ConfigError("give image files or directories, or --video FILE, or --camera N (one of them)"))
    if save_overlay is not None:
        with _handled():
            check_output_dir(save_overlay, "--save-overlay")
    if video is not None or camera is not None:
        _predict_frames(source, video if video is not None else camera, eta, backend, as_json, resize, resample,
                        save_overlay, max_frames)
        return
    with _handled():
        images = _expand_images(images or [])
        clf = EdgeClassifier(source, backend=backend, eta=_eta(eta), resize=resize, resample=resample)
        results: list = []  # a Prediction, or the ImageError of that file
        if batch:
            decoded: list = []
            for f in images:
                try:
                    decoded.append(load_image(f, clf.max_pixels, target_size=clf.manifest.size))
                except ImageError as exc:
                    decoded.append(exc)
            good = [a for a in decoded if not isinstance(a, ImageError)]
            preds = iter(clf.predict_batch(good) if good else [])
            results = [a if isinstance(a, ImageError) else next(preds) for a in decoded]
        else:
            for f in images:
                try:
                    results.append(clf.predict(f))
                except ImageError as exc:
                    results.append(exc)
    failed = sum(isinstance(r, ImageError) for r in results)
    if save_overlay is not None:
        with _handled():
            for i, (f, p) in enumerate(zip(images, results)):
                if not isinstance(p, ImageError):
                    write_into(save_overlay, f"{i:04d}_{Path(f).stem[:100]}.png", draw_prediction(f, p).save,
                               "--save-overlay")
    if as_json:
        rows = [{"file": str(f), "error": str(p)} if isinstance(p, ImageError) else
                {"file": str(f), "class_id": p.class_id, "label": p.label, "confidence": p.confidence,
                 "exited_early": p.exited_early, "num_target_tokens": p.num_target_tokens,
                 "topk": p.topk, "timings_ms": p.timings, "batch_size": p.batch_size,
                 "target_mask": None if p.target_mask is None else p.target_mask.astype(int).tolist(),
                 "target_boxes": p.target_boxes}
                for f, p in zip(images, results)]
        console.print_json(json.dumps({"backend": clf.backend_name, "eta": describe_eta(clf.eta), "failed": failed,
                                       "predictions": rows}))
    else:
        n_ok = len(results) - failed
        console.print(_predict_table([str(f) for f in images], results,
                                     f"backend {clf.backend_name}, eta {describe_eta(clf.eta)}",
                                     batch=max(1, n_ok) if batch else 1))
    if failed:
        for r in results:
            if isinstance(r, ImageError):
                err.print(f"[red]error:[/red] {escape(str(r))}")  # whole, where a narrow table would cut it
        err.print(f"[red]{failed} of {len(images)} images could not be read[/red]")
        raise typer.Exit(EXIT_INPUT)


# ---- serving on Triton Inference Server ---------------------------------------------------------
def _serving_options(model_name: str, max_batch: int, max_queue_delay_us: int, instances: int, backend: str,
                     eta: Optional[str], deadline_ms: Optional[float], topk: int, threads: Optional[int],
                     precision: str, max_pixels: Optional[int] = None):
    from .serving.repository import ServingOptions

    extra = {} if max_pixels is None else {"max_pixels": max_pixels}
    return ServingOptions(model_name=model_name, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                          instances=instances, stage_backend=backend, eta=_eta(eta), deadline_ms=deadline_ms, topk=topk,
                          threads=threads, precision=precision, **extra)


MODEL_NAME_HELP = "the model clients call; the engines are <name>_ee and <name>_sac"
MAX_BATCH_HELP = "most images Triton's dynamic batcher puts into one execution"
DELAY_HELP = "how long the batcher may hold a request to fill a batch (microseconds)"
INSTANCES_HELP = "instances (processes on the Python backend) of each model"
THREADS_HELP = "ONNX Runtime threads per Python-backend engine instance (default: ONNX Runtime's)"


@app.command("export-triton")
def export_triton(
    export_dir: Annotated[Path, typer.Argument(help="export directory (sacvit-edge export)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the model repository to write (a new directory, or one export-triton wrote)")],
    backend: Annotated[str, typer.Option(help="where the EE and SAC engines run: onnxruntime (models on Triton's own backend), tensorrt (models on Triton's tensorrt backend, from the engines build-engine made), python (models with ONNX Runtime inside Triton's Python backend: any tritonserver), inline (inside the BLS model, no stage models)")] = "onnxruntime",
    model_name: Annotated[str, typer.Option(help=MODEL_NAME_HELP)] = "sacvit",
    max_batch: Annotated[int, typer.Option(help=MAX_BATCH_HELP)] = 32,
    max_queue_delay_us: Annotated[int, typer.Option(help=DELAY_HELP)] = 2000,
    instances: Annotated[int, typer.Option(help=INSTANCES_HELP)] = 1,
    eta: Annotated[Optional[str], typer.Option(help=ETA_HELP + " (default: the export's)")] = None,
    deadline_ms: Annotated[Optional[float], typer.Option(help="per-batch budget (needs `calibrate`): images whose SAC stage would miss it answer from the EE stage")] = None,
    topk: Annotated[int, typer.Option(help="classes in topk_class_ids / topk_probs")] = 5,
    threads: Annotated[Optional[int], typer.Option(help=THREADS_HELP)] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8 graphs (those the export has)")] = "fp32",
) -> None:
    """Write a Triton model repository for a stock Triton server: the EE and SAC engines as
    models, and a Python-backend BLS model that decodes, gates and calls the SAC model only for
    the images that did not exit."""
    with _handled():
        from .serving.repository import build_repository

        repo = build_repository(export_dir, out, _serving_options(model_name, max_batch, max_queue_delay_us, instances,
                                                                  backend, eta, deadline_ms, topk, threads, precision))
    o = repo.options
    table = Table("model", "backend", "what", title=f"Triton model repository {out}")
    table.add_row(o.model_name, "python", f"what clients call: image (BYTES) or frame (UINT8 HxWx3) in, class_id, label, "
                  f"confidence, exited_early, num_target_tokens, top-{o.topk} out; eta {o.eta}")
    if o.stage_backend != "inline":
        table.add_row(f"{o.model_name}_ee", o.stage_backend, "the EE engine (all images)")
        table.add_row(f"{o.model_name}_sac", o.stage_backend, "the SAC engine (only the images that did not exit)")
    console.print(table)
    if o.stage_backend == "tensorrt":
        marker = json.loads((repo.path / "sacvit-edge-repository.json").read_text())
        for e in marker["tensorrt_engines"]:
            console.print(f"{e['stage']}: TensorRT {e['tensorrt']} plan for {e['gpu']}: serve it with a Triton release whose "
                          f"TensorRT is {e['tensorrt']}, on that kind of GPU")
    console.print(f"wrote {out}; serve it with `sacvit-edge serve {out}` or `tritonserver --model-repository {out}` "
                  "(the server's Python needs `pip install sacvit-edge` for the BLS model)")


@app.command()
def serve(
    export_dir: Annotated[Path, typer.Argument(help="export directory (sacvit-edge export), or a model repository export-triton wrote")],
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2 protocol)")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (/metrics)")] = 8002,
    address: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "0.0.0.0",
    model_name: Annotated[str, typer.Option(help=MODEL_NAME_HELP)] = "sacvit",
    max_batch: Annotated[int, typer.Option(help=MAX_BATCH_HELP)] = 32,
    max_queue_delay_us: Annotated[int, typer.Option(help=DELAY_HELP)] = 2000,
    instances: Annotated[int, typer.Option(help=INSTANCES_HELP)] = 1,
    backend: Annotated[str, typer.Option(help="where the EE and SAC engines run: auto (models on Triton's onnxruntime backend where the server has it, else inline), onnxruntime, tensorrt, python (models with ONNX Runtime in the Python backend), inline (inside the BLS model: fastest on a CPU)")] = "auto",
    eta: Annotated[Optional[str], typer.Option(help=ETA_HELP + " (default: the export's)")] = None,
    deadline_ms: Annotated[Optional[float], typer.Option(help="per-batch budget (needs `calibrate`)")] = None,
    topk: Annotated[int, typer.Option(help="classes in topk_class_ids / topk_probs")] = 5,
    threads: Annotated[Optional[int], typer.Option(help=THREADS_HELP)] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8 graphs (those the export has)")] = "fp32",
    repository: Annotated[Optional[Path], typer.Option(help="write the model repository here and keep it (default: a temporary one, removed on exit)")] = None,
    tritonserver: Annotated[Optional[Path], typer.Option(help="a tritonserver binary with its backends in ../backends (default: the one nvidia-pytriton bundles)")] = None,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for every model to load")] = 120.0,
    exit_timeout: Annotated[int, typer.Option(help="on SIGTERM, the most seconds Triton waits for requests in flight and open client connections")] = 10,
) -> None:
    """Serve SAC-ViT on Triton Inference Server: dynamic batching across clients, HTTP and gRPC,
    Prometheus metrics; the early exit inside the server. SIGTERM or Ctrl-C drains the requests in
    flight and stops."""
    import signal
    import tempfile

    from .serving.repository import build_repository, is_repository, read_repository
    from .serving.server import TritonServer, find_tritonserver

    def check_backend(install, stage_backend: str) -> None:
        """Before anything is written: the server has the backend the engines need."""
        needs = "python" if stage_backend == "inline" else stage_backend
        if not install.has_backend(needs):
            raise ConfigError(f"the engines are on Triton's {needs} backend, which {install.binary} does not have "
                              f"({install.backends} holds {sorted(p.name for p in install.backends.iterdir())}); "
                              "use --backend inline or python (or export-triton --backend python)")

    stopping: list = []
    with _handled():
        install = find_tritonserver(tritonserver)
        if backend == "auto":  # the Python-backend stage models cost 0.6-0.8x of inline on a CPU (docs/serving.md)
            backend = "onnxruntime" if install.has_backend("onnxruntime") else "inline"
        scratch = None
        try:
            if is_repository(export_dir):
                repo = read_repository(export_dir)
                check_backend(install, repo.options.stage_backend)
            else:
                check_backend(install, backend)
                if repository is None:
                    scratch = Path(tempfile.mkdtemp(prefix="sacvit-edge-serve-"))
                repo = build_repository(export_dir, repository or scratch / "repository", _serving_options(
                    model_name, max_batch, max_queue_delay_us, instances, backend, eta, deadline_ms, topk, threads,
                    precision))
            server = TritonServer(repo.path, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                  address=address, tritonserver=tritonserver, exit_timeout_s=exit_timeout)

            def drain(signum, _frame) -> None:  # the CLI's own handler: the server finishes what is in flight
                stopping.append((signum, time.monotonic()))
                if server.process is not None and server.process.poll() is None:
                    server.process.send_signal(signal.SIGTERM)

            previous = {sig: signal.signal(sig, drain) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                with err.status(f"starting Triton Inference Server on {repo.path}"):
                    server.start(ready_timeout)
                o = repo.options
                engines = "engines inline" if o.stage_backend == "inline" else \
                    f"{o.model_name}_ee, {o.model_name}_sac on Triton's {o.stage_backend} backend"
                console.print(f"ready: model '{o.model_name}' ({engines}), max batch {o.max_batch}, eta {o.eta}\n  HTTP  "
                              f"{server.http_url}  (POST /v2/models/{o.model_name}/infer)\n  gRPC  {server.grpc_url}\n  "
                              f"metrics {server.metrics_url}\nSIGTERM or Ctrl-C stops it")
                code = server.wait()
                if not stopping and code != 0:
                    raise ServeError(f"tritonserver stopped with code {code}:\n{server.log_tail()}")
            finally:
                server.stop()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    console.print("stopped" + (f" {time.monotonic() - stopping[0][1]:.1f} s after {signal.Signals(stopping[0][0]).name} "
                               "(requests in flight were finished)" if stopping else ""))


@app.command("serve-bench")
def serve_bench(
    export_dir: Annotated[Optional[Path], typer.Argument(help="export directory (default: the bundled checkpoint, exported afresh with [bench], else the bundled export)")] = None,
    deit: Annotated[Optional[Path], typer.Option(help="DeiT checkpoint served the same way, its graph in the SAC-ViT engines' style (default: the bundled one; needs [bench])")] = None,
    no_deit: Annotated[bool, typer.Option("--no-deit", help="skip the DeiT baseline", metavar="")] = False,
    clients: Annotated[int, typer.Option(help="concurrent tritonclient clients (threads), one image per request")] = 8,
    images: Annotated[int, typer.Option(help="test images sent per round (the model was not tuned on them)")] = 400,
    rounds: Annotated[int, typer.Option(help="rounds, each sending the images to every served model in turn")] = 3,
    max_batch: Annotated[int, typer.Option(help=MAX_BATCH_HELP)] = 32,
    max_queue_delay_us: Annotated[int, typer.Option(help=DELAY_HELP)] = 2000,
    instances: Annotated[int, typer.Option(help=INSTANCES_HELP)] = 1,
    data: Annotated[Optional[Path], typer.Option(help="ImageFolder to draw the images from (default: the built-in test split)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for serve_bench.json")] = Path("serve-bench"),
) -> None:
    """Load test: SAC-ViT served by Triton vs DeiT served the same way vs in-process
    predict_batch, one run: throughput, p50/p99 latency, exit rate, the batches Triton formed."""
    with _handled():
        require_extra("serve", "sacvit-edge serve-bench")
        _check_positive(clients=clients, images=images, rounds=rounds)
        check_output_dir(out, "--out")
        from .bench.serving import plot as plot_serving, ServeBenchConfig, run_serve_bench

        deit_checkpoint = None
        if not no_deit:
            require_extra("bench", "serve-bench's DeiT baseline (or pass --no-deit)")
            deit_checkpoint = deit or bundled_checkpoint().with_name("deit_tiny_112.pt")
        fresh = export_dir is None and has_extra("bench") and CHECKOUT is not None \
            and (CHECKOUT / "checkpoints" / "sacvit_tiny_112.pt").is_file()
        cfg = ServeBenchConfig(export=None if fresh else export_dir or BUNDLED_EXPORT, deit_checkpoint=deit_checkpoint,
                               sac_checkpoint=CHECKOUT / "checkpoints" / "sacvit_tiny_112.pt" if fresh else None,
                               clients=clients,
                               images=images, rounds=rounds, data=data, options=_serving_options(
                                   "sacvit", max_batch, max_queue_delay_us, instances, "python", None, None, 5, None, "fp32"))
        result = run_serve_bench(cfg, step=lambda msg: err.print(f"- {escape(msg)}"))
        path = write_into(out, "serve_bench.json", lambda p: p.write_text(json.dumps(result, indent=2)), "--out")
        png = write_into(out, "serve_bench.png", lambda p: plot_serving(result, p), "--out")
    table = Table("served", "clients", "images", "img/s", "vs DeiT", "p50 ms", "p99 ms", "exit rate", "mean batch",
                  "batches formed (size x count)", "errors",
                  title=f"serving load test, {cfg.clients} clients, max batch {cfg.options.max_batch}, {cfg.rounds} rounds, "
                        f"{result['config']['graphs']} graphs")
    for r in result["rows"]:
        formed = ", ".join(f"{b}x{n}" for b, n in r["batch_sizes"].items())
        table.add_row(r["name"], str(r["clients"]), str(r["images"]), f"{r['throughput_img_s']:.1f}",
                      "-" if r["throughput_vs_deit"] is None else f"{r['throughput_vs_deit']:.2f}x",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", "-" if r["exit_rate"] is None else f"{r['exit_rate']:.3f}",
                      "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}", formed, str(r["errors"]))
    console.print(table)
    console.print(f"wrote {path}" + (f", {png}" if png.is_file() else ""))


@app.command()
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="where to export the bundled model (default: sacvit-edge's cache folder, never the working directory)")] = None,
    backend: Annotated[str, typer.Option(help="backend to run")] = "onnxruntime",
) -> None:
    """The main job on the bundled default: export the shipped checkpoint, classify the samples.

    In a checkout with the [export] extra the shipped checkpoint is exported afresh into --out;
    elsewhere (the core install) the export that ships in the package is used as it is.
    """

    with _handled():
        checkpoint = CHECKOUT / "checkpoints" / "sacvit_tiny_112.pt" if CHECKOUT is not None else None
        if checkpoint is not None and checkpoint.is_file() and has_extra("export"):
            from .export.bundle import export_checkpoint

            out = out if out is not None else default_cache_dir() / "demo" / "sacvit_tiny_112"
            with err.status(f"exporting {checkpoint.name}"):
                export_checkpoint(checkpoint, out)
            source, how = out, f"exported {checkpoint} -> {out} (ee.onnx, sac.onnx, manifest.json)"
        else:
            source, how = BUNDLED_EXPORT, f"using the bundled export {BUNDLED_EXPORT} (no export: " + (
                "torch/onnx are not installed)" if checkpoint is not None and checkpoint.is_file() else "not in a checkout)")
        clf = EdgeClassifier(source, backend=backend)
        samples = sorted((ASSETS / "samples").glob("*.png"))
        if not samples:
            raise SacvitError(f"the bundled sample images are missing from {ASSETS / 'samples'}")
        preds = [clf.predict(p) for p in samples]
    console.print(how)
    table = _predict_table([p.name for p in samples], preds, f"bundled samples, backend {clf.backend_name}, "
                           f"eta {describe_eta(clf.eta)}")
    console.print(table)
    right = sum(p.label.replace("/", "-").replace(" ", "-") in s.stem for p, s in zip(preds, samples))
    console.print(f"{right}/{len(samples)} correct (sample file names carry the true label)")


if __name__ == "__main__":
    app()
