"""Training and evaluation (SACVIT.md section 5).

Loss = CE(logits_sac, y) + KL(log_softmax(logits_ee) || softmax(logits_sac).detach()).
For the first `warmup_share` of the steps the SAC stage takes every coarse token as a
target; clustering switches on after that. [choice] `distill_from`: the KL term from the first
step ("start", the section as written), from the step clustering switches on ("clustering"), or
from a share of the steps (a number in [0, 1]; independent of the clustering switch).
The DeiT baseline trains with plain CE.

Runs unchanged as one process, or under torchrun with DistributedDataParallel (gloo on CPU,
nccl on GPU): each rank takes a disjoint shard of every epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import (DEFAULT_MEAN, DEFAULT_STD, is_training_log, load_checkpoint, save_checkpoint,
                         training_log)
from .config import ModelConfig
from .errors import ConfigError, OutputError
from .calibration.evaluate import EvalReport
from .calibration.sweep import ExitRecords, Request, choose
from .flops import CostModel
from .folders import Augment
from .gate import NEVER_EXIT, validate_eta
from .images import normalize
from .model import SACViT, VisionTransformer, build_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: float = 5.0
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 200
    warmup_share: float = 2 / 3  # share of steps with clustering off (CF-ViT: 200 of 300 epochs)
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int | None = 2000
    grad_clip: float = 1.0
    threads: int | None = None
    augment: str = "none"  # image folders: "shift-scale" (a random scale and shift per image and epoch) or "none"
    # when the EE head's distillation (the KL term) starts: "start" (every step, SACVIT.md section 5 as
    # written, the shipped recipe), "clustering" (with the clustering stage: during the all-targets warm
    # stage the shared blocks learn the full-resolution task undisturbed; a short fine-tuning on a small
    # folder gains 4-7 points, see the README's own-data table), or a share of the steps in [0, 1] (the
    # folder recipe: clustering from the first step, the KL term from half the steps on; recipe.py)
    distill_from: str | float = "start"


AUGMENTS = {"shift-scale": Augment(), "none": None}
DISTILL_FROM = ("start", "clustering")


def parse_distill_from(value: str | float, label: str = "distill_from") -> str | float:
    """"start", "clustering", or a share of the steps in [0, 1] (given as a number or its text);
    `label` names the value in the error (the CLI's option, or the config field)."""
    if isinstance(value, str) and value in DISTILL_FROM:
        return value
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = math.nan
    if isinstance(value, bool) or not 0.0 <= share <= 1.0:
        raise ConfigError(f"{label} {value!r}: expected one of {list(DISTILL_FROM)} or a share of the steps in [0, 1]")
    return share


def distill_start_step(distill_from: str | float, cluster_from: int, total: int) -> int:
    """The first optimiser step whose loss has the KL term."""
    if distill_from == "start":
        return 0
    if distill_from == "clustering":
        return cluster_from
    return int(round(float(distill_from) * total))


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def to_input(images_uint8: np.ndarray, mean=DEFAULT_MEAN, std=DEFAULT_STD) -> torch.Tensor:
    """The torch adapter of the data stack: a source's (B, H, W, 3) uint8 batch -> the model's
    normalised (B, 3, H, W) float32 with images.normalize, the arithmetic deployment uses."""
    return torch.from_numpy(normalize(np.ascontiguousarray(images_uint8.transpose(0, 3, 1, 2)), mean, std))


def prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Render the next batches in a thread while the model trains on this one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker() -> None:
        for item in it:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            yield item
    finally:  # the consumer stopped early (break, exception): let the worker finish
        stop.set()
        thread.join()


def sac_loss(out, labels: torch.Tensor, distill: bool = True) -> torch.Tensor:
    """CE on the SAC head, plus (with `distill`) the EE head's KL to the detached SAC answer."""
    ce = F.cross_entropy(out.logits, labels)
    if not distill:
        return ce
    kl = F.kl_div(F.log_softmax(out.ee_logits, -1), F.softmax(out.logits, -1).detach(), reduction="batchmean")
    return ce + kl


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed() -> bool:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def train(model_cfg: ModelConfig, cfg: TrainConfig, dataset, out_path: Path,
          init_state: dict[str, torch.Tensor] | None = None, eval_dataset=None,
          on_step: Callable[[int, int, float], None] | None = None,
          metadata: dict[str, Any] | None = None) -> TrainResult:
    """Train `model_cfg` on `dataset` and write a checkpoint to `out_path`.

    Args:
        init_state: optional DeiT/timm state_dict to fine-tune from.
        on_step: progress callback (step, total_steps, loss) - the CLI drives rich with it.
    """
    from .model import load_deit_state_dict

    distill_from = parse_distill_from(cfg.distill_from)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed = setup_distributed()
    rank, world = _dist_info()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    if init_state is not None:
        load_deit_state_dict(model, init_state)
    model.to(device)
    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n_items = len(dataset) if cfg.train_limit is None else min(cfg.train_limit, len(dataset))
    steps_per_epoch = math.ceil(n_items / world / cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    cluster_from = int(round(cfg.warmup_share * total))
    distill_from_step = distill_start_step(distill_from, cluster_from, total)
    if cfg.warmup_steps >= total and rank == 0:
        log.warning("the learning-rate warm-up (%d steps) is as long as the whole run (%d steps): the learning rate never "
                    "reaches --lr; lower --warmup-steps or train longer", cfg.warmup_steps, total)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))

    is_sac = isinstance(model, SACViT)
    history: list[dict[str, Any]] = []
    log_path = training_log(out_path)
    if rank == 0 and log_path.exists():
        if not is_training_log(log_path):
            raise OutputError(f"{log_path}: exists and is not a training log (JSON lines); move it away or choose "
                              "another checkpoint path")
        log_path.unlink()  # the previous run's log of this checkpoint
    step, epoch, t0 = 0, 0, time.time()
    while step < total:
        net.train()
        losses, seen = [], 0
        jitter = {"augment": AUGMENTS[cfg.augment], "seed": cfg.seed} if AUGMENTS[cfg.augment] else {}
        batches = dataset.batches(cfg.batch_size, epoch=epoch, shuffle=True, rank=rank, world=world,
                                  size=model_cfg.img_size, **jitter)
        for images, labels in prefetch(batches):
            if step >= total:
                break
            if cfg.train_limit is not None and seen >= math.ceil(cfg.train_limit / world):
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            x, y = to_input(images).to(device), torch.from_numpy(labels).to(device)
            if is_sac:
                clustering = step >= cluster_from
                loss = sac_loss(net(x, clustering=clustering), y, distill=step >= distill_from_step)
            else:
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            seen += len(labels)
            step += 1
            if on_step and rank == 0:
                on_step(step, total, loss.item())
        epoch += 1
        if rank == 0:
            row: dict[str, Any] = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else None,
                                   "lr": lr_at(step - 1), "clustering": is_sac and step > cluster_from,
                                   "elapsed_s": round(time.time() - t0, 1)}
            if eval_dataset is not None:
                row.update(evaluate(model, eval_dataset, limit=cfg.eval_limit, batch_size=256, flops=False))
            history.append(row)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("epoch %s", row)
    if rank == 0:
        meta = {"train_config": asdict(cfg), "history": history, "world_size": world, **(metadata or {})}
        save_checkpoint(out_path, model.cpu(), class_names=list(dataset.classes), eta=model_cfg.eta, training=meta)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(checkpoint=out_path, history=history)




@torch.no_grad()
def predict_dataset(model: VisionTransformer, dataset, limit: int | None = None, batch_size: int = 256,
                    on_batch: Callable[[int, int], None] | None = None) -> ExitRecords:
    """Run every image of `dataset` (or its first `limit`) through both heads once."""
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cols: dict[str, list[np.ndarray]] = {"labels": [], "sac_pred": [], "ee_probs": [], "counts": [], "raw_counts": []}
    done = 0
    for images, labels in prefetch(dataset.batches(batch_size, size=model.cfg.img_size)):
        if done >= n:
            break
        images, labels = images[: n - done], labels[: n - done]
        x = to_input(images)
        cols["labels"].append(labels)
        if isinstance(model, SACViT):
            out = model(x, clustering=True)
            ee_probs = out.ee_logits.softmax(-1)
            cols["sac_pred"].append(out.logits.argmax(-1).numpy())
            cols["ee_probs"].append(ee_probs.numpy())
            cols["counts"].append(np.asarray(out.split.counts))
            raw = out.split.raw_counts
            cols["raw_counts"].append(np.asarray(out.split.counts if raw is None else raw))
        else:
            cols["sac_pred"].append(model(x).argmax(-1).numpy())
        done += len(labels)
        if on_batch:
            on_batch(done, n)
    return ExitRecords(**{k: np.concatenate(v) if v else None for k, v in cols.items()})


def evaluate(model: VisionTransformer, dataset, eta: float | None = None, limit: int | None = None,
             batch_size: int = 256, flops: bool = True,
             on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Accuracy and cost of a model on a dataset.

    SAC-ViT: top-1 of the EE head alone, of the SAC head alone (clustering on for every image),
    and of the full early-exit model at eta; exit rate; mean target count of the images that
    went to the SAC stage; expected GFLOPs per image. DeiT: top-1 and GFLOPs.
    """
    eta = validate_eta(model.cfg.eta if eta is None else eta)
    preds = predict_dataset(model, dataset, limit, batch_size, on_batch)
    result: dict[str, Any] = {"images": int(len(preds.labels))}
    if isinstance(model, SACViT):
        exited, counts = preds.exited(eta), preds.counts
        result.update(
            eta=eta if math.isfinite(eta) else NEVER_EXIT,
            top1_ee=preds.top1(preds.ee_pred),
            top1_sac=preds.top1(preds.sac_pred),
            top1=preds.top1(preds.final_pred(eta)),
            exit_rate=float(exited.mean()),
            mean_target_tokens=float(counts[~exited].mean()) if (~exited).any() else 0.0,
            mean_target_tokens_all=float(counts.mean()),
        )
        if flops:
            cost = CostModel(model)
            result.update(gflops=cost.expected(exited, counts), gflops_ee=cost.ee,
                          gflops_sac_mean=float(np.mean([cost.sac(k) for k in counts])),
                          gflops_full_resolution=cost.full)
    else:
        result["top1"] = preds.top1(preds.sac_pred)
        if flops:
            result["gflops"] = CostModel(model).full
    return result


def evaluate_checkpoint(path: str | Path, dataset, name: str, eta: float | None = None,
                        on_batch: Callable[[int, int], None] | None = None) -> EvalReport:
    """`sacvit-edge eval model.pt`: train.evaluate through PyTorch, as eval's typed report."""
    ckpt = load_checkpoint(path)
    res = evaluate(ckpt.model, dataset, eta=ckpt.eta if eta is None else eta, on_batch=on_batch)
    known = ("images", "top1", "eta", "top1_ee", "top1_sac", "exit_rate", "mean_target_tokens", "gflops")
    return EvalReport(kind="checkpoint", model=str(path), data=name, arch=ckpt.config.arch,
                      **{k: res[k] for k in known if k in res}, details={k: v for k, v in res.items() if k not in known})


def check_checkpoint_request(request: Request) -> None:
    """What a checkpoint can be calibrated for (GFLOPs are computed; latency is measured on engines)."""
    if request.kind == "latency_budget_ms":
        raise ConfigError("a latency budget is measured on the deployment engines: export first, then "
                          "`sacvit-edge calibrate EXPORT_DIR --latency-budget-ms ...`")


def choose_eta(model: SACViT, dataset, request: Request,
               on_batch: Callable[[int, int], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The checkpoint-level calibration (`sacvit-edge calibrate model.pt` / `tune-eta`): one
    PyTorch pass over held-out `dataset`, then the sweep and the choice every command uses
    (calibration.sweep: eta in steps of 0.005 and "never", cost in GFLOPs). Returns (curve, chosen)."""
    check_checkpoint_request(request)
    records = predict_dataset(model, dataset, on_batch=on_batch)
    curve = records.curve(CostModel(model))
    return curve, choose(curve, request)
