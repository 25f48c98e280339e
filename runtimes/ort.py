"""ONNX Runtime backend: any CPU (and any other execution provider ORT has)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sacvit_edge.engine_io import STAGES, UNPADDED_SAC_FEEDS, check_engine, dimensions
from sacvit_edge.errors import BackendError
from sacvit_edge.tokens import SacGroup

from .base import EEResult, FrameResult, HostBackend, cpu_name, host_sac_feeds

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64),
               "tensor(bool)": np.dtype(np.bool_), "tensor(float16)": np.dtype(np.float16),
               "tensor(int32)": np.dtype(np.int32)}
_EE_OUTPUTS = STAGES["ee"].output_names  # ee_logits, gca, ee_final, ee_hidden
_FRAME_OUTPUTS = STAGES["frame"].output_names  # in FrameResult's order


def session_options(threads: int | None = None, spinning: bool = False):
    """Options for speed on a CPU: see OrtBackend.

    Spinning (threads busy-wait for the next op) helps ONE session run back to back (the DeiT
    baseline: +44 % img/s at batch 1, +5 % at 32 on 2 cores) and hurts two sessions with host work
    between them: the idle session's spinning threads steal the cores (SAC-ViT: 1019 -> 572
    img/s at batch 32 with spinning on).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own default, one thread per physical core
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def declared_tensors(session) -> dict[str, tuple[bool, np.dtype, list]]:
    """A session's tensors as engine_io.check_engine takes them: name -> (is_input, dtype, shape)."""
    declared = {a.name: (True, _ORT_DTYPES.get(a.type, np.dtype("V")), a.shape) for a in session.get_inputs()}
    declared.update({a.name: (False, _ORT_DTYPES.get(a.type, np.dtype("V")), a.shape) for a in session.get_outputs()})
    return declared


class Batch1Sessions:
    """Batch-1 twins of a graph's sessions, made on first use.

    A session whose batch axis is fixed to 1 (ONNX Runtime's free-dimension override, no new
    file) lets ONNX Runtime fold the shape arithmetic the dynamic graph carries (Shape, Gather,
    Unsqueeze, Concat around every reshape): at batch 1, where that arithmetic is a visible
    share of the time, the twin runs calls of one image. Calls of several images use the
    dynamic session. Memory: one more copy of the weights, only once batch 1 is used.
    """

    def __init__(self, path: str | Path, opts_factory, providers: list[str]) -> None:
        import threading

        self.path, self.opts_factory, self.providers = path, opts_factory, providers
        self.session = None
        self._lock = threading.Lock()

    def get(self):
        if self.session is None:
            import onnxruntime as ort

            with self._lock:
                if self.session is None:
                    opts = self.opts_factory()
                    opts.add_free_dimension_override_by_name("batch", 1)
                    self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        return self.session


class OrtSingle:
    """A one-graph model (the DeiT baseline in benchmarks), with ITS best options: spinning on,
    and the same batch-1 twin session SAC-ViT's engines get."""

    def __init__(self, path: str | Path, threads: int | None = None, batch1: bool = True) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), session_options(threads, spinning=True),
                                            providers=["CPUExecutionProvider"])
        self.batch1 = Batch1Sessions(path, lambda: session_options(threads, spinning=True),
                                     ["CPUExecutionProvider"]) if batch1 else None

    def run(self, image: np.ndarray) -> np.ndarray:
        sess = self.batch1.get() if self.batch1 is not None and image.shape[0] == 1 else self.session
        return sess.run(None, {"image": image})[0]


class OrtBackend(HostBackend):
    """One InferenceSession per engine, created once and shared by all threads.

    Session options: full graph optimisation (fuses LayerNorm, GELU, attention MatMuls), intra-op
    threads = ONNX Runtime's default (one per physical core; SMT siblings only contend for the
    same FMA units) unless `threads` is given, no inter-op
    threads (both graphs are sequential chains), and no spin-waiting: the host works between
    the two engines, and spinning threads would steal its core.

    With `sac_unpadded_path` (the export's sac.unpadded.attention.onnx), SAC calls without padding
    (every batch-1 call, and groups of one target count) run that graph: no keep masks to build or
    apply (6-9 % of the SAC call at batch 1, the same logits); padded groups run the SAC graph.

    With `frame_path` (the export's frame.attention.onnx), one image runs both stages in one call
    (`run_frame`): no host work and no second session between the stages (export/frame.py).
    """

    name = "onnxruntime"

    def __init__(self, ee_path: str | Path, sac_path: str | Path, threads: int | None = None,
                 providers: list[str] | None = None, batch1: bool = True, batch1_threads: int | None = None,
                 sac_unpadded_path: str | Path | None = None, frame_path: str | Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise BackendError("onnxruntime is not installed: pip install onnxruntime") from exc
        self._ort = ort
        self.threads = threads  # None: ONNX Runtime's default
        opts = session_options(threads)
        self.providers = providers or ["CPUExecutionProvider"]
        try:
            self.ee = ort.InferenceSession(str(ee_path), opts, providers=self.providers)
            self.sac = ort.InferenceSession(str(sac_path), opts, providers=self.providers)
            self.sac_unpadded = None if sac_unpadded_path is None else \
                ort.InferenceSession(str(sac_unpadded_path), opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"ONNX Runtime cannot load the engines {ee_path}, {sac_path}"
                               f"{'' if sac_unpadded_path is None else f', {sac_unpadded_path}'}: {exc}") from exc
        self.paths = {"ee": str(ee_path), "sac": str(sac_path)}
        if sac_unpadded_path is not None:
            self.paths["sac_unpadded"] = str(sac_unpadded_path)
        self._check_io()
        # batch-1 calls (camera frames) run on batch-1 twins of the sessions: see Batch1Sessions
        # (thread count: batch1_threads, which calibrate measures per device, else the same as the rest)
        b1 = self.batch1_threads = batch1_threads or threads
        self.ee1 = Batch1Sessions(ee_path, lambda: session_options(b1), self.providers) if batch1 else None
        self.sac1 = Batch1Sessions(sac_path, lambda: session_options(b1), self.providers) if batch1 else None
        self.sac_unpadded1 = Batch1Sessions(sac_unpadded_path, lambda: session_options(b1), self.providers) \
            if batch1 and sac_unpadded_path is not None else None
        # the frame graph is batch 1 by construction; its session is made (and checked) on first use
        self.frame1 = Batch1Sessions(frame_path, lambda: session_options(b1), self.providers) \
            if frame_path is not None else None
        self.has_frame = self.frame1 is not None
        self._frame_checked = False
        self._frame_scalars: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}  # run_frame's eta, force_k
        if frame_path is not None:
            self.paths["frame"] = str(frame_path)

    @classmethod
    def from_manifest(cls, manifest, threads: int | None = None, precision: str = "fp32") -> "OrtBackend":
        """Open an export directory's engines of a precision and check that they are the ones its
        manifest describes: embedded fingerprint and manifest digest, and the shapes they accept."""
        # fp32: the graphs with the ONNX Attention operator where the export has them (fewer nodes)
        files = dict(zip(("ee", "sac"), manifest.engine_files(precision, attention_op=True)))
        if precision == "fp32" and manifest.unpadded_sac is not None:  # it goes with the attention graphs
            files["sac_unpadded"] = manifest.unpadded_sac
        if precision == "fp32" and manifest.frame is not None:
            files["frame"] = manifest.frame
        backend = cls(manifest.path(files["ee"]), manifest.path(files["sac"]), threads=threads,
                      batch1_threads=None if threads else manifest.batch1_threads,  # an explicit `threads` wins
                      sac_unpadded_path=manifest.path(files["sac_unpadded"]) if "sac_unpadded" in files else None,
                      frame_path=manifest.path(files["frame"]) if "frame" in files else None)
        backend.precision = precision
        backend._manifest, backend._dims = manifest, dimensions(manifest.config)
        for stage, sess in backend._sessions():
            meta = dict(sess.get_modelmeta().custom_metadata_map)
            problems = manifest.engine_problems(stage, meta)
            if problems:
                raise BackendError(f"{manifest.path(files[stage])}: {'; '.join(problems)}; re-export")
        backend._check_io(dimensions(manifest.config))
        return backend

    def _sessions(self) -> list[tuple[str, object]]:
        """(engine_io stage, session) of every graph this backend opened."""
        return [("ee", self.ee), ("sac", self.sac), *((("sac_unpadded", self.sac_unpadded),) if self.sac_unpadded else ())]

    def _check_io(self, dims: dict[str, int] | None = None) -> None:
        """Every session's declared tensors against the engine I/O contract (engine_io)."""
        for stage, sess in self._sessions():
            check_engine(stage, self.paths[stage], declared_tensors(sess), dims)

    def run_ee(self, image: np.ndarray) -> EEResult:
        sess = self.ee1.get() if self.ee1 is not None and image.shape[0] == 1 else self.ee
        logits, gca, final, hidden = sess.run(_EE_OUTPUTS, {"image": image})
        return EEResult(logits=logits, gca=gca, final=final, hidden=hidden, image=image)

    def _frame_session(self):
        sess = self.frame1.get()
        if not self._frame_checked:  # once: the same checks from_manifest makes of the other graphs
            check_engine("frame", self.paths["frame"], declared_tensors(sess), getattr(self, "_dims", None))
            manifest = getattr(self, "_manifest", None)
            problems = [] if manifest is None else \
                manifest.engine_problems("frame", dict(sess.get_modelmeta().custom_metadata_map))
            if problems:
                raise BackendError(f"{self.paths['frame']}: {'; '.join(problems)}; re-export")
            self._frame_checked = True
        return sess

    def run_frame(self, image: np.ndarray, eta: float, force_k: int) -> FrameResult:
        if self.frame1 is None or image.shape[0] != 1:
            raise BackendError("run_frame takes one image and needs the export's frame graph")
        # the (eta, force_k) input arrays are made once per pair and kept read-only: a camera loop
        # repeats a few pairs, and every NumPy call right after an engine call runs on cold caches
        # (the host work around a shipped-geometry frame was ~250 us of ~3 ms, docs/latency.md)
        scalars = self._frame_scalars.get((eta, force_k))
        if scalars is None:
            scalars = (np.array(eta, dtype=np.float32), np.array(force_k, dtype=np.int64))
            for a in scalars:
                a.setflags(write=False)
            if len(self._frame_scalars) < 256:
                self._frame_scalars[(eta, force_k)] = scalars
        return FrameResult(*self._frame_session().run(_FRAME_OUTPUTS, {"image": image, "eta": scalars[0],
                                                                       "force_k": scalars[1]}))

    def run_sac(self, ee: EEResult, rows: np.ndarray, group: SacGroup) -> np.ndarray:
        feeds = host_sac_feeds(ee, rows, group)
        if group.padded or self.sac_unpadded is None:
            return self.run_sac_feeds(feeds)
        one = self.sac_unpadded1 is not None and len(rows) == 1
        sess = self.sac_unpadded1.get() if one else self.sac_unpadded
        return sess.run(["sac_logits"], {name: feeds[name] for name in UNPADDED_SAC_FEEDS})[0]

    def run_sac_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        sess = self.sac1.get() if self.sac1 is not None and feeds["target_patches"].shape[0] == 1 else self.sac
        return sess.run(["sac_logits"], feeds)[0]

    def device(self) -> str:
        return cpu_name() if self.providers[0] == "CPUExecutionProvider" else self.providers[0]

    def describe(self) -> dict:
        return {"backend": self.name, "precision": getattr(self, "precision", "fp32"),
                "graphs": [Path(p).name for p in self.paths.values()],
                "providers": self.ee.get_providers(), "threads": self.threads or "onnxruntime default",
                "batch1_threads": getattr(self, "batch1_threads", None) or "as threads",
                "onnxruntime": self._ort.__version__, "device": self.device()}

    def close(self) -> None:
        self.ee = self.sac = self.ee1 = self.sac1 = self.sac_unpadded = self.sac_unpadded1 = None  # type: ignore[assignment]
        self.frame1, self.has_frame = None, False
