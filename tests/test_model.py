import numpy as np
import pytest
import torch

from sacvit_edge.config import preset, with_mode
from sacvit_edge.errors import CheckpointError, ConfigError
from sacvit_edge.flops import CostModel, deit_gflops
from sacvit_edge.model import (SACViT, VisionTransformer, build_model, attention_impl,
                               load_deit_state_dict)


def masked_full_attention(attn, x, num_targets):
    """Independent reference: one full attention with the SAC cluster mask.

    token kinds: 0 = CLS, 1 = target, 2 = non-target. i may attend to j iff
    i is CLS, or j is CLS, or both are in the same cluster.
    """
    b, L, c = x.shape
    h = attn.num_heads
    kind = torch.tensor([0] + [1] * num_targets + [2] * (L - 1 - num_targets))
    allowed = (kind[:, None] == 0) | (kind[None, :] == 0) | (kind[:, None] == kind[None, :])
    qkv = attn.qkv(x).reshape(b, L, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = (q @ k.transpose(-2, -1)) / (c // h) ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, L, c)
    return attn.proj(o)


@pytest.mark.parametrize("impl", ["sdpa", "explicit", "onnx"])
def test_cluster_attention_equals_masked_full_attention(impl):
    torch.manual_seed(0)
    model = build_model(preset("tiny_112"))
    attn = model.blocks[0].attn
    x = torch.randn(3, 1 + 4 * 7 + 42, 64)
    with attention_impl(impl, attn):
        got = attn.forward_clusters(x, 4 * 7)
    ref = masked_full_attention(attn, x, 4 * 7)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # ... and differs from unrestricted attention (the test would catch a no-op "clustering")
    assert (attn(x) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["explicit", "onnx"])
def test_attention_impls_compute_the_same(impl):
    """Each way of writing attention (the exported graphs use "explicit" at opset 17 and "onnx",
    the ONNX Attention operator, at opset 23) equals the SDPA the model trains with: full
    attention, the GCA readout's CLS row, and the cluster attention with padding masks."""
    torch.manual_seed(0)
    model = build_model(preset("tiny_112"))
    attn = model.blocks[0].attn
    x = torch.randn(3, 1 + 4 * 6 + 40, 64)
    keep = torch.ones(3, x.shape[1], dtype=torch.bool)
    keep[0, 20:25] = False  # padded targets of image 0
    keep[2, -3:] = False  # padded non-targets of image 2
    ref_full, ref_cls = attn.forward_with_cls_attn(x)
    ref_clusters = attn.forward_clusters(x, 24, keep)
    with attention_impl(impl, attn):
        full, cls = attn.forward_with_cls_attn(x)
        clusters = attn.forward_clusters(x, 24, keep)
        assert attn.impl == impl
    assert attn.impl == "sdpa"  # restored
    for got, ref in ((full, ref_full), (cls, ref_cls), (clusters, ref_clusters)):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (ref_clusters - attn.forward_clusters(x, 24)).abs().max() > 1e-3  # the mask mattered
    with pytest.raises(ValueError, match="attention impl"):
        with attention_impl("fast", attn):
            pass


def test_cluster_attention_costs_fewer_flops():
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(preset("tiny_112"))
    attn = model.blocks[0].attn
    x = torch.randn(1, 1 + 40 + 39, 64)

    def count(fn):
        with attention_impl("explicit", attn), FlopCounterMode(display=False) as c:
            fn()
        return c.get_total_flops()

    clustered, full = count(lambda: attn.forward_clusters(x, 40)), count(lambda: attn(x))
    t, n, d = 40, 39, 64
    # attention matmuls: 2 * (QK^T + AV) flops, per cluster vs over everything
    expected_saving = 2 * 2 * d * ((t + n + 1) ** 2 - (t * (t + 1) + n * (n + 1) + (t + n + 1)))
    assert full - clustered == expected_saving
    assert clustered < full


def test_padded_batch_equals_per_image():
    """Mixed target counts in one (padded) batch give the same logits as one image at a time."""
    torch.manual_seed(0)
    cfg = preset("tiny_112", embed_dim=32, depth=3, reuse_layer=1, gca_start_block=0)
    model = build_model(cfg).eval()
    img = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        out = model(img)
        ee = model.forward_ee(img)
        counts = out.split.counts.tolist()
        assert len(set(counts)) > 1, f"the batch must mix target counts for padding to be exercised: {counts}"
        for b in range(4):
            k = int(out.split.counts[b])
            order = torch.from_numpy(out.split.order[b:b + 1])
            single = model.forward_sac(model.crop_targets(img[b:b + 1], order[:, :k]), order[:, :k], order[:, k:], ee.final[b:b + 1], ee.hidden[b:b + 1])
            torch.testing.assert_close(out.logits[b:b + 1], single, atol=1e-5, rtol=1e-5)


def test_padding_path_with_forced_different_counts():
    torch.manual_seed(1)
    cfg = preset("tiny_112", embed_dim=32, depth=3, reuse_layer=1, gca_start_block=0)
    model = build_model(cfg).eval()
    img = torch.randn(3, 3, 112, 112)
    order = torch.stack([torch.randperm(49) for _ in range(3)])
    counts = torch.tensor([4, 11, 25])
    pos = torch.arange(49)
    with torch.no_grad():
        ee = model.forward_ee(img)
        padded = model.forward_sac(model.crop_targets(img, order[:, :25]), order[:, :25], order[:, 4:], ee.final, ee.hidden,
                                   pos[None, :25] < counts[:, None], pos[None, 4:] >= counts[:, None])
        for b in range(3):
            k = int(counts[b])
            t = order[b:b + 1, :k]
            single = model.forward_sac(model.crop_targets(img[b:b + 1], t), t, order[b:b + 1, k:], ee.final[b:b + 1], ee.hidden[b:b + 1])
            torch.testing.assert_close(padded[b:b + 1], single, atol=1e-5, rtol=1e-5)


def test_cf_mode_token_layout():
    """CF-ViT mode: 25 targets -> 100 fine tokens, 24 reused layer-0 tokens, full attention."""
    cfg = with_mode(preset("tiny_112"), "cf")
    assert (cfg.selection, cfg.attention, cfg.reuse_layer) == ("topalpha", "full", 0)
    model = build_model(cfg).eval()
    lengths = []
    hook = model.blocks[0].norm1.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    hook.remove()
    assert (out.split.counts == 25).all()
    # block 0 runs on the EE stage (1 + 49) and then on the SAC stage: 1 + 4*25 + 24
    assert lengths == [1 + 49, 1 + 100 + 24]


def test_reuse_layer_joins_nontargets_late():
    cfg = preset("tiny_112", reuse_layer=3)
    model = build_model(cfg).eval()
    lengths = []
    hooks = [b.norm1.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1])) for b in model.blocks]
    order = torch.arange(49)[None]
    with torch.no_grad():
        ee = model.forward_ee(torch.zeros(1, 3, 112, 112))
        lengths.clear()
        model.forward_sac(torch.zeros(1, 40, 192), order[:, :10], order[:, 10:], ee.final, ee.hidden)
    for h in hooks:
        h.remove()
    assert lengths == [41, 41, 41, 80, 80, 80]


def test_fine_indices_cover_the_coarse_cell():
    model = build_model(preset("tiny_112"))
    idx = model.fine_indices(torch.tensor([[0, 8, 48]]))  # (0,0), (1,1), (6,6) on the 7x7 grid
    assert idx.tolist() == [[0, 1, 14, 15, 30, 31, 44, 45, 180, 181, 194, 195]]


def test_flops_ordering_and_deit_s_geometry():
    cost = CostModel(build_model(preset("tiny_112")))
    assert cost.sac(4) < cost.sac(25) < cost.full and cost.ee < cost.full / 4
    assert cost.expected([True, True], [0, 0]) == pytest.approx(cost.ee)
    assert cost.expected([False, True], [10, 0]) == pytest.approx(cost.ee + cost.sac(10) / 2)
    deit_s = build_model(preset("deit_s_224", arch="deit"))
    assert deit_gflops(deit_s) == pytest.approx(4.6, abs=0.05)  # DeiT-S: 4.6 GFLOPs


def test_load_timm_style_state_dict():
    torch.manual_seed(0)
    deit = build_model(preset("tiny_112", arch="deit"))
    state = {k: v.clone() for k, v in deit.state_dict().items()}
    state["dist_token"] = torch.zeros(1, 1, 64)  # a distilled-DeiT key: must be skipped
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], torch.zeros(1, 1, 64), state["pos_embed"][:, 1:]], 1)
    sac = build_model(preset("tiny_112"))
    skipped = load_deit_state_dict(sac, state)
    assert skipped == ["dist_token"]
    torch.testing.assert_close(sac.blocks[2].attn.qkv.weight, deit.blocks[2].attn.qkv.weight)
    torch.testing.assert_close(sac.pos_embed, deit.pos_embed)
    torch.testing.assert_close(sac.ee_head.weight, deit.head.weight)
    assert sac.pos_embed_coarse.shape == (1, 50, 64)
    img = torch.randn(2, 3, 112, 112)
    with torch.no_grad():  # SAC with every token a target at full resolution == DeiT? not exactly
        assert torch.isfinite(sac(img, clustering=False).logits).all()


def test_continuing_from_a_sacvit_state_keeps_every_weight():
    """--init with a SAC-ViT checkpoint (continued fine-tuning) must not re-derive the learned
    coarse positional embedding or EE head from the fine ones."""
    torch.manual_seed(0)
    trained = build_model(preset("tiny_112"))
    with torch.no_grad():
        trained.pos_embed_coarse.normal_()
        trained.ee_head.weight.normal_()
    fresh = build_model(preset("tiny_112"))
    assert load_deit_state_dict(fresh, trained.state_dict()) == []
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_load_rejects_wrong_shapes():
    deit = build_model(preset("small_112", arch="deit"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_deit_state_dict(build_model(preset("tiny_112")), deit.state_dict())
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_deit_state_dict(build_model(preset("tiny_112")), {"foo": torch.zeros(1)})


@pytest.mark.parametrize("bad", [dict(k_min=0), dict(k_min=30, k_max=20), dict(selection="kmeans"),
                                 dict(reuse_layer=6), dict(img_size=100), dict(embed_dim=65), dict(eta=1.5)])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        preset("tiny_112", **bad)


def test_deit_baseline_is_the_same_blocks():
    deit, sac = build_model(preset("tiny_112", arch="deit")), build_model(preset("tiny_112"))
    assert type(deit) is VisionTransformer and isinstance(sac, SACViT)
    deit_keys = set(deit.state_dict())
    assert deit_keys < set(sac.state_dict())
    assert set(sac.state_dict()) - deit_keys == {"pos_embed_coarse", "ee_head.weight", "ee_head.bias",
                                                 *{k for k in sac.state_dict() if k.startswith("reuse.")}}


def test_crop_equals_patchify_then_gather_numpy_and_torch():
    from sacvit_edge.tokens import crop_target_patches

    model = build_model(preset("tiny_112"))
    img = torch.randn(3, 3, 112, 112)
    target = torch.stack([torch.randperm(49)[:9] for _ in range(3)])
    # reference: cut the whole image into 8x8 patches (row-major, (C, p, p) inside), gather fine tokens
    b = img.shape[0]
    allp = img.reshape(b, 3, 14, 8, 14, 8).permute(0, 2, 4, 1, 3, 5).reshape(b, 196, 192)
    ref = torch.gather(allp, 1, model.fine_indices(target).unsqueeze(-1).expand(-1, -1, 192))
    torch.testing.assert_close(crop_target_patches(img, target, 8), ref, rtol=0, atol=0)
    np.testing.assert_array_equal(crop_target_patches(img.numpy(), target.numpy(), 8), ref.numpy())
    # and the conv patch embedding of the whole image agrees with re-embedding the crops
    emb = model.patch_embed(img)
    emb_ref = torch.gather(emb, 1, model.fine_indices(target).unsqueeze(-1).expand(-1, -1, 64))
    torch.testing.assert_close(model.patch_embed.embed_patches(ref), emb_ref, atol=1e-5, rtol=1e-5)


def brute_force_groups(values, mult, n, overhead):
    """Best cost over all partitions of the sorted distinct counts into contiguous groups."""
    import itertools

    u = len(values)
    best = float("inf")
    for cuts in itertools.product([0, 1], repeat=u - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [u]
        cost = 0.0
        for a, b in zip(bounds, bounds[1:]):
            cost += overhead + sum(mult[a:b]) * (1 + 4 * values[b - 1] + n - values[a])
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_sac_groups_are_optimal_and_cover_every_image(seed):
    from sacvit_edge.tokens import plan_sac_groups

    rng = np.random.default_rng(seed)
    counts = rng.integers(4, 26, size=rng.integers(1, 30))
    groups = plan_sac_groups(counts, 49, overhead_tokens=64)
    rows = np.sort(np.concatenate([g for g, _, _ in groups]))
    assert rows.tolist() == list(range(len(counts)))  # every image exactly once
    cost = 0.0
    for g, lo, hi in groups:
        assert counts[g].min() == lo and counts[g].max() == hi
        cost += 64 + len(g) * (1 + 4 * hi + 49 - lo)
    values, mult = np.unique(counts, return_counts=True)
    assert cost == pytest.approx(brute_force_groups(values, mult, 49, 64))
    # no overhead: one call per distinct count (no padding); huge overhead: a single call
    assert len(plan_sac_groups(counts, 49, 0)) == len(values)
    assert len(plan_sac_groups(counts, 49, 1e9)) == 1
