"""SAC-ViT and its DeiT baseline, in one readable file.

Stages (see ../shared/SACVIT.md):
  forward_ee  -> EE logits, global class attention (GCA), the coarse features to reuse
  select      -> target / non-target split of the coarse tokens (host side, clustering.py)
  forward_sac -> SAC logits: target regions re-embedded as fine tokens, non-target tokens
                 reused from the EE stage, attention within each cluster (CLS in both).

Parameter names follow timm's VisionTransformer (patch_embed.proj, blocks.N.attn.qkv, ...),
so a timm/DeiT state_dict loads without timm (see load_deit_state_dict).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clustering import Split, all_targets, select_targets
from .config import ModelConfig
from .errors import CheckpointError
from .tokens import build_sac_group, crop_target_patches

log = logging.getLogger(__name__)

AttentionImpl = Literal["sdpa", "explicit", "onnx"]
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "explicit", "onnx")


@contextlib.contextmanager
def attention_impl(impl: AttentionImpl, module: nn.Module) -> Iterator[None]:
    """Compute `module`'s attention layers another way for the duration of the block (that
    module only: other models and threads are unaffected). Same numbers, different graphs:

      "sdpa"      F.scaled_dot_product_attention (training, the PyTorch backend; the default)
      "explicit"  MatMul / Softmax, which every ONNX Runtime and TensorRT version parses
                  identically (the opset-17 graphs) and which FLOP counting sees
      "onnx"      the standard ONNX Attention operator (opset 23) on (B, L, h*d) tensors: one
                  node per attention call, no head reshapes or transposes (export only; see
                  onnx_attention)
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r}: expected one of {ATTENTION_IMPLS}")
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    previous = [m.impl for m in layers]
    for m in layers:
        m.impl = impl
    try:
        yield
    finally:
        for m, was in zip(layers, previous):
            m.impl = was


def onnx_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, keep: torch.Tensor | None = None,
                   probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention as ONE standard ONNX Attention node (opset 23). q (B,Lq,h*d), k/v
    (B,Lk,h*d), keep (B,Lk) bool key mask or None -> (B,Lq,h*d); with probs, also the softmax
    probabilities (B,h,Lq,Lk) (the op's qk_matmul_output in mode 3), which the GCA readout takes
    its CLS row from instead of recomputing it. The mask is given with the query length spelled
    out: ONNX Runtime's kernel does not broadcast it over queries. In eager PyTorch this runs
    torch's reference implementation of the op; it exists for the exporter.
    """
    mask = None if keep is None else keep[:, None, None, :].expand(-1, 1, q.shape[1], -1)
    out, _, _, qk = torch.onnx.ops.attention(q, k, v, mask, q_num_heads=heads, kv_num_heads=heads,
                                             qk_matmul_output_mode=3 if probs else 0)
    return (out, qk) if probs else out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None,
           fused: bool = True) -> torch.Tensor:
    """Softmax attention. q (B,h,Lq,d), k/v (B,h,Lk,d), keep (B,Lk) bool key mask or None."""
    mask = None if keep is None else keep[:, None, None, :]  # (B,1,1,Lk)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B,h,Lq,Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> embed_dim, as a conv (timm layout)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.proj(img).flatten(2).transpose(1, 2)  # (B, N, D)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Embed already-cut patches (B, T, C*p*p) with the same weights as forward()."""
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, K) -> (B, K, D). Exports as GatherElements (ORT and TensorRT)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.impl: AttentionImpl = "sdpa"  # see attention_impl

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: (B, h, N, d) each, or (B, N, h*d) for the "onnx" impl (its op splits the heads)."""
        if self.impl == "onnx":
            q, k, v = self.qkv(x).chunk(3, -1)  # the (3, h, d) layout of timm's qkv weight
            return q, k, v
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        if self.impl == "onnx":
            return self.proj(o)
        b, h, n, d = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, h * d))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.impl == "onnx":
            return onnx_attention(q, k, v, self.num_heads, keep)  # type: ignore[return-value]
        return attend(q, k, v, keep, fused=self.impl == "sdpa")

    def _tokens(self, t: torch.Tensor, start: int, end: int | None = None) -> torch.Tensor:
        """Tokens start:end of q, k or v, whichever layout the impl uses."""
        return t[:, start:end] if self.impl == "onnx" else t[:, :, start:end]

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Full attention over all tokens (DeiT, CF-ViT / LF-ViT SAC stage)."""
        q, k, v = self._qkv(x)
        return self._out(self._attend(q, k, v, keep))

    def forward_with_cls_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full attention, plus CLS->patch attention averaged over heads, (B, N-1).

        The CLS row is recomputed explicitly (one query row, negligible) so that the fused
        kernel can still serve the whole map; the "onnx" impl reads it from the one Attention
        node's probabilities output instead.
        """
        q, k, v = self._qkv(x)
        if self.impl == "onnx":
            out, probs = onnx_attention(q, k, v, self.num_heads, probs=True)
            return self.proj(out), probs[:, :, 0, 1:].mean(1)
        cls_scores = (q[:, :, :1] * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B,h,1,N)
        cls_attn = cls_scores.softmax(-1)[:, :, 0, 1:].mean(1)  # (B, N-1)
        return self._out(self._attend(q, k, v, None)), cls_attn

    def forward_clusters(
        self,
        x: torch.Tensor,
        num_targets: int,
        keep: torch.Tensor | None = None,
        has_nontargets: bool = True,
    ) -> torch.Tensor:
        """SAC-ViT attention within each cluster, as separate attention calls.

        x is laid out as [CLS | targets (T) | non-targets (N)]. Targets attend to
        [CLS, targets], non-targets to [CLS, non-targets]; CLS belongs to both clusters
        and attends to every token ([choice]: the class decision sees the whole image).
        Cost: T(T+1) + N(N+1) + (T+N+1) ~ (T+1)^2 + (N+1)^2 instead of (T+N+1)^2.
        (One call with a block-diagonal mask computes the masked-out scores too; measured no
        faster, docs/latency.md.)

        Before the non-targets join (blocks below reuse_layer, or no non-targets at all), CLS and
        the targets attend to the same keys, [CLS, targets]: that is one full attention call,
        not two calls and a concatenation (the same numbers; five graph nodes fewer per block).

        Args:
            x: (B, 1+T+N, D).
            num_targets: T.
            keep: optional (B, 1+T+N) key mask (padding in mixed-count training batches).
            has_nontargets: whether x holds non-targets (N > 0), as the caller laid it out; the
                caller's bool rather than a shape test, so exported graphs do not depend on one.
        """
        if not has_nontargets:
            return self.forward(x, keep)
        q, k, v = self._qkv(x)
        tok, t_end = self._tokens, 1 + num_targets
        axis = 1 if self.impl == "onnx" else 2
        outs = [self._attend(tok(q, 0, 1), k, v, keep)]  # CLS -> everything
        outs.append(self._attend(tok(q, 1, t_end), tok(k, 0, t_end), tok(v, 0, t_end),
                                 None if keep is None else keep[:, :t_end]))
        if x.shape[1] > t_end:
            kn = torch.cat([tok(k, 0, 1), tok(k, t_end)], axis)
            vn = torch.cat([tok(v, 0, 1), tok(v, t_end)], axis)
            keep_n = None if keep is None else torch.cat([keep[:, :1], keep[:, t_end:]], 1)
            outs.append(self._attend(tok(q, t_end), kn, vn, keep_n))
        return self._out(torch.cat(outs, axis))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (DeiT), shared by both stages."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))

    def forward_with_cls_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, cls_attn = self.attn.forward_with_cls_attn(self.norm1(x))
        x = x + a
        return x + self.mlp(self.norm2(x)), cls_attn

    def forward_clusters(self, x: torch.Tensor, num_targets: int, keep: torch.Tensor | None = None,
                         has_nontargets: bool = True) -> torch.Tensor:
        x = x + self.attn.forward_clusters(self.norm1(x), num_targets, keep, has_nontargets)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Plain DeiT: full-resolution tokens, no stages. The baseline, and SAC-ViT's backbone."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_fine, d))  # fine grid
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_classes)

    def init_weights(self) -> "VisionTransformer":
        for p in (self.cls_token, self.pos_embed, *[p for n, p in self.named_parameters() if "pos_embed" in n]):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        return self

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img) + self.pos_embed[:, 1:]  # (B, Gf*Gf, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 0]))


@dataclass
class EEOutput:
    logits: torch.Tensor  # (B, classes)
    gca: torch.Tensor  # (B, n) global class attention of the coarse tokens
    final: torch.Tensor  # (B, n, D) coarse features after the last block (and the final norm when
    #                      cfg.reuse_input == "post_norm"): what the reuse MLP reads
    hidden: torch.Tensor  # (B, n, D) coarse features after `reuse_layer` blocks (non-targets)


@dataclass
class SACOutput:
    logits: torch.Tensor  # (B, classes) SAC logits
    ee_logits: torch.Tensor  # (B, classes)
    split: Split


class SACViT(VisionTransformer):
    """SAC-ViT: early-exit stage on coarse tokens, then semantic-aware clustered SAC stage."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d = cfg.embed_dim
        self.pos_embed_coarse = nn.Parameter(torch.zeros(1, 1 + cfg.num_coarse, d))
        self.ee_head = nn.Linear(d, cfg.num_classes)
        hidden = int(d * cfg.reuse_hidden_ratio)
        # Feature reuse (CF-ViT): LayerNorm + MLP on the EE feature, added to the 4 fine tokens.
        self.reuse = nn.Sequential(nn.LayerNorm(d, eps=1e-6), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        # Offsets of the 2x2 fine tokens inside one coarse cell, on the flattened fine grid.
        gf = cfg.fine_grid
        self.register_buffer("fine_offsets", torch.tensor([0, 1, gf, gf + 1]), persistent=False)
        # (n, 4): the fine-grid indices of every coarse cell's 2x2 fine tokens. The SAC stage gathers the
        # fine positional embedding through it by coarse index: in the graphs one Gather from a table
        # ONNX Runtime folds at load, instead of the floor-division arithmetic of fine_indices per call
        self.register_buffer("cell_fine_idx", self.fine_indices(torch.arange(cfg.num_coarse)[None]).reshape(-1, 4),
                             persistent=False)

    # ---- stage 1 ----------------------------------------------------------------------
    def downsample(self, img: torch.Tensor) -> torch.Tensor:
        """The EE stage's half-resolution image (cfg.coarse_resample).

        "avgpool": bilinear x0.5 with align_corners=False samples exactly the mean of each 2x2
        block, so it is written as avg_pool2d: identical numbers, a plain pooling op in every
        runtime. "bilinear_align_corners": what the official CF-ViT / LF-ViT scripts feed
        (F.interpolate(..., mode="bilinear", align_corners=True)); exports as an ONNX Resize.
        """
        if self.cfg.coarse_resample == "avgpool":
            return F.avg_pool2d(img, 2)
        h, w = img.shape[-2:]
        return F.interpolate(img, size=(h // 2, w // 2), mode="bilinear", align_corners=True)

    def forward_ee(self, img: torch.Tensor) -> EEOutput:
        """EE stage on the image downsampled by 2 (see downsample)."""
        cfg = self.cfg
        x = self.patch_embed(self.downsample(img)) + self.pos_embed_coarse[:, 1:]  # (B, n, D)
        cls = (self.cls_token + self.pos_embed_coarse[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)  # (B, 1+n, D)
        gca = torch.zeros_like(x[:, 1:, 0])
        hidden = x[:, 1:]
        for i, blk in enumerate(self.blocks):
            if i == cfg.reuse_layer:
                hidden = x[:, 1:]
            x, cls_attn = blk.forward_with_cls_attn(x)
            if i >= cfg.gca_start_block:
                gca = cfg.gca_momentum * gca + (1 - cfg.gca_momentum) * cls_attn
        if cfg.reuse_input == "post_norm":  # the official CF-ViT: reuse_block(norm(x))
            x = self.norm(x)
            logits = self.ee_head(x[:, 0])
        else:
            logits = self.ee_head(self.norm(x[:, 0]))
        return EEOutput(logits=logits, gca=gca, final=x[:, 1:], hidden=hidden)

    # ---- stage 2 ----------------------------------------------------------------------
    def fine_indices(self, target_idx: torch.Tensor) -> torch.Tensor:
        """Coarse indices (B, k) -> indices of their 2x2 fine tokens (B, 4k).

        Coarse token (i, j) covers pixels [2p*i, 2p*(i+1)) x [2p*j, 2p*(j+1)), i.e. fine
        tokens (2i+a, 2j+b), a, b in {0, 1}.
        """
        gc, gf = self.cfg.coarse_grid, self.cfg.fine_grid
        base = (target_idx // gc) * 2 * gf + (target_idx % gc) * 2  # (B, k)
        return (base.unsqueeze(-1) + self.fine_offsets).flatten(1)  # (B, 4k)

    def crop_targets(self, img: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Cut the target regions of the full-resolution image into fine patches (B, 4k, C*p*p)."""
        return crop_target_patches(img, target_idx, self.cfg.patch_size)

    def forward_sac(
        self,
        patches: torch.Tensor,
        target_idx: torch.Tensor,
        nontarget_idx: torch.Tensor,
        ee_final: torch.Tensor,
        ee_hidden: torch.Tensor,
        target_keep: torch.Tensor | None = None,
        nontarget_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SAC stage.

        Args:
            patches: (B, 4k, C*p*p) pixels of the target regions (crop_targets), cropped
                from the full-resolution normalised image.
            target_idx: (B, k) coarse indices of target tokens.
            nontarget_idx: (B, N) coarse indices of non-target tokens (N may be 0).
            ee_final: (B, n, D) EE features after the last block, normed or not per
                cfg.reuse_input (fed to the reuse MLP).
            ee_hidden: (B, n, D) EE features after `reuse_layer` blocks (reused non-targets).
            target_keep / nontarget_keep: optional (B, k) / (B, N) validity masks, for
                batches that pad images with different target counts to one shape (training,
                and the runtime's grouped SAC calls); padded tokens are masked out as keys.
        Returns:
            (B, classes) SAC logits.
        """
        cfg = self.cfg
        b, k = target_idx.shape
        # per target cell (B, k, 4, D), its 2x2 fine tokens in fine_indices' order: re-embedded pixels + fine
        # positions, + the reused EE feature of the cell broadcast to its four tokens
        pos = self.pos_embed[0, 1:][self.cell_fine_idx][target_idx]
        tgt = self.patch_embed.embed_patches(patches).unflatten(1, (k, 4)) + pos  # re-embed as fine tokens
        reused = self.reuse(gather_tokens(ee_final, target_idx))  # (B, k, D)
        tgt = (tgt + reused.unsqueeze(2)).flatten(1, 2)  # (B, 4k, D)
        non = gather_tokens(ee_hidden, nontarget_idx)  # (B, N, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)

        ones = torch.ones_like(target_idx[:, :1], dtype=torch.bool)  # (B, 1)
        keep = None
        if target_keep is not None:
            keep = torch.cat([ones, target_keep.unsqueeze(-1).expand(-1, -1, 4).reshape(b, 4 * k)], 1)
        x = torch.cat([cls, tgt], 1)  # (B, 1+T, D); non-targets join at `reuse_layer`
        joined = False
        for i, blk in enumerate(self.blocks):
            if i == cfg.reuse_layer and nontarget_idx.shape[1] > 0:
                x = torch.cat([x, non], 1)  # (B, 1+T+N, D)
                joined = True
                if keep is not None:
                    keep = torch.cat([keep, nontarget_keep if nontarget_keep is not None
                                      else torch.ones_like(nontarget_idx, dtype=torch.bool)], 1)
            if cfg.attention == "cluster":
                x = blk.forward_clusters(x, 4 * k, keep, has_nontargets=joined)
            else:
                x = blk(x, keep)
        return self.head(self.norm(x[:, 0]))

    # ---- both stages (training / reference) ---------------------------------------------
    def split_tokens(self, gca: torch.Tensor, clustering: bool = True) -> Split:
        """Host-side selection; index selection is not differentiable."""
        if not clustering:
            return all_targets(gca.shape[0], self.cfg.num_coarse)
        return select_targets(gca.detach().float().cpu().numpy(), self.cfg)

    def forward(self, img: torch.Tensor, clustering: bool = True) -> SACOutput:  # type: ignore[override]
        """Both stages on every image (training; SAC logits for all images).

        Images with different target counts share the batch: targets are padded to the
        batch's largest count and non-targets to its largest complement, with key masks.
        """
        ee = self.forward_ee(img)
        split = self.split_tokens(ee.gca, clustering)
        group = build_sac_group(split.order, split.counts)  # the runtime's builder: identical inputs
        dev = lambda a: torch.from_numpy(a).to(img.device)  # noqa: E731
        target_idx, nontarget_idx = dev(group.target_idx), dev(group.nontarget_idx)
        target_keep = dev(group.target_keep) if group.padded else None
        nontarget_keep = dev(group.nontarget_keep) if group.padded else None
        logits = self.forward_sac(self.crop_targets(img, target_idx), target_idx, nontarget_idx, ee.final, ee.hidden, target_keep, nontarget_keep)
        return SACOutput(logits=logits, ee_logits=ee.logits, split=split)


def build_model(cfg: ModelConfig) -> VisionTransformer:
    """The model named by cfg.arch, freshly initialised."""
    model = SACViT(cfg) if cfg.arch == "sacvit" else VisionTransformer(cfg)
    return model.init_weights()


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1+g*g, D) -> (1, 1+grid*grid, D): bilinear on the patch part, CLS kept."""
    cls, patch = pos[:, :1], pos[:, 1:]
    g = int(math.isqrt(patch.shape[1]))
    if g * g != patch.shape[1]:
        raise CheckpointError(f"pos_embed has {patch.shape[1]} patch positions, not a square grid")
    if g == grid:
        return pos.clone()
    d = patch.shape[-1]
    patch = patch.reshape(1, g, g, d).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True)
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], 1)


def load_deit_state_dict(model: VisionTransformer, state: dict[str, torch.Tensor]) -> list[str]:
    """Initialise a model from a timm/DeiT-style state_dict (e.g. for SAC-ViT fine-tuning).

    The fine positional embedding is resized to this model's fine grid and the coarse one
    derived from it; the SAC head and EE head both start from the DeiT head. A SAC-ViT
    state_dict (continued fine-tuning) keeps its own coarse embedding, EE head and reuse MLP.
    Keys that this model does not have (e.g. DeiT's distillation token/head) are skipped and
    returned.

    Raises:
        CheckpointError: a needed key is missing or a shape does not match.
    """
    cfg = model.cfg
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "pos_embed" not in state:
        raise CheckpointError("state_dict has no 'pos_embed': not a ViT/DeiT state_dict")
    pos = state["pos_embed"]
    if "dist_token" in state:  # distilled DeiT: position 1 belongs to the distillation token
        pos = torch.cat([pos[:, :1], pos[:, 2:]], 1)
    mapped = dict(state)
    mapped["pos_embed"] = resize_pos_embed(pos, cfg.fine_grid)
    if isinstance(model, SACViT):
        # a SAC-ViT state_dict (continued fine-tuning) brings its own learned coarse embedding
        # and EE head; a DeiT one gets both derived from its fine embedding and head
        coarse_source = state.get("pos_embed_coarse", pos)
        mapped["pos_embed_coarse"] = resize_pos_embed(coarse_source, cfg.coarse_grid)
        for name in ("weight", "bias"):
            if f"head.{name}" in state and f"ee_head.{name}" not in state:
                mapped[f"ee_head.{name}"] = state[f"head.{name}"]
    own = model.state_dict()
    skipped = sorted(set(mapped) - set(own))
    for key in skipped:
        mapped.pop(key)
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise CheckpointError(f"shape mismatch for {key!r}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    missing = model.load_state_dict(mapped, strict=False).missing_keys
    backbone_missing = [k for k in missing if not k.startswith(("reuse.", "ee_head.", "pos_embed_coarse"))]
    if backbone_missing:
        raise CheckpointError(f"state_dict lacks backbone weights: {backbone_missing[:5]}")
    if skipped:
        log.info("skipped %d keys not used by this model: %s", len(skipped), skipped[:5])
    return skipped
