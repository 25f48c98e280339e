"""How far a reduced-precision graph pair (fp16 graphs, int8 Q/DQ graphs) strays from fp32, on
a labelled source, through the deployment pipeline on ONNX Runtime (scripts/fp16_check.py)."""

from __future__ import annotations

import numpy as np

from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.clustering import select_targets
from sacvit_edge.tokens import build_sac_group, plan_sac_groups


def compare_precisions(directory, source, precision: str = "fp16", batch: int = 256, progress=None) -> dict:
    """Agreement of a reduced-precision graph pair with fp32 on ONNX Runtime (CPU), over a labelled
    source: top-1 agreement of the whole pipeline (at the fp32 eta and with no exit), the largest
    |logit difference| of the EE head and of the SAC head (the SAC head compared on the fp32 run's
    token selection, so the difference is the arithmetic's, not a different split's), and both
    accuracies."""
    ref = EdgeClassifier(directory, backend="onnxruntime")
    low = EdgeClassifier(directory, backend="onnxruntime", precision=precision, eta=ref.eta)
    cfg = ref.config
    n = same_eta = same_never = right_ref = right_low = 0
    ee_diff = sac_diff = 0.0
    for items, labels in source.items(batch):
        x = ref.preprocess(items)
        a, b = ref.run(x), low.run(x)
        same_eta += int((a.probs.argmax(1) == b.probs.argmax(1)).sum())
        right_ref += int((a.probs.argmax(1) == labels).sum())
        right_low += int((b.probs.argmax(1) == labels).sum())
        ea, eb = ref.backend.run_ee(x), low.backend.run_ee(x)
        ee_diff = max(ee_diff, float(np.abs(ea.logits - eb.logits).max()))
        split = select_targets(ea.gca, cfg)
        rows_all = np.arange(len(x))
        pred_a = np.empty(len(x), np.int64)
        pred_b = np.empty(len(x), np.int64)
        for group, _, _ in plan_sac_groups(split.counts, cfg.num_coarse):
            g = build_sac_group(split.order[group], split.counts[group])
            la, lb = ref.backend.run_sac(ea, rows_all[group], g), low.backend.run_sac(eb, rows_all[group], g)
            sac_diff = max(sac_diff, float(np.abs(la - lb).max()))
            pred_a[group], pred_b[group] = la.argmax(1), lb.argmax(1)
        same_never += int((pred_a == pred_b).sum())
        n += len(x)
        if progress is not None:
            progress(len(x))
    ref.close()
    low.close()
    return {"precision": precision, "images": n, "eta": ref.eta,
            "same_top1_at_eta": same_eta / n, "same_top1_never_exit": same_never / n,
            "max_abs_logit_diff_ee": ee_diff, "max_abs_logit_diff_sac": sac_diff,
            "top1_fp32": right_ref / n, f"top1_{precision}": right_low / n}
