"""The project's exception hierarchy: every error a user can trigger is a SacvitError."""

from __future__ import annotations


class SacvitError(Exception):
    """Base class of every error sacvit-edge raises on purpose."""


class ConfigError(SacvitError, ValueError):
    """A model, export or runtime option has a value that cannot work."""


class CheckpointError(SacvitError):
    """A file is not a usable sacvit-edge checkpoint (truncated, wrong keys, newer format...)."""


class DataError(SacvitError):
    """A dataset is missing or malformed."""


class ImageError(SacvitError, ValueError):
    """An input image cannot be read or has an unusable shape, dtype or channel count."""


class ExportError(SacvitError):
    """Export of a checkpoint to engines failed, or an export directory is unusable."""


class BackendError(SacvitError):
    """A runtime backend is unavailable (missing library or GPU) or its engines do not match."""


class EngineBuildError(ExportError):
    """TensorRT could not parse the ONNX graphs or build an engine from them."""


class OutputError(SacvitError):
    """An output path (an overlay folder, a JSON report, a checkpoint) cannot be written, or
    writing there would replace a file sacvit-edge did not write."""


class ServeError(BackendError):
    """The Triton server cannot start, did not become ready, or stopped unexpectedly."""
