"""``evad-trt-run``: a video in, per-person action detections out.

The installed command is ``evad.cli.trt_run:main``, which calls :func:`main` here with the demo
assets as the defaults for a missing video and model (they are made by stages above the
runtime: the synthetic video generator and the exporter).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from evad.command import ArgumentParser, check_name, check_output_dir, number, run_command
from evad.errors import ConfigError, EvadError
from evad.hashing import content_identity
from evad.run_lock import FolderLock
from evad.runner import Runner
from evad.runtime.backends import BACKENDS, PRECISIONS, open_runner
from evad.runtime.outputs import VIDEO_NAME, DetectionWriter
from evad.runtime.pipeline import detect
from evad.runtime.preprocess import Preprocessor
from evad.runtime.render import render_video, video_codec
from evad.runtime.sampling import expected_keyframes
from evad.runtime.video import VideoInfo, open_video

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
time, frame, boxes in pixels, person score, actions >= --action-threshold), run.json (settings,
summary, and each file's size and SHA-256) and with --render annotated.mp4. While running,
detections go to --out/.evad-staging/, flushed per batch; a finished run already in --out is
replaced only when the new one completes. One run at a time per --out (.evad.lock names it).
Set EVAD_DEBUG=1 for tracebacks.
"""


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Detect people and their actions in a video with an EVAD "
        "model: one keyframe per --keyframe-stride seconds, a clip of the model's frames "
        "around each.",
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
                       "model(s): TensorRT, ONNX Runtime CUDA, torch CUDA, then on the CPU "
                       "ONNX Runtime and torch (fp32) or OpenVINO and torch (bf16)")
    model.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="CPU compute precision (default fp32); bf16 is the fast CPU path "
                       "on CPUs with AVX512-BF16 or AMX: OpenVINO with --onnx, torch autocast "
                       "with --ckpt (README, 'Speed on a CPU', has its speed and accuracy)")
    model.add_argument("--threads", type=number(0, 1024, integer=True), default=0,
                       help="ONNX Runtime / OpenVINO threads (0 = its default)")
    run = ap.add_argument_group("sampling and detection")
    run.add_argument("--keyframe-stride", type=number(0, 3600, lo_open=True), default=1.0,
                     help="seconds between keyframes (default 1.0, the AVA protocol)")
    run.add_argument("--batch-size", type=number(0, 4096, integer=True), default=0,
                     help="clips per backend call (default: 8 on a GPU, 1 on the CPU)")
    run.add_argument("--person-threshold", type=number(0, 1), default=None,
                     help="person score threshold (default: the model's, 0.7 officially)")
    run.add_argument("--keep-all-if-none", action="store_true",
                     help="the official evaluation's fallback: keep every box on a keyframe "
                     "where none passes the person threshold")
    run.add_argument("--action-threshold", type=number(0, 1), default=0.5,
                     help="actions shown in the JSONL and video (default 0.5)")
    run.add_argument("--top-k", type=number(0, 10000, integer=True), default=5,
                     help="at most this many actions per person in the JSONL (default 5)")
    run.add_argument("--csv-min-score", type=number(0, 1), default=0.0,
                     help="CSV rows for action scores >= this (default 0: every class)")
    run.add_argument("--fps", type=number(0, 10000, lo_open=True), default=None,
                     help="frame rate of a frame directory (default 30); video files use "
                     "their container timestamps")
    out = ap.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="output folder (default runs/<video id>); one run at a time")
    out.add_argument("--video-id", default=None,
                     help="first CSV column and the default folder name (default: the video "
                     "file's stem); a plain name")
    out.add_argument("--render", action="store_true", help="also write annotated.mp4")
    out.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out (refused if the model, the "
                     "video or a setting changed)")
    out.add_argument("--quiet", action="store_true", help="no progress bar; only the summary")
    return ap


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"{_PROG}: {msg}", flush=True)


def main(argv: list[str] | None = None, *, default_video: Default | None = None,
         default_model: Default | None = None, default_ckpt: Default | None = None) -> int:
    """Run the command; ``default_video`` / ``default_model`` / ``default_ckpt`` give the files
    to use when the user named no video / no model / no checkpoint for ``--backend torch``
    (without them, a missing one is an error)."""
    args = parser().parse_args(argv)
    args.default_ckpt = default_ckpt
    state: dict = {}
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the run like Ctrl-C: the finished keyframes stay resumable.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run_command(_PROG, lambda: _run(args, state, default_video, default_model),
                           interrupted=lambda: _interrupted(state))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(state: dict) -> str:
    writer = state.get("writer")
    if writer is not None and writer.committed:
        return f"interrupted while rendering; the detections are complete in {writer.out_dir}"
    if state.get("resumable"):
        return (f"interrupted after {len(writer.records)} keyframes; they are staged in "
                f"{writer.staging}; rerun with --resume to continue")
    return "interrupted before any keyframe was written; nothing was left"


def _run(args: argparse.Namespace, state: dict, default_video: Default | None,
         default_model: Default | None) -> int:
    q = args.quiet
    t_start = time.perf_counter()
    # Everything that can refuse the input runs before a file is written.
    video = args.video
    if video is None:
        if default_video is None:
            raise ConfigError("no video: pass a video file or a directory of frames")
        video = default_video()
    info = open_video(video, args.fps)
    video_id = check_name(info.video_id if args.video_id is None else args.video_id,
                          "video id" if args.video_id is None else "--video-id")
    if any(c in video_id for c in ',"'):
        raise ConfigError(f"video id {video_id!r} has a comma or quote, which the AVA CSV "
                          "cannot hold: pass --video-id NAME")
    out_dir = args.out if args.out is not None else Path("runs") / video_id
    check_output_dir(out_dir, "--out")
    onnx, ckpt = args.onnx, args.ckpt
    if args.engine is None and args.onnx is None and args.ckpt is None:
        if args.backend == "torch" and args.default_ckpt is not None:
            ckpt = args.default_ckpt()
        elif default_model is None:
            raise ConfigError("no model: pass --onnx FILE, --engine FILE or --ckpt FILE")
        else:
            onnx = default_model()
    backend, notes = open_runner(args.backend, engine=args.engine, onnx=onnx, ckpt=ckpt,
                                 threads=args.threads, shrink_arena=True,
                                 precision=args.precision)
    spec = backend.spec
    _log(f"model {spec.describe()}", q)
    if spec.synthetic_only and args.video is not None:
        print(f"{_PROG}: warning: {spec.describe()} knows only this project's synthetic stick "
              "figures: on real footage its boxes and actions mean nothing. For real video use "
              "an official EVAD checkpoint (ViT-B / ViT-L on AVA, UCF101-24, JHMDB: the "
              "MCG-NJU/EVAD release) exported with evad-export --ckpt FILE --onnx-only",
              file=sys.stderr)
    pre = Preprocessor.create((info.height, info.width), spec.short_side, spec.max_long_side,
                              spec.mean, spec.std, spec.input_size, spec.name)
    batch = args.batch_size or (8 if backend.on_gpu else 1)
    person_thr = spec.person_threshold if args.person_threshold is None else args.person_threshold
    settings = {
        "model_sha256": spec.sha256, "backend": backend.name,
        "video_identity": content_identity(info.path), "fps": info.fps,
        "input_size": list(pre.padded), "keyframe_stride": args.keyframe_stride,
        "person_threshold": person_thr, "keep_all_if_none": args.keep_all_if_none,
        "action_threshold": args.action_threshold, "top_k": args.top_k,
        "csv_min_score": args.csv_min_score, "video_id": video_id,
    }
    source = {"video": str(info.path.resolve()), "model": spec.name}

    src = (f"{len(info.frames)} frames at an assumed {info.fps:g} fps" if info.is_directory
           else f"{info.codec}, {info.fps:.3g} fps, ~{info.duration_s:.1f} s")
    _log(f"video {info.path}: {info.height}x{info.width} (H x W), {src}", q)
    _log(f"backend {backend.name}" + (f" (auto; {'; '.join(notes)})" if notes else "")
         + f"; frames resized to {pre.resized[0]}x{pre.resized[1]}, padded to the input "
         f"{pre.padded[0]}x{pre.padded[1]} (H x W), batch {batch}", q)

    created = not out_dir.exists()
    try:
        with FolderLock(out_dir, _PROG) as lock:
            if lock.taken_over:  # said even with --quiet: another run's leftovers are news
                print(f"{_PROG}: warning: {lock.taken_over}", file=sys.stderr)
            writer = DetectionWriter(out_dir, video_id, spec.labels, settings,
                                     args.action_threshold, args.top_k, args.csv_min_score,
                                     resume=args.resume, source=source)
            try:
                return _detect_and_write(args, state, info, backend, pre, writer, batch,
                                         person_thr, t_start)
            except BaseException:
                state["resumable"] = writer.abandon()
                raise
    finally:  # a folder this run made and left empty is not left behind
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _detect_and_write(args: argparse.Namespace, state: dict, info: VideoInfo, backend: Runner,
                      pre: Preprocessor, writer: DetectionWriter, batch: int,
                      person_thr: float, t_start: float) -> int:
    q = args.quiet
    state["writer"] = writer
    writer.open()
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
    if args.render:
        if video_codec() != "h264":
            _log("note: PyAV with libx264 is missing, so annotated.mp4 is MPEG-4 Part 2 (mp4v), "
                 "which browsers do not play: pip install av", q)
        with tqdm(total=info.frame_count, desc="render", unit="frame", disable=q,
                  leave=False, dynamic_ncols=True) as bar:
            render_video(info, writer.records, writer.staged_path(VIDEO_NAME),
                         on_frame=bar.update)
        files.append(writer.add_output(VIDEO_NAME))
    print(f"{_PROG}: {summary['keyframes']} keyframes"
          + (f" ({writer.resumed} resumed)" if writer.resumed else "")
          + f", {summary['people']} people, {stats.clips_per_s:.2f} clips/s, backend "
          f"{backend.name}, {time.perf_counter() - t_start:.1f} s -> "
          + ", ".join(str(f) for f in files))
    return 0
