"""sacvit-edge: deploy SAC-ViT classifiers on edge hardware.

    from sacvit_edge import EdgeClassifier
    clf = EdgeClassifier("model.pt")          # or an export directory
    pred = clf.predict("photo.jpg")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (BackendError, CheckpointError, ConfigError, DataError, ExportError, ImageError,
                     SacvitError)

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import EdgeClassifier, Prediction
    from .config import ModelConfig


def __getattr__(name: str) -> Any:
    # Lazy: `import sacvit_edge` stays light; torch loads only when the model is needed.
    if name in ("EdgeClassifier", "Prediction", "BatchResult"):
        from . import classifier

        return getattr(classifier, name)
    if name in ("ModelConfig", "preset"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'sacvit_edge' has no attribute {name!r}")


__all__ = ["EdgeClassifier", "Prediction", "ModelConfig", "SacvitError", "ConfigError", "CheckpointError",
           "DataError", "ImageError", "ExportError", "BackendError", "__version__"]
