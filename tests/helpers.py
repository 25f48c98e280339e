"""Helpers shared by tests (not part of the SDK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def op_histogram(path: Path) -> dict[str, int]:
    """Node counts of an ONNX graph by op type."""
    import onnx

    ops: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(sorted(ops.items()))


def random_split(cfg, batch: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random target/non-target split with k targets per image (parity tests)."""
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(cfg.num_coarse) for _ in range(batch)]).astype(np.int64)
    return order[:, :k], order[:, k:]


def torch_early_exit(model, x, eta: float, per_image: bool = False) -> dict[str, np.ndarray]:
    """Independent PyTorch reference of the early-exit model: EE softmax, exit where its max
    reaches eta, else the SAC head of the model's own forward (training path, clustering on).

    per_image: run every image alone (no grouping, no padding) instead of one padded batch.
    """
    import torch

    with torch.no_grad():
        if per_image:
            outs = [model(x[i:i + 1], clustering=True) for i in range(len(x))]
            ee_logits = torch.cat([o.ee_logits for o in outs])
            sac_logits = torch.cat([o.logits for o in outs])
            counts = np.concatenate([o.split.counts for o in outs])
        else:
            out = model(x, clustering=True)
            ee_logits, sac_logits, counts = out.ee_logits, out.logits, np.asarray(out.split.counts)
    ee = ee_logits.softmax(-1).numpy()
    exited = ee.max(1) >= eta  # written out here on purpose: the oracle does not share the SDK's gate
    probs = np.where(exited[:, None], ee, sac_logits.softmax(-1).numpy())
    return {"probs": probs, "exited": exited, "counts": np.where(exited, 0, counts)}
