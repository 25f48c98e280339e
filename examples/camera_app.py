"""A minimal robot / camera loop with sacvit-edge: capture, classify as a stream, draw, report.

    python examples/camera_app.py EXPORT_DIR --camera 0                  # a live camera
    python examples/camera_app.py EXPORT_DIR --video clip.avi --save out/ # a clip, overlays saved

Needs the [video] extra (OpenCV) for capture; everything else is the core install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sacvit_edge import EdgeClassifier, SacvitError, draw_prediction
from sacvit_edge.video import open_frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="an export directory (sacvit-edge export model.pt -o DIR)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, help="camera index")
    src.add_argument("--video", type=Path, help="video file")
    ap.add_argument("--save", type=Path, help="write each frame with its overlay here")
    ap.add_argument("--max-frames", type=int, default=None)
    args = ap.parse_args()
    try:
        # OpenCV delivers BGR; letterbox keeps a 4:3 frame's proportions; one ORT thread per
        # session lets the stream overlap EE and SAC on a 2-core board (scripts/stream_bench.py)
        clf = EdgeClassifier(args.export, color="bgr", resize="letterbox", threads=1)
        live = args.camera is not None
        frames = open_frames(args.camera if live else args.video, args.max_frames)
        stream = clf.stream(frames, drop="oldest" if live else "none", max_inflight=1 if live else 2)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
        for i, frame, pred in stream:
            where = "early exit" if pred.exited_early else f"{len(pred.target_boxes)} regions looked at closer"
            print(f"frame {i}: {pred.label} {pred.confidence:.2f} ({where})")
            if args.save:
                draw_prediction(frame, pred, color="bgr").save(args.save / f"frame_{i:06d}.png")
        stats = stream.monitor.snapshot()
        print(f"{stats['frames']} frames, {stats['fps']:.1f} fps, p50 {stats['p50_ms']:.1f} ms, "
              f"p99 {stats['p99_ms']:.1f} ms, exit rate {stats['exit_rate']:.2f}, dropped {stream.dropped}")
    except SacvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
