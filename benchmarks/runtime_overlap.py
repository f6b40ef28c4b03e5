"""Does decoding overlap inference? Wall time of a full run vs decode-only and inference-only.

    evad-export --preset tiny --height 288 --width 512 --out exports --onnx-only --parity-clips 0
    python benchmarks/runtime_overlap.py exports/tiny_random0.onnx --json r.json

Makes (or takes, ``--video``) the 20-second 640x360 synthetic video, then measures, in one
process and in this order:
- total: ``evad.runtime.detect`` (decoding thread + ORT + post-processing + writing);
- decode-only: the same decoding thread (decode, resize, clip assembly), clips discarded;
- inference-only: the backend on as many clips (one real clip, repeated), same batch size.
Overlap holds when total < decode-only + inference-only. ``--repeat`` alternates the three and
reports medians (a shared machine's load moves single runs by 20%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from forward_cpu import cpu_name

from evad.preprocess import Preprocessor
from evad.runtime.backends import open_runner
from evad.runtime.outputs import DetectionWriter
from evad.runtime.pipeline import ClipProducer, detect
from evad.video import open_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_sample_video import make_video  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--video", type=Path, default=None, help="default: make the 20 s sample")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (medians are reported)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="evad-overlap-"))
    video = args.video or make_video(tmp / "sample.mp4", 20.0, 640, 360, 25.0)
    info = open_video(video)
    backend, _ = open_runner("ort", onnx=args.onnx, threads=args.threads, shrink_arena=True)
    spec = backend.spec
    pre = Preprocessor.for_model(spec, (info.height, info.width))
    # warm-up: ORT's first run allocates its arena
    clip = np.zeros((args.batch, 3, spec.num_frames, *pre.padded), np.float32)
    size = np.tile(np.array([pre.resized], np.int64), (args.batch, 1))
    backend(clip, size)

    rounds = []
    for r in range(args.repeat):
        # total: the real pipeline
        writer = DetectionWriter(tmp / f"out{r}", info.video_id, spec.labels, {})
        writer.open()
        t0 = time.perf_counter()
        stats = detect(info, backend, pre, writer, batch_size=args.batch)
        total = time.perf_counter() - t0
        writer.close()
        n = stats.keyframes
        # decode-only: the same thread, clips discarded
        t0 = time.perf_counter()
        producer = ClipProducer(info, pre, 1.0, spec.num_frames, spec.frame_stride,
                                queue_clips=max(2, args.batch))
        producer.start()
        last = None
        for _, c in producer.clips():
            last = c
        producer.join()
        decode = time.perf_counter() - t0
        # inference-only: as many backend calls on a real clip
        batch = np.stack([last] * args.batch)
        runs = -(-n // args.batch)
        t0 = time.perf_counter()
        for _ in range(runs):
            backend(batch, size)
        infer = time.perf_counter() - t0
        rounds.append({"total_s": round(total, 2), "decode_only_s": round(decode, 2),
                       "inference_only_s": round(infer, 2),
                       "inference_inside_total_s": round(stats.inference_s, 2),
                       "decode_thread_busy_s": round(stats.producer_s, 2)})
        print(f"round {r + 1}: total {total:.2f} s, decode-only {decode:.2f} s ({producer.frames} "
              f"frames, {n} clips), inference-only {infer:.2f} s ({runs} runs of batch "
              f"{args.batch}); total {'<' if total < decode + infer else '>='} "
              f"{decode + infer:.2f} s", flush=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ok = med["total_s"] < med["decode_only_s"] + med["inference_only_s"]
    print(f"median of {args.repeat}: total {med['total_s']:.2f} s, decode-only "
          f"{med['decode_only_s']:.2f} s, inference-only {med['inference_only_s']:.2f} s -> "
          f"overlap {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({
            "onnx": args.onnx.name, "video": f"{info.width}x{info.height}, {info.fps:g} fps, "
            f"{info.frame_count} frames", "input": list(pre.padded), "keyframes": n,
            "batch": args.batch,
            "backend": backend.name, "rounds": rounds, "median": med, "overlap": ok,
            "device": f"CPU: {cpu_name()}", "date": datetime.date.today().isoformat()},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
