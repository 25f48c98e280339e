"""The model.pt checkpoint format.

A checkpoint is a plain dict of primitives and tensors, loadable with weights_only=True:
    format          "sacvit-edge-checkpoint"
    format_version  CHECKPOINT_VERSION
    config          ModelConfig as a dict
    state_dict      parameter tensors
    class_names     list[str]
    input           {"size": int, "mean": [3 floats], "std": [3 floats]}
    eta             default exit threshold
    training        free-form metadata (recipe, epochs, accuracy, command, ...)
"""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, OutputError
from .model import VisionTransformer, build_model

FORMAT = "sacvit-edge-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
# Normalisation a real model uses lies well inside these (ImageNet: mean 0.485.., std 0.229..);
# values outside are a damaged file, and would silently ruin every answer.
PLAUSIBLE_NORM = {"mean": (-1.0, 2.0), "std": (1e-3, 10.0)}
_REQUIRED = ("format", "format_version", "config", "state_dict", "class_names", "input", "eta")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and what is needed to feed it."""

    model: VisionTransformer
    class_names: list[str]
    size: int
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    eta: float = 0.8
    training: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def save_checkpoint(path: str | Path, model: VisionTransformer, class_names: list[str] | tuple[str, ...],
                    mean: tuple[float, ...] = DEFAULT_MEAN, std: tuple[float, ...] = DEFAULT_STD,
                    eta: float | None = None, training: dict[str, Any] | None = None) -> Path:
    """Write model.pt atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eta = float(model.cfg.eta if eta is None else eta)
    payload = {
        "format": FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": {**model.cfg.to_dict(), "eta": eta},  # one source of truth for the threshold
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "input": {"size": model.cfg.img_size, "mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "eta": eta,
        "training": dict(training or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, or None."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def file_fingerprint(path: str | Path) -> str:
    """sha256 of the file's bytes: identifies the exact weights an export came from."""
    from .manifest import sha256_file

    return sha256_file(Path(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load model.pt, validating it thoroughly.

    Raises:
        CheckpointError: missing, truncated or corrupt file; not a sacvit-edge checkpoint;
            a newer format version; keys or shapes that do not fit its config.
    """
    path = Path(path)
    return checkpoint_from_dict(_read(path, map_location), path)


def load_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights to fine-tune from: a sacvit-edge checkpoint, a timm/DeiT state_dict, or a
    DeiT release file that wraps one under "model".

    Raises:
        CheckpointError: missing or unreadable file; a sacvit-edge checkpoint that does not
            validate; anything that is not a dict of tensors.
    """
    path = Path(path)
    raw = _read(path, "cpu")
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return checkpoint_from_dict(raw, path).model.state_dict()
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]  # timm/DeiT release files wrap the state_dict
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: neither a sacvit-edge checkpoint nor a state_dict of tensors")
    return raw


def _read(path: Path, map_location: str | torch.device) -> Any:
    """torch.load with weights_only=True, every failure turned into a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError,
            AttributeError, TypeError, IndexError, KeyError, io.UnsupportedOperation) as exc:
        # torch's own text advises weights_only=False, which would run the file's code: never say that
        with open(path, "rb") as f:
            head = f.read(2)
        if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):  # neither zip nor legacy pickle
            raise CheckpointError(f"{path}: not a checkpoint (not a PyTorch file: another kind of file, or "
                                  "truncated)") from exc
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
            raise CheckpointError(f"{path}: not a readable checkpoint: it holds pickled Python objects "
                                  "(UnpicklingError), which could run code; sacvit-edge loads only tensors and "
                                  "plain values") from exc
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc


def checkpoint_from_dict(raw: Any, path: Path | None = None) -> Checkpoint:
    where = str(path) if path else "checkpoint"
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a sacvit-edge checkpoint (no format={FORMAT!r} entry); "
                              "a raw DeiT state_dict can be imported with `sacvit-edge train --init`")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{where}: checkpoint lacks keys {missing}")
    version = raw["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where}: format_version {version!r:.40} is not a version number")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{where}: format version {version!r} is newer than this sacvit-edge "
                              f"reads ({CHECKPOINT_VERSION}); upgrade sacvit-edge")
    try:
        cfg = ModelConfig.from_dict(raw["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: invalid model config: {exc}") from exc
    model = build_model(cfg)
    state = raw["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: state_dict is not a dict")
    own = model.state_dict()
    if set(state) != set(own):
        extra, lost = sorted(set(state) - set(own)), sorted(set(own) - set(state))
        raise CheckpointError(f"{where}: weights do not match its config ({cfg.arch}): "
                              f"unexpected {extra[:4]}, missing {lost[:4]}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{where}: {key!r} has shape {shape}, config needs {tuple(own[key].shape)}")
    bad = first_nonfinite(state)
    if bad:
        raise CheckpointError(f"{where}: weight {bad!r} holds NaN or inf values (a diverged training?); "
                              "every prediction would be NaN")
    model.load_state_dict(state)
    model.eval()
    names = raw["class_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{where}: class_names must be a list of non-empty strings, got {names!r:.80}")
    names = list(names)
    if len(set(names)) != len(names):
        raise CheckpointError(f"{where}: class_names has duplicates: {sorted({n for n in names if names.count(n) > 1})}")
    if len(names) != cfg.num_classes:
        raise CheckpointError(f"{where}: {len(names)} class names for {cfg.num_classes} classes")
    size, mean, std = _input_spec(raw["input"], cfg, where)
    eta = raw["eta"]
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise CheckpointError(f"{where}: eta must be a number in [0, 1], got {eta!r:.40}")
    training = raw.get("training") or {}
    if not isinstance(training, dict):
        raise CheckpointError(f"{where}: training metadata must be a dict, got {type(training).__name__}")
    return Checkpoint(model=model, class_names=names, size=size, mean=mean, std=std, eta=float(eta),
                      training=dict(training), fingerprint=file_fingerprint(path) if path else "", path=path)


def _input_spec(inp: Any, cfg: ModelConfig, where: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's input section, validated: a wrong normalisation silently ruins every answer."""
    if not isinstance(inp, dict):
        raise CheckpointError(f"{where}: input must be a dict with size, mean, std; got {type(inp).__name__}")
    for key in ("size", "mean", "std"):
        if key not in inp:
            raise CheckpointError(f"{where}: input lacks {key!r}")
    size = inp["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size != cfg.img_size:
        raise CheckpointError(f"{where}: input.size must be the model's img_size {cfg.img_size}, got {size!r:.40}")
    out = []
    for key in ("mean", "std"):
        v = inp[key]
        ok = (isinstance(v, (list, tuple)) and len(v) == cfg.in_chans
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
              and all(lo <= x <= hi for x in v for lo, hi in [PLAUSIBLE_NORM[key]]))
        if not ok:
            lo, hi = PLAUSIBLE_NORM[key]
            what = f"numbers in [{lo}, {hi}] (pixel intensities in [0, 1] units)"
            raise CheckpointError(f"{where}: input.{key} must be {cfg.in_chans} {what}, got {v!r:.80}")
        out.append(tuple(float(x) for x in v))
    return size, out[0], out[1]


def training_log(checkpoint: str | Path) -> Path:
    """Where `train` logs a checkpoint's epochs (JSON lines beside it)."""
    return Path(checkpoint).with_suffix(".log.jsonl")


def is_training_log(path: Path) -> bool:
    """A file `train` wrote (replaced by the next training of its checkpoint): empty, or JSON objects."""
    try:
        with path.open(errors="replace") as f:
            first = f.readline()
        return not first.strip() or isinstance(json.loads(first), dict)
    except (OSError, ValueError):
        return False


def check_checkpoint_output(path: str | Path, option: str = "--out") -> Path:
    """A checkpoint path to be written: an existing file is replaced only when it is a sacvit-edge
    checkpoint (and its training log beside it only when it is one), never another file."""
    from .outputs import probe_folder

    path = Path(path)
    try:
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a directory; give a checkpoint file name (model.pt)")
        exists = path.exists()
    except OSError as exc:
        raise OutputError(f"{option} {path}: not usable ({exc.strerror or exc})") from exc
    if exists:
        try:
            load_checkpoint(path)
        except CheckpointError:
            raise OutputError(f"{option} {path}: exists and is not a sacvit-edge checkpoint; sacvit-edge replaces only "
                              "its own checkpoints, choose another path") from None
    log = training_log(path)
    if log.exists() and not is_training_log(log):
        raise OutputError(f"{option} {path}: its training log {log} exists and is not one (JSON lines); move it "
                          "away or choose another path")
    probe_folder(path.parent, f"{option} {path}")
    return path
