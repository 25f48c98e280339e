"""sacvit-edge: deploy SAC-ViT classifiers on edge hardware.

    from sacvit_edge import EdgeClassifier
    clf = EdgeClassifier("exports/model")     # an export directory (or a model.pt, with [export])
    pred = clf.predict("photo.jpg")

The deployment path (EdgeClassifier, the manifest, the ONNX Runtime backend) needs only the
core install; export, training and the benchmark are extras (see sacvit_edge.extras).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (BackendError, CheckpointError, ConfigError, DataError, ExportError, ImageError,
                     SacvitError)
from .extras import MissingExtraError
from .gate import NEVER_EXIT

from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import EdgeClassifier, Prediction
    from .config import ModelConfig


def __getattr__(name: str) -> Any:
    # Lazy: `import sacvit_edge` stays light; torch loads only when the model is needed.
    if name in ("EdgeClassifier", "Prediction", "BatchResult", "ImposedDecisions"):
        from . import classifier

        return getattr(classifier, name)
    if name == "draw_prediction":
        from .images import draw_prediction

        return draw_prediction
    if name in ("ModelConfig", "preset"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'sacvit_edge' has no attribute {name!r}")


__all__ = ["EdgeClassifier", "Prediction", "draw_prediction", "BatchResult", "ImposedDecisions", "ModelConfig", "NEVER_EXIT",
           "SacvitError", "ConfigError", "CheckpointError", "DataError", "ImageError", "ExportError", "BackendError",
           "MissingExtraError", "__version__"]
