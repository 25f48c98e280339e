"""The GPU check for a lent CUDA machine (issue 23), one script, JSON out, under 8 minutes:

    python scripts/gpu_check.py --out $OUT/gpu_check.json      (scripts/gpu_check.sh wraps it)

1. runtimes/cuda.py, the real CUDA runtime through cuda-python (no test double): device and pinned
   allocations, host->device->host round trip on a stream, events, a CUDA graph captured from copies
   and replayed after the source changed.
2. backend "pytorch-cuda" against ONNX Runtime on the CPU (attention graphs): the bundled samples and
   256 test canvases, at the shipped eta and with no exit; max probability difference, agreement.
3. batch-1 and batch-32 latency of SAC-ViT against DeiT on the GPU (PyTorch, the shipped models),
   interleaved, median ms.
4. the TensorRT backend's slot pool, buffers, pinned copies and events on real device memory, with
   the TensorRT TEST DOUBLE (tests/doubles/fake_tensorrt.py, which runs the graphs with ONNX Runtime
   and reaches the device buffers by cudaMemcpy) standing in for TensorRT alone: answers against
   ONNX Runtime, also with two threads sharing the slots.
TensorRT is not on these machines: nothing here runs it. Each part is recorded as ok / skipped with
its reason / failed with the error, so one failing part does not hide the others.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def part_cuda_runtime() -> dict:
    from sacvit_edge.runtimes.cuda import CudaRuntime

    cuda = CudaRuntime()
    out = {"device": cuda.properties()}
    n = 1 << 20
    src_ptr, src = cuda.host_alloc(n)
    dst_ptr, dst = cuda.host_alloc(n)
    dev = cuda.malloc(n)
    stream, event = cuda.stream(), cuda.event()
    src[:] = np.arange(n, dtype=np.uint32).view(np.uint8)[:n]
    cuda.copy_to_device(dev, src_ptr, n, stream)
    cuda.copy_to_host(dst_ptr, dev, n, stream)
    cuda.record_and_wait(event, stream)
    out["round_trip_equal"] = bool((src == dst).all())
    cuda.begin_capture(stream)  # a graph of the same two copies, replayed after the source changed
    cuda.copy_to_device(dev, src_ptr, n, stream)
    cuda.copy_to_host(dst_ptr, dev, n, stream)
    graph = cuda.end_capture(stream)
    src[:] = 7
    dst[:] = 0
    cuda.launch(graph, stream)
    cuda.record_and_wait(event, stream)
    out["graph_replay_equal"] = bool((dst == 7).all())
    for fn, arg in ((cuda.destroy_graph, graph), (cuda.free, dev), (cuda.host_free, src_ptr), (cuda.host_free, dst_ptr),
                    (cuda.destroy_event, event), (cuda.destroy_stream, stream)):
        fn(arg)
    out["ok"] = out["round_trip_equal"] and out["graph_replay_equal"]
    return out


def part_parity(export_dir: Path, backend: str) -> dict:
    from sacvit_edge import EdgeClassifier
    from sacvit_edge.bench.run import eval_images

    gpu = EdgeClassifier(export_dir, backend=backend)
    cpu = EdgeClassifier(export_dir, backend="onnxruntime")
    x, _ = eval_images(256, gpu.manifest.mean, gpu.manifest.std)
    samples = sorted((ROOT / "sacvit_edge" / "assets" / "samples").glob("*.png"))
    out = {"cpu_graphs": cpu.backend.describe().get("graphs")}
    for eta in (gpu.manifest.eta, "never"):
        a, b = gpu.run(x, eta=eta), cpu.run(x, eta=eta)
        out[f"canvases_eta_{eta}"] = {"max_prob_diff": float(np.abs(a.probs - b.probs).max()),
                                      "same_class": float((a.probs.argmax(1) == b.probs.argmax(1)).mean()),
                                      "same_exits": bool((a.exited == b.exited).all())}
    pa, pb = gpu.predict_batch(samples), cpu.predict_batch(samples)
    out["samples_same_label"] = sum(p.label == q.label for p, q in zip(pa, pb))
    out["samples"] = len(samples)
    out["ok"] = all(v["max_prob_diff"] < 1e-3 for k, v in out.items() if k.startswith("canvases"))
    return out


def part_latency(export_dir: Path, iters: int, backend: str) -> dict:
    import torch

    from sacvit_edge import EdgeClassifier
    from sacvit_edge.checkpoint import load_checkpoint

    device = "cuda" if backend == "pytorch-cuda" else "cpu"
    clf = EdgeClassifier(export_dir, backend=backend)
    deit = load_checkpoint(ROOT / "checkpoints" / "deit_tiny_112.pt").model.eval().to(device)
    x = np.random.default_rng(0).standard_normal((32, 3, 112, 112)).astype(np.float32)
    xt = torch.from_numpy(x).to(device)

    def deit_run(b: int) -> None:
        with torch.inference_mode():
            deit(xt[:b])
        if device == "cuda":
            torch.cuda.synchronize()

    res: dict = {}
    for b in (1, 32):
        t_sac, t_deit = [], []
        for _ in range(10):  # warm-up
            clf.run(x[:b]), deit_run(b)
        for _ in range(iters):
            t = time.perf_counter(); clf.run(x[:b]); t_sac.append(time.perf_counter() - t)
            t = time.perf_counter(); deit_run(b); t_deit.append(time.perf_counter() - t)
        res[f"batch_{b}"] = {"sac_ms": 1e3 * float(np.median(t_sac)), "deit_ms": 1e3 * float(np.median(t_deit)),
                             "speedup": float(np.median(t_deit) / np.median(t_sac))}
    res["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (logic check only)"
    res["ok"] = True
    return res


def part_tensorrt_double_on_device(export_dir: Path) -> dict:
    import shutil
    import sys
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(ROOT / "tests"))
    from doubles.fake_tensorrt import make_tensorrt  # the TEST DOUBLE of TensorRT, not TensorRT

    import sacvit_edge.runtimes as runtimes
    import sacvit_edge.runtimes.trt as trt_mod
    from sacvit_edge import EdgeClassifier
    from sacvit_edge.bench.run import eval_images
    from sacvit_edge.export.tensorrt import build_engines
    from sacvit_edge.manifest import read_manifest
    from sacvit_edge.runtimes.cuda import CudaRuntime
    from sacvit_edge.runtimes.trt import TrtApi

    cuda = CudaRuntime()
    api = TrtApi(trt=make_tensorrt("10.16.1", cuda), cuda=cuda)
    with tempfile.TemporaryDirectory(prefix="gpu-check-trt-") as tmp:
        d = Path(shutil.copytree(export_dir, Path(tmp) / "e"))
        build_engines(read_manifest(d), "fp32", api=api)
        trt_mod.load_api = lambda: api  # this process only: the double stands in for TensorRT
        runtimes.tensorrt_usable = lambda: (True, "TensorRT test double on real CUDA memory")
        clf = EdgeClassifier(d, backend="tensorrt")
        ref = EdgeClassifier(d, backend="onnxruntime")
        x, _ = eval_images(256, ref.manifest.mean, ref.manifest.std)
        a, b = clf.run(x, eta="never"), ref.run(x, eta="never")
        with ThreadPoolExecutor(2) as pool:  # two callers share the two slots
            parts = list(pool.map(lambda i: clf.run(x[i * 64:(i + 1) * 64], eta="never").probs, range(4)))
        threaded = np.concatenate(parts)
        out = {"device": cuda.properties()["name"], "max_prob_diff": float(np.abs(a.probs - b.probs).max()),
               "threaded_max_prob_diff": float(np.abs(threaded - b.probs).max()),
               "same_counts": bool((a.counts == b.counts).all())}
        clf.close()
        ref.close()
    out["ok"] = out["max_prob_diff"] < 1e-3 and out["threaded_max_prob_diff"] < 1e-3 and out["same_counts"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--cpu", action="store_true", help="check the script's logic where no GPU is lent: parts 2 and 3 on "
                    "backend 'pytorch', parts 1 and 4 over the cuda-python TEST DOUBLE (tests/doubles/fake_cudart.py)")
    args = ap.parse_args()
    report: dict = {}
    backend = "pytorch" if args.cpu else "pytorch-cuda"
    if args.cpu:
        import sys

        sys.path.insert(0, str(ROOT / "tests"))
        from doubles.fake_cudart import make_cudart

        import sacvit_edge.runtimes.cuda as cuda_mod

        fake = make_cudart()
        cuda_mod._cudart = lambda: fake  # this process only
        report["cuda"] = "cuda-python TEST DOUBLE (--cpu): a logic check, not CUDA"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        from sacvit_edge.export.bundle import export_checkpoint

        export_dir = export_checkpoint(ROOT / "checkpoints" / "sacvit_tiny_112.pt", Path(tmp) / "e").directory
        for name, fn in (("cuda_runtime", part_cuda_runtime), ("parity", lambda: part_parity(export_dir, backend)),
                         ("latency", lambda: part_latency(export_dir, args.iters, backend)),
                         ("tensorrt_double_on_device", lambda: part_tensorrt_double_on_device(export_dir))):
            t = time.perf_counter()
            try:
                report[name] = fn()
            except Exception as exc:  # noqa: BLE001 - recorded, the other parts still run
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            report[name]["seconds"] = round(time.perf_counter() - t, 1)
            print(name, "ok" if report[name].get("ok") else "FAILED", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
