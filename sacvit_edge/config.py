"""Model configuration: one frozen dataclass, validated on construction, plus named presets.

Every place where ../shared/SACVIT.md marks a [choice] is a field here, so that it can be
ablated from the command line or a checkpoint without touching the model code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

Arch = Literal["sacvit", "deit"]
ScoreSpace = Literal["raw", "log"]
Selection = Literal["sac", "topalpha", "window"]
AttentionMode = Literal["cluster", "full"]
CoarseResample = Literal["avgpool", "bilinear_align_corners"]
ReuseInput = Literal["pre_norm", "post_norm"]

# Values of options that older checkpoints and manifests predate: what the model computed before
# the option existed. from_dict fills them in, so an old file keeps computing what it was trained
# with while new trainings get the (source-aligned) dataclass defaults.
LEGACY_VALUES: dict[str, Any] = {"coarse_resample": "avgpool", "reuse_input": "pre_norm", "window_keep": 1.0,
                                 "cluster_space": "raw"}


_INT_FIELDS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "reuse_layer",
               "k_min", "k_max", "window", "gca_start_block")
_FLOAT_FIELDS = ("mlp_ratio", "alpha", "window_keep", "gca_momentum", "reuse_hidden_ratio", "eta")
_MAX_DIM = 1 << 16


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of the DeiT backbone and the SAC-ViT options.

    Args:
        arch: "sacvit" (two stages) or "deit" (the plain baseline: same blocks, full resolution).
        img_size: side of the square full-resolution input, in pixels.
        patch_size: side of one fine patch; the coarse stage sees the image downsampled by 2,
            so a coarse token covers 2*patch_size pixels of the full image.
        selection: how target tokens are chosen. "sac" = exact 1-D 2-means of the global class
            attention (the paper's non-iterative clustering, our [choice]); "topalpha" = CF-ViT's
            fixed top share; "window" = LF-ViT's densest m x m window.
        attention: "cluster" = SAC-ViT's attention within each cluster (CLS in both);
            "full" = every token attends to every token (CF-ViT / LF-ViT).
        reuse_layer: [choice] which EE feature the non-target tokens reuse: the hidden state
            after this many blocks (0 = the patch embeddings, as CF-ViT). They join the SAC
            stage at that block, so a later layer skips more of their recomputation.
        cluster_space: [choice] the 1-D space the 2-means split works in: "raw" GCA values, or
            "log" GCA. Attention is heavy-tailed: on raw values the split isolates the few
            peak tokens of the object; in log space it separates object from background.
        k_min, k_max: clamp of the per-image target count ("sac" selection).
        alpha: share of coarse tokens kept as targets in "topalpha" mode (CF-ViT: 0.5).
        window: side m of the LF-ViT window in "window" mode (LF-ViT: 5 of 7).
        window_keep: LF-ViT: share of the window's tokens that become targets, the best-scored
            ceil(window_keep * window**2) of them; the rest of the window joins the non-targets
            (official LF-ViT: alpha = 0.88, i.e. 22 of 25).
        coarse_resample: how the EE stage's half-resolution image is made. "avgpool" = 2x2 mean
            (equal to bilinear with align_corners=False at x0.5; a plain pooling op in every
            runtime; [choice], this project's SAC-ViT); "bilinear_align_corners" = bilinear
            interpolation with align_corners=True, what the official CF-ViT / LF-ViT scripts feed.
        gca_start_block: 0-based index of the first block whose CLS attention enters the
            global-class-attention EMA; blocks gca_start_block .. depth-1 enter it. The official
            CF-ViT / LF-ViT use 3 (blocks 3..11 of 12: "from the fourth block on").
        gca_momentum: EMA momentum, g = m * g + (1 - m) * a_l, g starting at 0.
        reuse_input: what the feature-reuse MLP reads of the EE stage's final coarse tokens:
            "post_norm" = after the final LayerNorm, as the official CF-ViT (reuse_block(norm(x)));
            "pre_norm" = before it (what the shipped tiny_112 checkpoint was trained with).
        reuse_hidden_ratio: hidden width of the feature-reuse MLP, as a multiple of embed_dim
            (official CF-ViT / LF-ViT: 4, the blocks' mlp_ratio).
        eta: default exit threshold on max softmax of the EE logits.
    """

    arch: Arch = "sacvit"
    img_size: int = 112
    patch_size: int = 8
    in_chans: int = 3
    num_classes: int = 10
    embed_dim: int = 64
    depth: int = 6
    num_heads: int = 2
    mlp_ratio: float = 4.0
    selection: Selection = "sac"
    attention: AttentionMode = "cluster"
    reuse_layer: int = 3
    cluster_space: ScoreSpace = "log"
    k_min: int = 4
    k_max: int = 25
    alpha: float = 0.5
    window: int = 5
    window_keep: float = 1.0
    coarse_resample: CoarseResample = "avgpool"
    gca_start_block: int = 3
    gca_momentum: float = 0.99
    reuse_input: ReuseInput = "post_norm"
    reuse_hidden_ratio: float = 1.0
    eta: float = 0.8

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"invalid ModelConfig: {msg}")

        # types and ranges first: a config read from a file may hold anything
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(f"{name}={v!r:.40} must be an integer")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name}={v!r:.40} must be a finite number")
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "window"):
            if not 1 <= getattr(self, name) <= _MAX_DIM:
                bad(f"{name}={getattr(self, name)} must be in [1, {_MAX_DIM}]")
        if not 0 < self.mlp_ratio <= 64:
            bad(f"mlp_ratio={self.mlp_ratio} must be in (0, 64]")
        if not 0 < self.reuse_hidden_ratio <= 64:
            bad(f"reuse_hidden_ratio={self.reuse_hidden_ratio} must be in (0, 64]")
        if not 0.0 <= self.gca_momentum < 1.0:
            bad(f"gca_momentum={self.gca_momentum} must be in [0, 1)")
        if self.arch not in ("sacvit", "deit"):
            bad(f"arch={self.arch!r}, expected 'sacvit' or 'deit'")
        if self.selection not in ("sac", "topalpha", "window"):
            bad(f"selection={self.selection!r}, expected 'sac', 'topalpha' or 'window'")
        if self.cluster_space not in ("raw", "log"):
            bad(f"cluster_space={self.cluster_space!r}, expected 'raw' or 'log'")
        if self.attention not in ("cluster", "full"):
            bad(f"attention={self.attention!r}, expected 'cluster' or 'full'")
        if self.coarse_resample not in ("avgpool", "bilinear_align_corners"):
            bad(f"coarse_resample={self.coarse_resample!r}, expected 'avgpool' or 'bilinear_align_corners'")
        if self.reuse_input not in ("pre_norm", "post_norm"):
            bad(f"reuse_input={self.reuse_input!r}, expected 'pre_norm' or 'post_norm'")
        if not 0.0 < self.window_keep <= 1.0:
            bad(f"window_keep={self.window_keep} must be in (0, 1]")

        if self.img_size % (2 * self.patch_size):
            bad(f"img_size={self.img_size} must be a multiple of 2*patch_size={2 * self.patch_size}")
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0 <= self.reuse_layer < self.depth:
            bad(f"reuse_layer={self.reuse_layer} must be in [0, depth-1={self.depth - 1}]")
        if not 1 <= self.k_min <= self.k_max <= self.num_coarse:
            bad(f"need 1 <= k_min ({self.k_min}) <= k_max ({self.k_max}) <= {self.num_coarse}")
        if not 0.0 < self.alpha <= 1.0:
            bad(f"alpha={self.alpha} must be in (0, 1]")
        if not 1 <= self.window <= self.coarse_grid:
            bad(f"window={self.window} must be in [1, {self.coarse_grid}]")
        if not 0.0 <= self.eta <= 1.0:
            bad(f"eta={self.eta} must be in [0, 1]")
        if not 0 <= self.gca_start_block < self.depth:
            bad(f"gca_start_block={self.gca_start_block} must be in [0, {self.depth - 1}]")

    # ---- derived geometry -------------------------------------------------------------
    @property
    def fine_grid(self) -> int:
        """Gf: fine tokens per side (full-resolution image)."""
        return self.img_size // self.patch_size

    @property
    def coarse_grid(self) -> int:
        """Gc: coarse tokens per side (image downsampled by 2)."""
        return self.fine_grid // 2

    @property
    def num_coarse(self) -> int:
        return self.coarse_grid**2

    @property
    def num_fine(self) -> int:
        return self.fine_grid**2

    def target_range(self) -> tuple[int, int]:
        """The target counts the selection rule can produce (the SAC engine's k range)."""
        if self.selection == "sac":
            return self.k_min, self.k_max
        if self.selection == "topalpha":
            k = math.ceil(self.alpha * self.num_coarse)
        else:
            k = math.ceil(self.window_keep * self.window**2)
        return k, k

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """From a saved dict (checkpoint, manifest). Every field must be there, except options
        the file predates: those get their LEGACY_VALUES, not today's defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields: {sorted(unknown)}")
        missing = sorted(known - set(data) - set(LEGACY_VALUES))
        if missing:
            raise ConfigError(f"model config lacks {missing}")
        return cls(**{**LEGACY_VALUES, **data})

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# The small presets keep the paper's 7x7 coarse / 14x14 fine token geometry at 112 px.
PRESETS: dict[str, ModelConfig] = {
    "deit_s_224": ModelConfig(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                              num_classes=1000, reuse_layer=6),
    "tiny_112": ModelConfig(img_size=112, patch_size=8, embed_dim=64, depth=6, num_heads=2),
    "small_112": ModelConfig(img_size=112, patch_size=8, embed_dim=128, depth=6, num_heads=4),
}

# Peer methods, expressed as option sets over the same model (for like-for-like comparison).
# "cf" and "lf" are what the official code computes (ChenMnZ/CF-ViT deit/models_deit.py
# CFVisionTransformer; edgeai1/LF-ViT LFVisionTransformer and utils.block_information), checked
# against the official CF-ViT and LF-ViT by tests/test_peer_golden.py. Differences that remain by design:
# the project has a separate EE head (the official models share one head; map it onto both),
# and a DeiT-S-depth model's GCA blocks 3..depth-1 equal the official 3..11 only at depth 12.
_OFFICIAL_PEER = dict(attention="full", reuse_layer=0, coarse_resample="bilinear_align_corners",
                      gca_start_block=3, gca_momentum=0.99, reuse_input="post_norm", reuse_hidden_ratio=4.0)
MODES: dict[str, dict[str, Any]] = {
    "sac": dict(selection="sac", attention="cluster"),
    "cf": dict(selection="topalpha", alpha=0.5, **_OFFICIAL_PEER),
    "lf": dict(selection="window", window=5, window_keep=0.88, **_OFFICIAL_PEER),
}
# Options that change parameter shapes: a training-free run of a peer mode on other weights keeps them.
SHAPE_OPTIONS = ("reuse_hidden_ratio",)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset with overrides, e.g. ``preset("tiny_112", arch="deit")``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def with_mode(config: ModelConfig, mode: str, keep_shapes: bool = False) -> ModelConfig:
    """The same model run as SAC-ViT ("sac"), CF-ViT ("cf") or LF-ViT ("lf").

    keep_shapes: keep the options that change parameter shapes (the reuse MLP's width), so that
        a trained model's weights still fit: the benchmark's training-free peer rows.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {sorted(MODES)}")
    changes = {k: v for k, v in MODES[mode].items() if not (keep_shapes and k in SHAPE_OPTIONS)}
    if changes.get("gca_start_block", 0) >= config.depth:
        changes["gca_start_block"] = config.depth - 1
    if changes.get("selection") == "window":
        changes["window"] = min(changes["window"], config.coarse_grid)
    return config.replace(**changes)
