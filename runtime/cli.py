"""``evad-trt-run``: a video in, per-person action detections out.

The installed command is ``evad.cli.trt_run:main``, which calls :func:`main` here with the demo
assets as the defaults for a missing video and model (they are made by stages above the
runtime: the synthetic video generator and the exporter).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evad.command import (
    ArgumentParser,
    add_keyframe_stride,
    check_output_dir,
    number,
    run_command,
)
from evad.errors import ConfigError
from evad.lazy import lazy_import
from evad.live import LIVE_MAX_BAD_FRAMES
from evad.runner import Runner, backend_choices, precision_choices
from evad.runtime.job import (
    INSIDE_OUT,
    JOB_NAME,
    JobProgress,
    check_job_folder,
    plan_job,
    run_job,
)
from evad.runtime.source import ModelRef, Source
from evad.runtime.video_run import DetectOptions, VideoProgress, check_video_id, run_video

if TYPE_CHECKING:
    from evad.runtime import ray_job
else:  # Ray is an extra: loaded for --ray only
    ray_job = lazy_import("evad.runtime.ray_job", "pip install 'evad-deploy[ray]'")

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
  evad-trt-run videos/ --onnx m.onnx --out job/                  # many videos: one job
  evad-trt-run 'clips/**/*.mp4' --onnx m.onnx --out job/ --resume  # redo only unfinished ones
  evad-trt-run list.txt --onnx m.onnx --out job/ --ray           # the job on a local Ray
  evad-trt-run list.txt --onnx m.onnx --out job/ --ray HOST:6379 # ... on a Ray cluster
  evad-trt-run rtsp://cam.local/stream --onnx m.onnx             # live: detections as they come
  evad-trt-run 0 --onnx m.onnx                                   # camera 0

Outputs in --out: detections.csv (AVA format: video_id, timestamp, x1, y1, x2, y2 normalised,
action_id, score; every class >= --csv-min-score), detections.jsonl (one object per keyframe:
time, frame, boxes in pixels, person score, actions >= --action-threshold), run.json (settings,
summary, and each file's size and SHA-256) and with --render annotated.mp4. While running,
detections go to --out/.evad-staging/, flushed per batch; a finished run already in --out is
replaced only when the new one completes. One run at a time per --out (.evad.lock names it).

A job (a directory of videos, a quoted glob, or a list file: one path per line) writes
--out/<video id>/ per video as above, --out/detections.csv (every video's rows, in job order) and
--out/job.json (each video's status, counts and error line); a video that fails is recorded and
the job goes on (exit code 1 at the end). With --resume a video already finished with the same
model and settings is not redone. A live source (camera index, rtsp:// or http:// URL) writes
each keyframe as soon as the clip around it has arrived and prints its latency; Ctrl-C or the
stream stopping ends the run with the detections so far complete.
Set EVAD_DEBUG=1 for tracebacks.
"""


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Detect people and their actions in a video with an EVAD "
        "model: one keyframe per --keyframe-stride seconds, a clip of the model's frames "
        "around each.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", default=None,
                    help="a video file (any container OpenCV reads), a directory of frames, "
                    "many videos (a directory of videos, a quoted glob, a .txt list), a camera "
                    "index or a stream URL (default: the demo video)")
    model = ap.add_argument_group("model (default: the demo model)")
    model.add_argument("--engine", type=Path, help="TensorRT engine")
    model.add_argument("--onnx", type=Path, help="ONNX model from evad-export")
    model.add_argument("--ckpt", type=Path, help="checkpoint, for the torch backend")
    model.add_argument("--backend", choices=backend_choices(), default="auto",
                       help="auto (default): the fastest that is available for the given "
                       "model(s): TensorRT, ONNX Runtime CUDA, torch CUDA, then on the CPU "
                       "ONNX Runtime and torch (fp32) or OpenVINO and torch (bf16)")
    model.add_argument("--precision", choices=precision_choices(), default="fp32",
                       help="CPU compute precision (default fp32); bf16 is the fast CPU path "
                       "on CPUs with AVX512-BF16 or AMX: OpenVINO with --onnx, torch autocast "
                       "with --ckpt (README, 'Speed on a CPU', has its speed and accuracy)")
    model.add_argument("--threads", type=number(0, 1024, integer=True), default=0,
                       help="ONNX Runtime / OpenVINO threads (0 = its default)")
    run = ap.add_argument_group("sampling and detection")
    add_keyframe_stride(run)
    # --batch, as evad-train, evad-bench and evad-parity spell it; --batch-size, this command's
    # first spelling, still parses (hidden from --help)
    batch = number(0, 4096, integer=True)
    run.add_argument("--batch", dest="batch_size", type=batch, default=0,
                     help="clips per backend call (default: 8 on a GPU, 1 on the CPU)")
    run.add_argument("--batch-size", dest="batch_size", type=batch, default=argparse.SUPPRESS,
                     help=argparse.SUPPRESS)
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
    run.add_argument("--live-max-bad-frames", type=number(1, 10**6, integer=True),
                     default=LIVE_MAX_BAD_FRAMES, metavar="N",
                     help="a live source's unreadable frames (a corrupt JPEG, a damaged "
                     "packet) are skipped and counted; N in a row end it (default "
                     f"{LIVE_MAX_BAD_FRAMES})")
    out = ap.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="output folder (default runs/<video id>, for a job runs/); one run "
                     "at a time")
    out.add_argument("--video-id", default=None,
                     help="first CSV column and the default folder name (default: the video "
                     "file's stem); a plain name")
    out.add_argument("--render", action="store_true", help="also write annotated.mp4")
    out.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out (refused if the model, the "
                     "video or a setting changed); in a job: skip each video finished with "
                     "the same model and settings, continue interrupted ones, redo the rest")
    out.add_argument("--quiet", action="store_true", help="no progress bar; only the summary")
    out.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     type=_ray_address,
                     help="run a job of many videos on Ray: a local cluster without ADDRESS, "
                     "else the cluster at ADDRESS (host:port or ray://host:port); one model "
                     "per actor, a GPU per actor when the cluster has GPUs (pip install "
                     "'evad-deploy[ray]')")
    return ap


def _ray_address(text: str) -> str:
    """``--ray ADDRESS``: HOST:PORT, ray://HOST:PORT or auto (an argparse type)."""
    host, sep, port = text.rpartition(":")
    if text in ("", "auto") or text.startswith("ray://") or (sep and host and port.isdigit()):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is no Ray address (HOST:PORT, ray://HOST:PORT or auto); to run on a local "
        "Ray, put the videos before --ray: evad-trt-run VIDEOS --ray")


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
    progress = _Progress()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) and a closed terminal (SIGHUP) end the run like Ctrl-C: the
        # finished keyframes stay resumable (a Ray job puts these back after ray.init)
        previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM,
                                                                     signal.SIGHUP)}
    try:
        return run_command(_PROG, lambda: _run(args, progress, default_video, default_model),
                           interrupted=progress.interrupted)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class _Progress:
    """What the run under way has reached (one video's, or a job's once one is planned):
    what the interrupt message says was left."""

    video: VideoProgress = field(default_factory=VideoProgress)
    job: JobProgress | None = None

    def interrupted(self) -> str:
        if self.job is not None:
            job = self.job
            # before the first video ends (the model loading, Ray starting) no job.json exists
            listed = (f"{job.out / JOB_NAME} lists them; "
                      if (job.out / JOB_NAME).is_file() else "")
            return (f"interrupted after {len(job.results)} of {job.videos} videos; {listed}"
                    "rerun with --resume to go on (finished videos are not redone)")
        writer = self.video.writer
        if writer is not None and writer.committed:
            return (f"interrupted while rendering; the detections are complete in "
                    f"{writer.out_dir}")
        if self.video.resumable and writer is not None:
            return (f"interrupted after {len(writer.records)} keyframes; they are staged in "
                    f"{writer.staging}; rerun with --resume to continue")
        return "interrupted before any keyframe was written; nothing was left"


def _run(args: argparse.Namespace, progress: _Progress, default_video: Default | None,
         default_model: Default | None) -> int:
    q = args.quiet
    # Everything that can refuse the input runs before a file is written.
    video = args.video
    if video is None:
        if default_video is None:
            raise ConfigError("no video: pass a video file, a directory of frames or videos, a "
                              "glob, a list file, a camera index or a stream URL")
        video = str(default_video())
    source = Source.classify(video)
    if source.is_job:
        return _run_job(args, source, default_model, progress)
    if args.ray is not None:
        raise ConfigError("--ray runs jobs of many videos: pass a directory of videos, a glob "
                          "or a list file")
    if source.is_live:
        for flag, given in (("--resume", args.resume), ("--render", args.render)):
            if given:
                raise ConfigError(f"{flag} needs a video file: a live source cannot be read "
                                  "again (record it first, e.g. ffmpeg -i URL -c copy rec.mp4)")
    info = source.open(args.fps)
    if info.is_live:
        info = dataclasses.replace(info, max_bad_frames=args.live_max_bad_frames)
    video_id = check_video_id(info.video_id if args.video_id is None else args.video_id,
                              args.video_id is not None)
    out_dir = args.out if args.out is not None else Path("runs") / video_id
    check_output_dir(out_dir, "--out")
    backend, notes = _open_model(args, _model(args, default_model))
    with backend:
        run_video(info, video_id, out_dir, backend, DetectOptions.from_args(args),
                  resume=args.resume, quiet=q, progress=progress.video, prog=_PROG, notes=notes)
    return 0


def _model(args: argparse.Namespace, default_model: Default | None) -> ModelRef:
    """The model files given (or the demo model) and the run options."""
    onnx, ckpt = args.onnx, args.ckpt
    if args.engine is None and args.onnx is None and args.ckpt is None:
        if args.backend == "torch" and args.default_ckpt is not None:
            ckpt = args.default_ckpt()
        elif default_model is None:
            raise ConfigError("no model: pass --onnx FILE, --engine FILE or --ckpt FILE")
        else:
            onnx = default_model()
    return ModelRef.of(args.engine, onnx, ckpt, args.backend, args.threads, args.precision)


def _open_model(args: argparse.Namespace, model: ModelRef) -> tuple[Runner, list[str]]:
    backend, notes = model.open()
    spec = backend.spec
    _log(f"model {spec.describe()}", args.quiet)
    if spec.synthetic_only and args.video is not None:
        print(f"{_PROG}: warning: {spec.describe()} knows only this project's synthetic stick "
              "figures: on real footage its boxes and actions mean nothing. For real video use "
              "an official EVAD checkpoint (ViT-B / ViT-L on AVA, UCF101-24, JHMDB: the "
              "MCG-NJU/EVAD release) exported with evad-export --ckpt FILE --onnx-only",
              file=sys.stderr)
    return backend, notes


def _run_job(args: argparse.Namespace, source: Source, default_model: Default | None,
             progress: _Progress) -> int:
    q = args.quiet
    if args.video_id is not None:
        raise ConfigError("--video-id names one video; a job names each video by its file")
    # absolute paths: Ray actors resolve paths against their own working folder; not
    # resolved: a link keeps its own name (the video's id), the data read is its target's
    out = (args.out if args.out is not None else Path("runs")).resolve()
    tasks = plan_job([v.absolute() for v in source.videos], out, source.skipped)
    check_job_folder(out, tasks, _PROG)  # before the model opens: what would stop the job
    own = sum(s.reason.startswith(INSIDE_OUT) for s in tasks.skipped)
    if own:
        _log(f"{own} of the videos named lie inside --out {out} (the job's own outputs): not "
             "inputs", q)
    for s in tasks.skipped:  # said even with --quiet, as a failed video is
        if not s.reason.startswith(INSIDE_OUT):
            print(f"{_PROG}: warning: {s.path}: skipped: {s.reason}", file=sys.stderr)
    opts = DetectOptions.from_args(args)
    progress.job = JobProgress(out, len(tasks))
    t0 = time.perf_counter()
    model = _model(args, default_model)
    if args.ray is not None:
        _log(f"{len(tasks)} videos on Ray ({args.ray or 'a local cluster'}) -> {out}", q)
        # checked here (one line, not one per actor that fails to start), absolute for actors
        job = ray_job.run_job_ray(tasks, model.resolved(), opts, out, address=args.ray or None,
                                  resume=args.resume, quiet=q, prog=_PROG,
                                  progress=progress.job)
    else:
        backend, notes = _open_model(args, model)
        if notes:
            _log(f"backend {backend.name} (auto; {'; '.join(notes)})", q)
        _log(f"{len(tasks)} videos -> {out}", q)
        with backend:  # job.json names the files by absolute path, as a Ray job's does
            job = run_job(tasks, backend, opts, out, model=model.resolved(), resume=args.resume,
                          quiet=q, prog=_PROG, progress=progress.job)
    left = f", {len(tasks.skipped)} inputs skipped" if tasks.skipped else ""
    print(f"{_PROG}: job of {job['videos']} videos: {job['done']} done, {job['skipped']} "
          f"already done, {job['failed']} failed{left}; {job['keyframes']} keyframes, "
          f"{job['people']} people, {time.perf_counter() - t0:.1f} s -> {out / 'detections.csv'}"
          f", {out / JOB_NAME}")
    if job["failed"]:
        print(f"{_PROG}: error: {job['failed']} of {job['videos']} videos failed (their errors "
              f"are in {out / JOB_NAME}); rerun with --resume to redo only those",
              file=sys.stderr)
        return 1
    return 0
