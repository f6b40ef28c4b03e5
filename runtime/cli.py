"""``evad-trt-run``: a video in, per-person action detections out.

The installed command is ``evad.cli.trt_run:main``, which calls :func:`main` here with the demo
assets as the defaults for a missing video and model (they are made by stages above the
runtime: the synthetic video generator and the exporter).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from evad.errors import ConfigError, EvadError
from evad.runtime.backends import BACKENDS, open_runner
from evad.runtime.outputs import VIDEO_NAME, DetectionWriter
from evad.runtime.pipeline import detect
from evad.runtime.preprocess import Preprocessor
from evad.runtime.render import render_video
from evad.runtime.sampling import expected_keyframes
from evad.runtime.video import open_video

__all__ = ["main", "parser"]

#: a function that returns a file to use when the user gave none (made on first use)
Default = Callable[[], Path]

_PROG = "evad-trt-run"

_EPILOG = """\
examples:
  evad-trt-run video.mp4 --onnx exports/vitb_ktp.onnx            # -> runs/video/
  evad-trt-run video.mp4 --engine vitb_ktp.engine --render --out o/
  evad-trt-run frames/ --fps 30 --ckpt vitb_ktp.pyth --backend torch
  evad-trt-run long.mp4 --onnx m.onnx --out o/ --resume          # continue an interrupted run

Outputs in --out: detections.csv (AVA format: video_id, timestamp, x1, y1, x2, y2 normalised,
action_id, score; every class >= --csv-min-score), detections.jsonl (one object per keyframe:
time, frame, boxes in pixels, person score, actions >= --action-threshold), run.json (settings
and summary) and with --render annotated.mp4. While running, detections go to *.partial files,
flushed per batch; they are renamed into place at the end.
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=_PROG, description="Detect people and their actions in a video with an EVAD "
        "model: one keyframe per --keyframe-stride seconds, a 16 x 4 frame clip around each.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", type=Path, default=None,
                    help="video file (any container OpenCV reads) or a directory of frames "
                    "(default: the demo video)")
    model = ap.add_argument_group("model (default: the demo model)")
    model.add_argument("--engine", type=Path, help="TensorRT engine")
    model.add_argument("--onnx", type=Path, help="ONNX model from evad-export")
    model.add_argument("--ckpt", type=Path, help="checkpoint, for the torch backend")
    model.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="auto (default): the fastest that is available for the given "
                       "model(s): TensorRT, ONNX Runtime CUDA, torch CUDA, ONNX Runtime CPU, "
                       "torch CPU")
    model.add_argument("--threads", type=int, default=0,
                       help="ONNX Runtime intra-op threads (0 = its default)")
    run = ap.add_argument_group("sampling and detection")
    run.add_argument("--keyframe-stride", type=float, default=1.0,
                     help="seconds between keyframes (default 1.0, the AVA protocol)")
    run.add_argument("--batch-size", type=int, default=0,
                     help="clips per backend call (default: 8 on a GPU, 1 on the CPU)")
    run.add_argument("--person-threshold", type=float, default=None,
                     help="person score threshold (default: the model's, 0.7 officially)")
    run.add_argument("--keep-all-if-none", action="store_true",
                     help="the official evaluation's fallback: keep every box on a keyframe "
                     "where none passes the person threshold")
    run.add_argument("--action-threshold", type=float, default=0.5,
                     help="actions shown in the JSONL and video (default 0.5)")
    run.add_argument("--top-k", type=int, default=5,
                     help="at most this many actions per person in the JSONL (default 5)")
    run.add_argument("--csv-min-score", type=float, default=0.0,
                     help="CSV rows for action scores >= this (default 0: every class)")
    run.add_argument("--fps", type=float, default=None,
                     help="frame rate of a frame directory (default 30); video files use "
                     "their container timestamps")
    out = ap.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="output folder (default runs/<video name>)")
    out.add_argument("--video-id", default=None,
                     help="first CSV column (default: the video file's stem)")
    out.add_argument("--render", action="store_true", help="also write annotated.mp4")
    out.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bar; only the summary")
    return ap


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"{_PROG}: {msg}", flush=True)


def main(argv: list[str] | None = None, *, default_video: Default | None = None,
         default_model: Default | None = None) -> int:
    """Run the command; ``default_video`` / ``default_model`` give the files to use when the
    user named no video / no model (without them, a missing one is an error)."""
    args = parser().parse_args(argv)
    state: dict = {}
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the run like Ctrl-C: the finished keyframes stay resumable.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run(args, state, default_video, default_model)
    except (EvadError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{_PROG}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # a library error (onnxruntime, OpenCV, torch): still one line
        if os.environ.get("EVAD_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"{_PROG}: error: {type(e).__name__}: {msg[:300]} (set EVAD_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        writer = state.get("writer")
        if writer is not None and writer.jsonl_path.is_file() and state.get("finished"):
            print(f"\n{_PROG}: interrupted while rendering; the detections are complete in "
                  f"{writer.out_dir}", file=sys.stderr)
        elif writer is not None:
            print(f"\n{_PROG}: interrupted after {len(writer.records)} keyframes; they are in "
                  f"{writer.jsonl_path}.partial; rerun with --resume to continue",
                  file=sys.stderr)
        else:
            print(f"\n{_PROG}: interrupted before any output was written", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _validate(args: argparse.Namespace) -> None:
    if not args.keyframe_stride > 0:
        raise ConfigError(f"--keyframe-stride must be > 0 seconds, not {args.keyframe_stride}")
    if args.batch_size < 0:
        raise ConfigError("--batch-size must be >= 1 (or 0 for the default)")
    if args.person_threshold is not None and not 0 <= args.person_threshold <= 1:
        raise ConfigError("--person-threshold must be in [0, 1]")
    if not 0 <= args.action_threshold <= 1:
        raise ConfigError("--action-threshold must be in [0, 1]")
    if args.top_k < 0:
        raise ConfigError("--top-k must be >= 0")


def _run(args: argparse.Namespace, state: dict, default_video: Default | None,
         default_model: Default | None) -> int:
    _validate(args)
    q = args.quiet
    t_start = time.perf_counter()
    # Everything that can refuse the input runs before a file is written.
    video = args.video
    if video is None:
        if default_video is None:
            raise ConfigError("no video: pass a video file or a directory of frames")
        video = default_video()
    info = open_video(video, args.fps)
    onnx = args.onnx
    if args.engine is None and args.onnx is None and args.ckpt is None:
        if default_model is None:
            raise ConfigError("no model: pass --onnx FILE, --engine FILE or --ckpt FILE")
        onnx = default_model()
    backend, notes = open_runner(args.backend, engine=args.engine, onnx=onnx, ckpt=args.ckpt,
                                 threads=args.threads, shrink_arena=True)
    spec = backend.spec
    pre = Preprocessor.create((info.height, info.width), spec.short_side, spec.max_long_side,
                              spec.mean, spec.std, spec.input_size, spec.name)
    batch = args.batch_size or (8 if backend.on_gpu else 1)
    person_thr = spec.person_threshold if args.person_threshold is None else args.person_threshold
    video_id = args.video_id or info.video_id
    if any(c in video_id for c in ',\n\r"'):
        raise ConfigError(f"video id {video_id!r} has a comma, quote or newline, which the AVA "
                          "CSV cannot hold: pass --video-id NAME")
    out_dir = args.out if args.out is not None else Path("runs") / video_id
    stat = info.path.stat()
    settings = {
        "video": str(info.path.resolve()), "video_bytes": stat.st_size if not info.is_directory
        else len(info.frames), "model": spec.name, "keyframe_stride": args.keyframe_stride,
        "person_threshold": person_thr, "keep_all_if_none": args.keep_all_if_none,
        "action_threshold": args.action_threshold, "top_k": args.top_k,
        "csv_min_score": args.csv_min_score, "video_id": video_id, "fps": info.fps,
    }

    src = (f"{len(info.frames)} frames at an assumed {info.fps:g} fps" if info.is_directory
           else f"{info.codec}, {info.fps:.3g} fps, ~{info.duration_s:.1f} s")
    _log(f"video {info.path}: {info.width}x{info.height}, {src}", q)
    _log(f"backend {backend.name}" + (f" (auto; {'; '.join(notes)})" if notes else "")
         + f"; input {pre.padded[0]}x{pre.padded[1]}, frames resized to "
         f"{pre.resized[1]}x{pre.resized[0]}, batch {batch}", q)

    writer = DetectionWriter(out_dir, video_id, spec.labels, settings, args.action_threshold,
                             args.top_k, args.csv_min_score, resume=args.resume)
    writer.open()
    state["writer"] = writer
    if writer.resume_note:
        _log(writer.resume_note, q)
    total = expected_keyframes(info.duration_s - 1.0 / info.fps, args.keyframe_stride)
    with tqdm(total=max(total, writer.resumed), initial=writer.resumed, desc="detect",
              unit="kf", disable=q, leave=False, dynamic_ncols=True) as bar:
        stats = detect(info, backend, pre, writer, keyframe_stride_s=args.keyframe_stride,
                       batch_size=batch, person_threshold=person_thr,
                       keep_all_if_none=args.keep_all_if_none, on_batch=bar.update)
    if not writer.records:
        raise EvadError(f"{info.path} gave no keyframes (no frame decoded)")
    files = [writer.csv_path, writer.jsonl_path]
    summary = {
        "keyframes": len(writer.records), "keyframes_resumed": writer.resumed,
        "people": sum(len(r["people"]) for r in writer.records), "backend": backend.name,
        "batch": batch, "clips_per_s": round(stats.clips_per_s, 3),
        "detect_s": round(stats.wall_s, 3), "inference_s": round(stats.inference_s, 3),
        "decode_s": round(stats.producer_s, 3), "frames": stats.frames,
    }
    writer.finish(summary)
    state["finished"] = True
    if args.render:
        video_path = out_dir / VIDEO_NAME
        with tqdm(total=info.frame_count, desc="render", unit="frame", disable=q,
                  leave=False, dynamic_ncols=True) as bar:
            render_video(info, writer.records, video_path, on_frame=bar.update)
        files.append(video_path)
    print(f"{_PROG}: {summary['keyframes']} keyframes"
          + (f" ({writer.resumed} resumed)" if writer.resumed else "")
          + f", {summary['people']} people, {stats.clips_per_s:.2f} clips/s, backend "
          f"{backend.name}, {time.perf_counter() - t_start:.1f} s -> "
          + ", ".join(str(f) for f in files))
    return 0
