"""Write a synthetic test video: figures walking across a textured background (OpenCV, mp4v).

    python examples/make_sample_video.py sample.mp4                       # 20 s, 640x360, 25 fps
    python examples/make_sample_video.py long.mp4 --seconds 600 --width 1280 --height 720

The figures are drawn shapes, not people: a model with trained weights will find few or none.
The file exercises decoding, sampling, batching and the outputs end to end; for real footage
with people, see .ci/test_data.sh (OpenCV's vtest.avi).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np


def make_video(path: str | Path, seconds: float = 20.0, width: int = 640, height: int = 360,
               fps: float = 25.0, figures: int = 3, seed: int = 0) -> Path:
    """Write ``seconds`` of ``width`` x ``height`` video at ``fps`` to ``path`` (mp4v/MJPG by
    extension: .mp4 -> mp4v, .avi -> MJPG). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    rng = np.random.default_rng(seed)
    # A smooth static background (low-frequency noise compresses well) ...
    bg = cv2.resize(rng.integers(60, 200, (9, 16, 3), dtype=np.uint8), (width, height),
                    interpolation=cv2.INTER_CUBIC)
    s = height / 360
    start = rng.uniform(0, width, figures)
    speed = rng.uniform(30, 90, figures) * s * rng.choice([-1, 1], figures)
    base_y = rng.uniform(0.55, 0.85, figures) * height
    colors = rng.integers(0, 255, (figures, 3)).tolist()
    n = int(round(seconds * fps))
    for i in range(n):
        t = i / fps
        frame = bg.copy()
        # ... with figures walking across it, legs swinging.
        for f in range(figures):
            x = int((start[f] + speed[f] * t) % (width + 80 * s) - 40 * s)
            y = int(base_y[f])
            c = colors[f]
            body_h, w = int(70 * s), max(2, int(4 * s))
            cv2.circle(frame, (x, y - body_h - int(12 * s)), int(11 * s), c, -1)
            cv2.line(frame, (x, y - body_h), (x, y - int(30 * s)), c, w + 4)
            swing = int(14 * s * np.sin(2 * np.pi * 1.5 * t + f))
            cv2.line(frame, (x, y - int(30 * s)), (x + swing, y), c, w)
            cv2.line(frame, (x, y - int(30 * s)), (x - swing, y), c, w)
            cv2.line(frame, (x, y - int(60 * s)), (x + swing, y - int(35 * s)), c, w)
            cv2.line(frame, (x, y - int(60 * s)), (x - swing, y - int(35 * s)), c, w)
        cv2.putText(frame, f"{t:6.2f} s", (10, int(30 * s)), cv2.FONT_HERSHEY_SIMPLEX, s,
                    (255, 255, 255), max(1, int(2 * s)), cv2.LINE_AA)
        writer.write(frame)
    writer.release()
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="output file (.mp4 or .avi)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    make_video(args.out, args.seconds, args.width, args.height, args.fps, seed=args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
