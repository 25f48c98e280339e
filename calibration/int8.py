"""INT8 engines: static Q/DQ quantisation of both graphs with ONNX Runtime's quantiser.

Per graph: ONNX Runtime's pre-processing step (shape inference and graph optimisation), then
`quantize_static` in QDQ format (the explicit-quantisation form TensorRT 10/11 also build
from), per-channel int8 weights, uint8 activations with MinMax ranges from a rewindable
CalibrationDataReader: the calibration images for the EE graph, and the SAC stage's real
inputs for the SAC graph, recorded while the fp32 classifier ran on those images (a
recording wrapper around its backend; the orchestrator is unchanged). The exported
fp32 graphs are never replaced: the int8 graphs are a precision variant beside them, with the
same embedded fingerprint and manifest digest. Needs the [export] extra (onnx).

Operators kept in fp32 (QUANTIZED_OPS lists what is quantised): everything but the matrix
products. LayerNorm, Softmax, GELU, the residual Adds and the gathers/concats of the token
bookkeeping stay fp32; quantising them as well was measured to cost accuracy for no speed
(see the INT8 section of BENCHMARKS.md). `exclude_heads` also keeps the two classifier heads
in fp32: the exit decision reads the EE head's confidence.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sacvit_edge.errors import ExportError
from sacvit_edge.export.graphs import head_nodes
from sacvit_edge.extras import require_extra
from sacvit_edge.runtimes.base import host_sac_feeds

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
INT8_SUFFIX = ".int8.onnx"


class ListReader:
    """ONNX Runtime CalibrationDataReader over a list of input feeds; rewindable (the
    quantiser may read the data more than once)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        if not feeds:
            raise ExportError("INT8 calibration needs at least one input batch")
        self.feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


class RecordingBackend:
    """A backend wrapper that records the SAC engine's inputs (up to `limit` calls) and
    otherwise delegates: the SAC graph's calibration data are the inputs it really gets."""

    def __init__(self, inner, limit: int = 64) -> None:
        self.inner, self.limit = inner, limit
        self.sac_feeds: list[dict[str, np.ndarray]] = []
        self.name = inner.name

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def run_ee(self, image):
        return self.inner.run_ee(image)

    def run_sac(self, ee, rows, group):
        feeds = host_sac_feeds(ee, rows, group)  # the inner backend is a host one (ONNX Runtime)
        if len(self.sac_feeds) < self.limit:
            self.sac_feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run_sac_feeds(feeds)

    def release(self, ee) -> None:
        self.inner.release(ee)


_PRE_PROCESS = """
import sys
from onnxruntime.quantization.shape_inference import quant_pre_process
try:
    quant_pre_process(sys.argv[1], sys.argv[2], skip_symbolic_shape=False)
except Exception as exc:  # symbolic shape inference gives up on some dynamic graphs
    print(f"symbolic shape inference failed ({exc}); pre-processing without it", file=sys.stderr)
    quant_pre_process(sys.argv[1], sys.argv[2], skip_symbolic_shape=True)
"""


def _pre_process(src: Path, dst: Path, work: Path) -> None:
    """ONNX Runtime's quantisation pre-processing, in a child process whose working directory is
    `work`: when its symbolic shape inference fails it writes sym_shape_infer_temp.onnx and a
    UUID-named .data file into the working directory, and changing this process's directory
    would break every other thread's relative paths."""
    proc = subprocess.run([sys.executable, "-c", _PRE_PROCESS, str(src.resolve()), str(dst.resolve())], cwd=work,
                          capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if "symbolic shape inference failed" in line:
            log.info("%s: %s", src.name, line)
    if proc.returncode != 0 or not dst.is_file():
        raise ExportError(f"{src}: ONNX Runtime's quantisation pre-processing failed: {proc.stderr.strip()[-800:]}")


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], exclude_heads: bool = True,
                   extra_exclude: tuple[str, ...] = (), op_types: tuple[str, ...] | None = QUANTIZED_OPS) -> list[str]:
    """Quantise one ONNX graph to Q/DQ int8 at `dst`, keeping its metadata; returns the nodes
    kept in fp32 by name (the heads, where asked). op_types=None quantises every operator
    type ONNX Runtime's quantiser supports (the ablation in scripts/int8_report.py)."""
    require_extra("export", "INT8 quantisation (onnx)")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        _pre_process(src, pre, Path(work))
        model = onnx.load(str(pre))
        exclude = [*(head_nodes(model) if exclude_heads else []), *extra_exclude]
        quantize_static(str(pre), str(dst), ListReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=None if op_types is None else list(op_types), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    # the exported graph's identity (fingerprint, manifest digest, stage) travels with it
    source_meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    out = onnx.load(str(dst))
    del out.metadata_props[:]
    for key, value in source_meta.items():
        out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key="sacvit_edge.precision", value="int8")
    onnx.save(out, str(dst))
    return exclude


def ee_feeds(images: np.ndarray, batch: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"image": np.ascontiguousarray(images[i:i + batch])} for i in range(0, len(images), batch)]


def make_int8_engines(ee_path: Path, sac_path: Path, out_dir: Path, images: np.ndarray,
                      sac_feeds: list[dict[str, np.ndarray]], exclude_heads: bool = True,
                      on_step: Callable[[str], None] | None = None) -> dict[str, object]:
    """ee.int8.onnx and sac.int8.onnx in out_dir from the fp32 graphs and calibration inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, object] = {}
    for stage, src, feeds in (("ee", ee_path, ee_feeds(images)), ("sac", sac_path, sac_feeds)):
        if on_step:
            on_step(f"quantising the {stage} graph ({len(feeds)} calibration batches)")
        dst = out_dir / f"{stage}{INT8_SUFFIX}"
        kept = quantize_graph(src, dst, feeds, exclude_heads)
        files[stage] = dst
        files[f"{stage}_fp32_nodes"] = kept
    return files
