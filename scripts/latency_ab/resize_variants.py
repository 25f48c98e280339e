"""Faster ways to fit a camera frame, against the shipped resampling (issue 21's frame path):

    .venv/bin/python scripts/latency_ab/resize_variants.py [--reps 15] [--json out.json]

The shipped path (images.resize_uint8: Pillow's antialiased bilinear filter, large frames as two
strips in two threads) is within one grey level of one Pillow pass on the whole frame, which is
what the models were trained with (tests/test_frame_path.py asserts it on noise frames). Each
variant is timed (median of --reps calls) on uint8 frames of four sizes, fitted to 112 px, and
compared with one Pillow pass: the largest difference in grey levels on a textured frame
(scripts/frame_bench.py's) and on uniform noise (the hardest case for resampling).
- pillow_gap2 / pillow_gap3: Pillow's `reducing_gap` (a box `reduce` first, then the filter);
- opencv_area: OpenCV INTER_AREA by the largest integer factors <= scale / 3 that divide the
  frame, then the Pillow filter on the block means;
- opencv_halve: OpenCV's 2x2 INTER_AREA (its SIMD special case) once, then the Pillow filter;
- ort_resize: ONNX Runtime's Resize (opset 18, linear, antialias=1) on the HxWx3 uint8 frame, 2 threads.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from frame_bench import frame_of  # noqa: E402

from sacvit_edge.images import resize_uint8  # noqa: E402

SIZE = 112


def ort_resize_session() -> ort.InferenceSession:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", antialias=1, axes=[1, 2],
                            coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "fit", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, "h", "w", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.array([SIZE, SIZE], np.int64), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def area_factor(n: int, scale: float) -> int:
    r = int(scale // 3)
    while r >= 2 and n % r:
        r -= 1
    return max(r, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args()
    session = ort_resize_session()

    def pillow(a: np.ndarray, gap=None) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=gap))

    def opencv_area(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        small = cv2.resize(a, (w // area_factor(w, w / SIZE), h // area_factor(h, h / SIZE)), interpolation=cv2.INTER_AREA)
        return pillow(small)

    def opencv_halve(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        return pillow(cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_AREA))

    variants = {"shipped": lambda a: resize_uint8(a, SIZE),
                "pillow_gap2": lambda a: pillow(a, 2.0), "pillow_gap3": lambda a: pillow(a, 3.0),
                "opencv_area": opencv_area, "opencv_halve": opencv_halve,
                "ort_resize": lambda a: session.run(None, {"x": a[None]})[0][0]}
    rows = []
    for w, h in ((640, 480), (1280, 720), (1920, 1080), (3840, 2160)):
        frames = {"textured": frame_of(w, h), "noise": np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)}
        refs = {name: pillow(f).astype(int) for name, f in frames.items()}
        for name, fn in variants.items():
            ts = []
            fn(frames["textured"])
            for _ in range(args.reps):
                t = time.perf_counter()
                fn(frames["textured"])
                ts.append((time.perf_counter() - t) * 1e3)
            diff = {kind: int(np.abs(fn(f).astype(int) - refs[kind]).max()) for kind, f in frames.items()}
            rows.append({"frame": f"{w}x{h}", "variant": name, "ms": float(np.median(ts)),
                         "max_diff_textured": diff["textured"], "max_diff_noise": diff["noise"]})
            print(f"{w}x{h} {name:13s} {np.median(ts):7.2f} ms  max grey-level difference: textured {diff['textured']}, "
                  f"noise {diff['noise']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reps": args.reps, "size": SIZE, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
