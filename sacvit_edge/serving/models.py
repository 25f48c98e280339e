"""The Python-backend models of a sacvit-edge model repository (serving.repository).

They run inside Triton's Python-backend stub, where `triton_python_backend_utils` exists; each
model.py in the repository names one of these classes. Only the core install is needed here.

ClassifierModel (the BLS model clients call) owns an EdgeClassifier whose backend sends each
engine call to the stage models (runtimes.triton.TritonStageBackend): one `execute` takes the
requests Triton's dynamic batcher gathered, decodes each request on its own (a bad one gets its
own error response and the others go on), runs the EE stage on all images at once and the SAC
stage only on those that did not exit, exactly as `EdgeClassifier.predict_batch` does.

StageModel runs one engine with ONNX Runtime, for servers without Triton's onnxruntime backend.
BaselineModel serves a one-graph classifier (the DeiT baseline of `sacvit-edge serve-bench`)
with the same request handling, in one process.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from sacvit_edge.classifier import EdgeClassifier
from sacvit_edge.engine_io import STAGES, check_engine
from sacvit_edge.errors import BackendError, ConfigError, ImageError, SacvitError
from sacvit_edge.images import check_color, preprocess
from sacvit_edge.manifest import sha256_file
from sacvit_edge.pipeline import Prediction
from sacvit_edge.runtimes.ort import OrtSingle, declared_tensors, session_options
from sacvit_edge.runtimes.triton import TritonStageBackend

log = logging.getLogger(__name__)


def _parameters(args: dict) -> tuple[dict, dict[str, str]]:
    config = json.loads(args["model_config"])
    return config, {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


class ClassifierModel:
    """The BLS model: images in, EdgeClassifier's answers out (see the module doc)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        _, params = _parameters(args)
        if params.get("engines") == "inline":  # both engines in this process (repository.ServingOptions)
            backend, threads = "onnxruntime", int(params["threads"]) if "threads" in params else None
        else:
            backend, threads = TritonStageBackend(self._infer, params["ee_model"], params["sac_model"]), None
        self.classifier = EdgeClassifier(
            _version_dir(args) / params.get("export", "export"), backend=backend, threads=threads, eta=float(params["eta"]),
            topk=int(params["topk"]), max_pixels=int(params["max_pixels"]), precision=params.get("precision", "fp32"),
            deadline_ms=float(params["deadline_ms"]) if "deadline_ms" in params else None)
        log.info("model %s serves %s (eta %s)", args["model_name"], self.classifier.manifest.directory,
                 self.classifier.eta)

    def _infer(self, model: str, inputs, outputs) -> dict[str, np.ndarray]:
        """One BLS request to a stage model (synchronous: the pipeline needs the EE answer to go on)."""
        pb = self.pb
        request = pb.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                      inputs=[pb.Tensor(name, np.ascontiguousarray(a)) for name, a in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise BackendError(f"Triton model {model!r}: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    def _images(self, request) -> tuple[list, str]:
        """One request's images and their channel order; an ImageError names what is wrong."""
        pb = self.pb
        image, frame = pb.get_input_tensor_by_name(request, "image"), pb.get_input_tensor_by_name(request, "frame")
        if image is None and frame is None:
            raise ImageError("the request has no input: send 'image' (BYTES, one encoded image file per item) or "
                             "'frame' (UINT8 HxWx3)")
        if image is not None and frame is not None:
            raise ImageError("the request has both 'image' and 'frame'; send one of them")
        if image is not None:
            items = image.as_numpy().reshape(-1)
            return [bytes(x) if isinstance(x, (bytes, bytearray, np.bytes_)) else _not_bytes(i, x)
                    for i, x in enumerate(items)], "rgb"
        parameters = json.loads(request.parameters() or "{}")
        color = check_color(parameters.get("color", "rgb"), "request parameter 'color'")
        return list(frame.as_numpy()), color

    def execute(self, requests: list) -> list:
        pb = self.pb
        start = time.perf_counter()
        responses: list = [None] * len(requests)
        parts, owners, geometries = [], [], []
        for i, request in enumerate(requests):
            try:
                images, color = self._images(request)
                if not images:
                    raise ImageError("the request holds no image")
                rows: list = []
                parts.append(self._preprocess(images, color, rows))
            except SacvitError as exc:
                responses[i] = _error(pb, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one request's unexpected failure must not fail the batch
                log.exception("request %d of a batch", i)
                responses[i] = _error(pb, exc)
                continue
            owners.append((i, len(images)))
            geometries.extend(rows)
        if not parts:
            return responses
        try:
            batch = np.concatenate(parts)
            pre_ms = (time.perf_counter() - start) * 1e3
            predictions = self._predict(batch, geometries, pre_ms, start)
        except Exception as exc:  # noqa: BLE001 - answered to every request of the batch, the server goes on
            if not isinstance(exc, SacvitError):
                log.exception("a batch of %d images", len(geometries))
            for i, _ in owners:
                responses[i] = _error(pb, exc)
            return responses
        at = 0
        for i, n in owners:
            responses[i] = pb.InferenceResponse(output_tensors=_outputs(pb, predictions[at:at + n]))
            at += n
        return responses

    def _preprocess(self, images: list, color: str, geometries: list) -> np.ndarray:
        return self.classifier.preprocess(images, color=color, geometries=geometries)

    def _predict(self, batch: np.ndarray, geometries: list, pre_ms: float, start: float) -> list[Prediction]:
        """Both stages on the batch: EE on all, SAC on the images that did not exit."""
        return self.classifier.pipeline.predictions(self.classifier.run(batch, started=start), geometries, pre_ms, start)

    def finalize(self) -> None:
        self.classifier.close()


class BaselineModel(ClassifierModel):
    """A one-graph classifier (image -> logits) behind the same inputs and outputs: every image
    runs the whole graph (exited_early False, no target tokens). Its graph runs in this process
    with the options the benchmark gives the baseline (runtimes.ort.OrtSingle)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        _, params = _parameters(args)
        self.size, self.topk = int(params["size"]), int(params["topk"])
        self.mean, self.std = json.loads(params["mean"]), json.loads(params["std"])
        self.class_names, self.max_pixels = json.loads(params["class_names"]), int(params["max_pixels"])
        self.net = OrtSingle(_version_dir(args) / "model.onnx")

    def _preprocess(self, images: list, color: str, geometries: list) -> np.ndarray:
        return preprocess(images, self.size, self.mean, self.std, self.max_pixels, color, "stretch", geometries)

    def _predict(self, batch: np.ndarray, geometries: list, pre_ms: float, start: float) -> list[Prediction]:
        logits = self.net.run(batch)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        out = []
        for row in probs:
            top = np.argsort(-row, kind="stable")[: self.topk]
            out.append(Prediction(class_id=int(top[0]), label=self.class_names[top[0]], confidence=float(row[top[0]]),
                                  topk=[(int(c), self.class_names[c], float(row[c])) for c in top],
                                  exited_early=False, num_target_tokens=0, target_mask=None, batch_size=len(probs)))
        return out

    def finalize(self) -> None:
        self.net = None


def _not_bytes(index: int, value: object) -> bytes:
    raise ImageError(f"image item {index}: expected the bytes of an encoded image file, got {type(value).__name__}")


def _error(pb, exc: BaseException):
    """An error response: the client's fault (HTTP 400, gRPC INVALID_ARGUMENT) for a request the
    project refuses (an unreadable image, a bad parameter), the server's (500) otherwise."""
    if isinstance(exc, (ImageError, ConfigError)):
        return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
    what = "" if isinstance(exc, SacvitError) else f"internal error ({type(exc).__name__}): "
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{what}{exc}", pb.TritonError.INTERNAL))


def _outputs(pb, predictions: list) -> list:
    """The BLS model's outputs (repository.OUTPUTS) for one request's predictions."""
    col = lambda values, dtype: np.asarray(values, dtype).reshape(len(predictions), -1)  # noqa: E731
    return [pb.Tensor("class_id", col([p.class_id for p in predictions], np.int32)),
            pb.Tensor("label", col([p.label.encode() for p in predictions], np.object_)),
            pb.Tensor("confidence", col([p.confidence for p in predictions], np.float32)),
            pb.Tensor("exited_early", col([p.exited_early for p in predictions], np.bool_)),
            pb.Tensor("num_target_tokens", col([p.num_target_tokens for p in predictions], np.int32)),
            pb.Tensor("topk_class_ids", col([[c for c, _, _ in p.topk] for p in predictions], np.int32)),
            pb.Tensor("topk_probs", col([[q for _, _, q in p.topk] for p in predictions], np.float32))]


class StageModel:
    """One engine (EE or SAC) with ONNX Runtime on the CPU, behind Triton's Python backend."""

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb

        self.pb = pb
        _, params = _parameters(args)
        self.stage = params["stage"]
        path = _version_dir(args) / "model.onnx"
        if sha256_file(path) != params["sha256"]:
            raise BackendError(f"{path}: contents differ from what export-triton wrote (corrupted or replaced); "
                               "rebuild the repository")
        threads = int(params["threads"]) if "threads" in params else None
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        check_engine(self.stage, str(path), declared_tensors(self.session), json.loads(params["dimensions"]))
        self.inputs, self.outputs = STAGES[self.stage].input_names, STAGES[self.stage].output_names

    def execute(self, requests: list) -> list:
        """Requests whose tensors have the same shapes run as one batch (the usual case: the
        batcher groups equal shapes); the others one by one."""
        pb = self.pb
        feeds = [{n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(feeds):
            groups.setdefault(tuple(f[n].shape[1:] for n in self.inputs), []).append(i)
        responses: list = [None] * len(requests)
        for members in groups.values():
            try:
                joined = feeds[members[0]] if len(members) == 1 else \
                    {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
                results = self.session.run(self.outputs, joined)
            except Exception as exc:  # noqa: BLE001 - answered to these requests, the server goes on
                for i in members:
                    responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                        f"{self.stage} engine: {type(exc).__name__}: {exc}"))
                continue
            at = 0
            for i in members:
                n = len(feeds[i][self.inputs[0]])
                responses[i] = pb.InferenceResponse(output_tensors=[
                    pb.Tensor(name, np.ascontiguousarray(r[at:at + n])) for name, r in zip(self.outputs, results)])
                at += n
        return responses

    def finalize(self) -> None:
        self.session = None
