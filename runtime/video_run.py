"""One video through a runner into one detection folder: :func:`run_video`.

:func:`run_video` is the whole of one video: a lock on its folder, a ``DetectionWriter``, the
detection loop, the files moved into place, the optional render. Everything that runs videos
calls it: ``evad-trt-run`` on one video, a job's every video (``evad.runtime.job.run_task``,
locally or in a Ray actor) and the Triton ``evad`` model, so their folders are byte for byte
what a single run writes. Jobs of many videos are ``evad.runtime.job``'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evad.command import check_name, is_text
from evad.errors import ConfigError, EvadError
from evad.hashing import content_identity
from evad.preprocess import Preprocessor
from evad.run_lock import FolderLock
from evad.runner import ModelSpec, Runner
from evad.runtime.detection import PersonRule
from evad.runtime.outputs import VIDEO_NAME, DetectionWriter
from evad.runtime.pipeline import KeyframeTiming, detect
from evad.runtime.postprocess import Person
from evad.runtime.render import render_video, video_codec
from evad.runtime.staging import STAGING, ResumeMode, folder_mode, read_run
from evad.sampling import Keyframe, expected_keyframes
from evad.video import VideoInfo

__all__ = ["DetectOptions", "VideoOutcome", "VideoProgress", "check_video_id",
           "finished_outcome", "resume_mode", "run_video"]

@dataclass(frozen=True)
class DetectOptions:
    """The options that shape a run's detections (all recorded; all but ``render`` and
    ``batch_size`` compared on resume). Units: seconds, probabilities, frames/s."""

    keyframe_stride: float = 1.0
    batch_size: int = 0  # 0: 8 on a GPU, 1 on the CPU
    person_threshold: float | None = None  # None: the model's
    keep_all_if_none: bool = False
    action_threshold: float = 0.5
    top_k: int = 5
    csv_min_score: float = 0.0
    fps: float | None = None  # a frame directory's rate
    render: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DetectOptions:
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})

    def rule(self, spec: ModelSpec) -> PersonRule:
        """Which proposals are people for the model ``spec`` describes."""
        return PersonRule.for_model(spec, self.person_threshold, self.keep_all_if_none)


@dataclass
class VideoProgress:
    """How far a run of one video got, for its caller's interrupt message; owned by the
    caller, filled by :func:`run_video` as it goes.

    writer: the run's writer once the folder is taken (its ``records``, ``staging`` and
        ``committed`` say what is where); None before.
    resumable: after a failure or interrupt, finished keyframes stay staged for ``--resume``.
    """

    writer: DetectionWriter | None = None
    resumable: bool = False


@dataclass(frozen=True)
class VideoOutcome:
    """A finished run of one video.

    summary: ``run.json``'s ``summary`` (``keyframes``, ``people``, ``backend``, ``batch``,
        timings in seconds, ``clips_per_s``).
    files: the outputs in the run's folder (CSV, JSONL, the render).
    """

    summary: dict[str, Any]
    files: tuple[Path, ...]

    @property
    def keyframes(self) -> int:
        return int(self.summary.get("keyframes", 0))

    @property
    def people(self) -> int:
        return int(self.summary.get("people", 0))


def _log(prog: str, msg: str, quiet: bool) -> None:
    if not quiet:
        tqdm.write(f"{prog}: {msg}")


def check_video_id(video_id: str, given: bool) -> str:
    """A video id usable as a folder name and as the CSV's first column."""
    check_name(video_id, "--video-id" if given else "video id")
    if not is_text(video_id):
        raise ConfigError(f"--video-id {video_id!r} is not UTF-8 text, which the CSV and JSON "
                          "files need: pass a name in UTF-8")
    if any(c in video_id for c in ',"'):
        raise ConfigError(f"video id {video_id!r} has a comma or quote, which the AVA CSV "
                          "cannot hold: pass --video-id NAME (or rename the file)")
    return video_id


def _settings(info: VideoInfo, backend: Runner, pre: Preprocessor, opts: DetectOptions,
              video_id: str) -> dict[str, Any]:
    return {
        "model_sha256": backend.spec.sha256, "backend": backend.name,
        "video_identity": ({"live": info.source} if info.is_live
                           else content_identity(info.path)),
        "fps": info.fps, "input_size": list(pre.padded),
        "keyframe_stride": opts.keyframe_stride,
        "person_threshold": opts.rule(backend.spec).threshold,
        "keep_all_if_none": opts.keep_all_if_none, "action_threshold": opts.action_threshold,
        "top_k": opts.top_k, "csv_min_score": opts.csv_min_score, "video_id": video_id,
    }


def _mode(out_dir: Path, settings: dict[str, Any], render: bool) -> ResumeMode:
    return folder_mode(out_dir, settings, (VIDEO_NAME,) if render else ())


def resume_mode(info: VideoInfo, video_id: str, out_dir: Path, backend: Runner,
                opts: DetectOptions) -> tuple[ResumeMode, dict[str, Any]]:
    """What ``out_dir`` holds for a run of ``info`` with these settings (model content, video
    content, options): ``done``: a finished run, its files in place (and its render, when one
    is asked for); ``resume``: an interrupted one, staged; ``fresh``: nothing of these settings
    (a changed model or option starts again). Also the settings, for ``run_video`` (the video's
    content identity is read once)."""
    pre = Preprocessor.for_model(backend.spec, (info.height, info.width))
    settings = _settings(info, backend, pre, opts, video_id)
    return _mode(out_dir, settings, opts.render), settings


def finished_outcome(out_dir: Path) -> VideoOutcome:
    """The finished run in ``out_dir`` as its ``run.json`` records it (empty if unreadable)."""
    run = read_run(out_dir)
    return VideoOutcome(run.get("summary", {}), tuple(out_dir / n for n in run.get("files", {})))


def run_video(info: VideoInfo, video_id: str, out_dir: Path, backend: Runner,
              opts: DetectOptions, *, resume: bool = False, quiet: bool = False,
              progress: VideoProgress | None = None, prog: str = "evad-trt-run",
              bar_position: int = 0, notes: Sequence[str] = (),
              settings: dict[str, Any] | None = None) -> VideoOutcome:
    """Detect in one video and write ``out_dir`` (CSV, JSONL, run.json, optionally the render).

    Args:
        info: the opened source (``Source.open`` / ``open_video``): a file, a frame directory or
            a live source.
        video_id: the CSV's first column (checked by the caller).
        out_dir: the output folder; one run at a time (``FolderLock``).
        backend: any runner.
        opts: the detection options.
        resume: continue the interrupted run staged in ``out_dir``.
        quiet: no progress bar, no log lines.
        progress: filled as the run goes, for the caller's interrupt message.
        prog: the command name on log lines.
        bar_position: the progress bar's line (a job's video bar is line 0).
        notes: why the backend was chosen (logged).
        settings: this run's settings when the caller has them (``resume_mode``'s).

    Returns:
        The run's summary and files; with ``resume`` and a run finished with these settings
        already there, that run's (nothing is rewritten).

    Raises:
        EvadError / OSError: the run failed; the finished keyframes stay staged for ``resume``.
        KeyboardInterrupt: as above (a live source instead finishes with what it has).
    """
    progress = VideoProgress() if progress is None else progress
    t_start = time.perf_counter()
    spec = backend.spec
    pre = Preprocessor.for_model(spec, (info.height, info.width))
    batch = opts.batch_size or (8 if backend.on_gpu else 1)
    if info.is_live:
        batch = 1  # each keyframe goes out as soon as its clip is in
    if settings is None:
        settings = _settings(info, backend, pre, opts, video_id)
    source = {"video": info.source if info.is_live else str(info.path.resolve()),
              "model": spec.name}
    if info.is_live:
        src = f"live, {info.codec}, {info.fps:.3g} fps announced"
    elif info.is_directory:
        src = f"{len(info.frames)} frames at an assumed {info.fps:g} fps"
    else:
        src = f"{info.codec}, {info.fps:.3g} fps, ~{info.duration_s:.1f} s"
    _log(prog, f"video {info.source}: {info.height}x{info.width} (H x W), {src}", quiet)
    _log(prog, f"backend {backend.name}" + (f" (auto; {'; '.join(notes)})" if notes else "")
         + f"; frames resized to {pre.resized[0]}x{pre.resized[1]}, padded to the input "
         f"{pre.padded[0]}x{pre.padded[1]} (H x W), batch {batch}", quiet)
    note = pre.note(spec.name)
    if note:
        _log(prog, note, quiet)
    created = not out_dir.exists()
    try:
        with FolderLock(out_dir, prog) as lock:
            if lock.taken_over:  # said even with --quiet: another run's leftovers are news
                print(f"{prog}: warning: {lock.taken_over}", file=sys.stderr)
            if resume and not info.is_live and not (out_dir / STAGING).is_dir() and \
                    _mode(out_dir, settings, opts.render) == "done":
                # finished with these settings and nothing staged after it: nothing to
                # continue, and nothing is rewritten
                _log(prog, f"{out_dir} is finished with these settings: nothing to resume", quiet)
                return finished_outcome(out_dir)
            writer = DetectionWriter(out_dir, video_id, spec.labels, settings,
                                     opts.action_threshold, opts.top_k, opts.csv_min_score,
                                     resume=resume, source=source)
            try:
                return _detect_and_write(info, backend, pre, writer, opts, batch,
                                         progress, quiet, prog, bar_position, t_start)
            except BaseException:
                progress.resumable = writer.abandon()
                raise
    finally:  # a folder this run made and left empty is not left behind
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _live_line(prog: str, quiet: bool) -> Callable[[Keyframe, list[Person], KeyframeTiming],
                                                   None]:
    def line(kf: Keyframe, people: list[Person], t: KeyframeTiming) -> None:
        if not quiet:
            print(f"{prog}: keyframe {kf.time_s:g} s: {len(people)} "
                  f"{'person' if len(people) == 1 else 'people'}, latency {t.latency_s:.2f} s "
                  f"(clip {t.clip_s:.2f} s + queue {t.queue_s:.2f} s + inference "
                  f"{t.inference_s:.2f} s + write {t.write_s:.2f} s)", flush=True)
    return line


def _line(position: int) -> int | None:
    """A progress bar's screen line: on a terminal, ``position`` (a job's bars stack); in a log
    (not a terminal) none, since tqdm moves the cursor up (ESC [A) to reach a line > 0."""
    return position if sys.stderr.isatty() else None


def _detect_and_write(info: VideoInfo, backend: Runner, pre: Preprocessor,
                      writer: DetectionWriter, opts: DetectOptions, batch: int,
                      progress: VideoProgress, quiet: bool, prog: str,
                      bar_position: int, t_start: float) -> VideoOutcome:
    progress.writer = writer
    writer.open()
    if writer.resume_note:
        _log(prog, writer.resume_note, quiet)
    total = (None if info.is_live else
             expected_keyframes(info.duration_s - 1.0 / info.fps, opts.keyframe_stride))
    stopped = False
    with tqdm(total=None if total is None else max(total, writer.resumed),
              initial=writer.resumed, desc="detect", unit="kf", disable=quiet or info.is_live,
              leave=False, dynamic_ncols=True, position=_line(bar_position)) as bar:
        def advance(n: int) -> None:  # tqdm's update returns a bool the callback type has not
            bar.update(n)

        try:
            stats = detect(info, backend, pre, writer, keyframe_stride_s=opts.keyframe_stride,
                           batch_size=batch, rule=opts.rule(backend.spec), on_batch=advance,
                           on_keyframe=_live_line(prog, quiet) if info.is_live else None)
        except KeyboardInterrupt:
            if not (info.is_live and writer.records):
                raise
            # Ctrl-C is how a live run ends: what was written is a complete result.
            stats, stopped = None, True
    if not writer.records:
        raise EvadError(f"{info.source} gave no keyframes (no frame decoded)")
    files = [writer.csv_path, writer.jsonl_path]
    summary: dict[str, Any] = {
        "keyframes": len(writer.records), "keyframes_resumed": writer.resumed,
        "people": sum(len(r["people"]) for r in writer.records), "backend": backend.name,
        "batch": batch,
    }
    if stats is not None:
        summary.update({
            "clips_per_s": round(stats.clips_per_s, 3), "detect_s": round(stats.wall_s, 3),
            "inference_s": round(stats.inference_s, 3), "decode_s": round(stats.producer_s, 3),
            "frames": stats.frames})
    if stopped:
        summary["stopped"] = "Ctrl-C"
        writer.finish_interrupted(summary)
    else:
        writer.finish(summary)
    if opts.render:
        if video_codec() != "h264":
            _log(prog, "note: PyAV with libx264 is missing, so annotated.mp4 is MPEG-4 Part 2 "
                 "(mp4v), which browsers do not play: pip install av", quiet)
        with tqdm(total=info.frame_count, desc="render", unit="frame", disable=quiet,
                  leave=False, dynamic_ncols=True, position=_line(bar_position)) as frames:
            def frame_done() -> None:
                frames.update(1)

            render_video(info, writer.records, writer.staged_path(VIDEO_NAME),
                         on_frame=frame_done)
        files.append(writer.add_output(VIDEO_NAME))
    rate = f", {stats.clips_per_s:.2f} clips/s" if stats is not None else ""
    if not quiet or bar_position == 0:
        tqdm.write(f"{prog}: {summary['keyframes']} keyframes"
                   + (f" ({writer.resumed} resumed)" if writer.resumed else "")
                   + f", {summary['people']} people{rate}, backend {backend.name}, "
                   f"{time.perf_counter() - t_start:.1f} s -> "
                   + ", ".join(str(f) for f in files))
    return VideoOutcome(summary, tuple(files))
