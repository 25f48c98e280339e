"""One manifest schema: manifest.manifest_content writes what parse_manifest reads (format 4, each
value stored once), and export directories of format 3 (the bundled one, users' own) still load
and answer the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sacvit_edge import EdgeClassifier
from sacvit_edge.manifest import (MANIFEST_VERSION, CostTable, content_digest, manifest_content, parse_manifest,
                                  read_manifest)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sacvit_edge" / "assets" / "sacvit_tiny_112"
# the shipped checkpoint as the exporter of format 3 wrote it (the bundled export until it was re-made
# with the attention graphs): what users' older export directories look like
FORMAT3 = REPO / "tests" / "fixtures" / "format3_export"
FORMAT3_SOURCE = REPO / "checkpoints" / "manual_recipe" / "sacvit_tiny_112.pt"  # what the fixture was exported from
SAMPLES = sorted((REPO / "sacvit_edge" / "assets" / "samples").glob("*.png"))


def test_the_writer_and_the_reader_are_one_schema(tmp_path):
    config = read_manifest(BUNDLED).config.replace(k_min=5, k_max=20, eta=0.6)
    cost = CostTable(ee=0.01, sac={k: 0.001 * k for k in range(5, 21)}, full=0.09)
    data = manifest_content(fingerprint="f" * 64, class_names=[f"c{i}" for i in range(10)], mean=(0.1, 0.2, 0.3),
                            std=(0.4, 0.5, 0.6), config=config, batch_max=8, cost=cost, opset=17,
                            exporter="torchscript", versions={"torch": "x"})
    data["files"] = {"ee.onnx": "0" * 64, "sac.onnx": "1" * 64}
    m = parse_manifest(json.loads(json.dumps(data)), tmp_path)
    assert m.config == config and m.eta == 0.6 and m.k_range == (5, 20) and m.batch_range == (1, 8)
    assert m.size == config.img_size and m.mean == (0.1, 0.2, 0.3) and m.std == (0.4, 0.5, 0.6)
    assert m.cost == cost and m.class_names == [f"c{i}" for i in range(10)] and m.opset == 17
    assert m.engines["sac"].inputs[0] == "target_patches" and m.engines["ee"].outputs[0] == "ee_logits"
    assert m.content_sha256 == content_digest(data)
    flat = json.dumps(data)  # stored once: eta in model_config only; no size, k range, batch range or tensor list
    assert flat.count('"eta"') == 1 and flat.count('"img_size"') == 1 and flat.count('"k_min"') == 1
    for derived in ('"size"', '"k_range"', '"batch_range"', '"inputs"', '"outputs"', '"clustering"', '"shapes"'):
        assert derived not in flat, derived


def test_a_format_3_and_a_format_4_directory_load_and_answer_alike(tmp_path):
    """The format-3 fixture was exported from the pair shipped until stop 32; a fresh export of that
    checkpoint in today's format must describe and answer the same."""
    from sacvit_edge.export.bundle import export_checkpoint

    old = json.loads((FORMAT3 / "manifest.json").read_text())
    assert old["format_version"] == 3
    fresh = export_checkpoint(FORMAT3_SOURCE, tmp_path / "v4", include_checkpoint=False)
    assert json.loads((fresh.directory / "manifest.json").read_text())["format_version"] == MANIFEST_VERSION == 4
    a, b = read_manifest(FORMAT3), fresh
    assert (a.config, a.eta, a.k_range, a.batch_range, a.size, a.mean, a.std, a.class_names) == \
           (b.config, b.eta, b.k_range, b.batch_range, b.size, b.mean, b.std, b.class_names)
    assert a.engines == b.engines and a.cost == b.cost
    pa = EdgeClassifier(FORMAT3, backend="onnxruntime").predict_batch(SAMPLES)
    pb = EdgeClassifier(fresh.directory, backend="onnxruntime").predict_batch(SAMPLES)
    assert [(p.class_id, p.exited_early, p.num_target_tokens) for p in pa] == \
           [(p.class_id, p.exited_early, p.num_target_tokens) for p in pb]
    assert np.allclose([p.confidence for p in pa], [p.confidence for p in pb], atol=1e-5)
