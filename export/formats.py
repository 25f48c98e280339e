"""The export formats and what each accepts (after Ultralytics' export formats table).

One row per format: the precisions it can produce and the options it takes. An option a format
does not take is rejected with a message naming the format and its options, never silently
dropped or rewritten. Torch-free (the CLI checks options before any loading).
"""

from __future__ import annotations

from dataclasses import dataclass

from sacvit_edge.errors import ConfigError


@dataclass(frozen=True)
class ExportFormat:
    name: str
    files: str
    runs_on: str
    precisions: tuple[str, ...]
    options: tuple[str, ...]  # CLI option names (without --) this format takes
    needs: str


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("onnx", "ee.onnx, sac.onnx (+ ee.fp16.onnx, sac.fp16.onnx)", "ONNX Runtime, OpenVINO (any CPU)",
                 ("fp32", "fp16"), ("precision", "batch-max", "k-min", "k-max", "opset", "exporter"),
                 "[export] to export; the core install runs it"),
    ExportFormat("engine", "the ONNX files + {ee,crop,sac}.<precision>.<key>.engine", "TensorRT (Jetson, NVIDIA GPUs)",
                 ("fp32", "fp16", "int8"),
                 ("precision", "batch-max", "k-min", "k-max", "opset", "exporter", "workspace", "batch-opt", "fp16-mode"),
                 "[tensorrt] (or JetPack's TensorRT), cuda-python, an NVIDIA GPU"),
)
# build-engine DIR: the export (batch range, k range, opset) is fixed; only the build varies
BUILD_OPTIONS = ("precision", "workspace", "batch-opt", "fp16-mode")
INT8_HOW = ("int8 graphs need calibration data: export, then `sacvit-edge calibrate DIR --int8`, then "
            "`sacvit-edge build-engine DIR --precision int8`")


def get_format(name: str) -> ExportFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ConfigError(f"--format {name!r}: choose one of {[f.name for f in FORMATS]}")


def check_export_options(fmt: ExportFormat, precision: str, given: dict[str, object], command: str = "export") -> None:
    """Raise ConfigError for an option `fmt` does not take (given: option name -> value, None = not given)
    or a precision it cannot produce."""
    allowed = fmt.options if command == "export" else tuple(o for o in fmt.options if o in BUILD_OPTIONS)
    extra = sorted(name for name, value in given.items() if value is not None and name not in allowed)
    if extra:
        opts = ", ".join(f"--{o}" for o in extra)
        raise ConfigError(f"{command} --format {fmt.name} does not take {opts} (it takes "
                          f"{', '.join('--' + o for o in allowed)})")
    if precision not in fmt.precisions:
        hint = f"; {INT8_HOW}" if precision == "int8" else ""
        raise ConfigError(f"{command} --format {fmt.name} --precision {precision!r}: this format makes "
                          f"{list(fmt.precisions)}{hint}")
