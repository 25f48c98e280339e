"""The OpenVINO backend: parity with ONNX Runtime and PyTorch, identity checks."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.errors import BackendError
from sacvit_edge.gate import NEVER_EXIT
from sacvit_edge.manifest import read_manifest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino is not installed (pip install 'sacvit-edge[openvino]')")


def test_openvino_matches_onnxruntime_and_pytorch(shipped_export):
    from sacvit_edge.data import fashion_split

    # real canvases: on random noise the GCA is flat and a 1e-6 difference may move the 2-means split
    images = list(fashion_split("test", limit=16).render(np.arange(16)).permute(0, 2, 3, 1).numpy())
    runs = {}
    for backend in ("openvino", "onnxruntime", "pytorch"):
        clf = EdgeClassifier(shipped_export, backend=backend)
        x = clf.preprocess(images)
        runs[backend] = (clf.run(x, eta=NEVER_EXIT), clf.run(x[:1], eta=NEVER_EXIT))
    ov, ort_, pt = runs["openvino"], runs["onnxruntime"], runs["pytorch"]
    for other in (ort_, pt):
        for a, b in zip(ov, other):
            assert np.array_equal(a.counts, b.counts)  # same split: the EE outputs agree closely enough
            assert np.abs(a.ee_probs - b.ee_probs).max() <= 1e-4
            assert np.abs(a.probs - b.probs).max() <= 1e-4


def test_openvino_refuses_engines_of_another_export(shipped_export):
    from sacvit_edge.runtimes.openvino import OpenVinoBackend

    manifest = read_manifest(shipped_export)
    backend = OpenVinoBackend.from_manifest(manifest)
    assert OpenVinoBackend.metadata(backend.models["ee"])["sacvit_edge.checkpoint_fingerprint"] == manifest.fingerprint
    other = dataclasses.replace(manifest, checkpoint_fingerprint="0" * 64)
    with pytest.raises(BackendError, match="another checkpoint"):
        OpenVinoBackend.from_manifest(other)


def test_openvino_is_thread_safe(shipped_export):
    from concurrent.futures import ThreadPoolExecutor

    clf = EdgeClassifier(shipped_export, backend="openvino")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(12)]
    alone = [clf.predict(im, eta=NEVER_EXIT).class_id for im in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda im: clf.predict(im, eta=NEVER_EXIT).class_id, images))
    assert together == alone
