"""One video, or many in one job, through a runner into detection folders.

:func:`run_video` is the whole of one video: a lock on its folder, a ``DetectionWriter``, the
detection loop, the files moved into place, the optional render. ``evad-trt-run`` calls it for
a single video; a job calls it once per video, locally (:func:`run_job`) or on Ray actors
(``evad.runtime.ray_job``), and both end in :func:`finish_job`.

A job (a directory of videos, a glob, or a list file) writes ``OUT/<video id>/`` for each video
(the files of a single run), then ``OUT/detections.csv`` (every video's rows, in job order) and
``OUT/job.json`` (each video's status, counts, time and error line). ``--resume`` skips a video
whose folder holds a finished run with the same settings (model content, video content,
options), continues one that was interrupted, and redoes one made with other settings (a changed
model redoes every video). A video that fails is recorded with its error and the job goes on.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evad.atomic import atomic_write, write_json_atomic
from evad.command import check_input_file, check_name, one_line
from evad.errors import ConfigError, EvadError, VideoError
from evad.hashing import content_identity, file_sha256
from evad.run_lock import FolderLock
from evad.runner import Runner
from evad.runtime.backends import open_runner
from evad.runtime.outputs import CSV_NAME, RUN_NAME, STAGING, VIDEO_NAME, DetectionWriter
from evad.runtime.pipeline import KeyframeTiming, detect
from evad.runtime.postprocess import Person
from evad.runtime.preprocess import Preprocessor
from evad.runtime.render import render_video, video_codec
from evad.runtime.sampling import Keyframe, expected_keyframes
from evad.runtime.video import (
    FRAME_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoInfo,
    live_source,
    open_video,
)

__all__ = ["JOB_NAME", "DetectOptions", "VideoTask", "finish_job", "find_videos", "open_model",
           "plan_job", "run_job", "run_task", "run_video"]

#: the job summary in the job's folder
JOB_NAME = "job.json"
#: names in a job folder that no video folder may take
RESERVED = {CSV_NAME, JOB_NAME}
#: list files: one video per line (``#`` starts a comment), paths relative to the list file
LIST_EXTENSIONS = (".txt", ".lst", ".list")


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


def _log(prog: str, msg: str, quiet: bool) -> None:
    if not quiet:
        tqdm.write(f"{prog}: {msg}")


def check_video_id(video_id: str, given: bool) -> str:
    """A video id usable as a folder name and as the CSV's first column."""
    check_name(video_id, "--video-id" if given else "video id")
    if any(c in video_id for c in ',"'):
        raise ConfigError(f"video id {video_id!r} has a comma or quote, which the AVA CSV "
                          "cannot hold: pass --video-id NAME (or rename the file)")
    return video_id


def _settings(info: VideoInfo, backend: Runner, pre: Preprocessor, opts: DetectOptions,
              video_id: str, person_thr: float) -> dict[str, Any]:
    return {
        "model_sha256": backend.spec.sha256, "backend": backend.name,
        "video_identity": ({"live": info.source} if info.is_live
                           else content_identity(info.path)),
        "fps": info.fps, "input_size": list(pre.padded),
        "keyframe_stride": opts.keyframe_stride, "person_threshold": person_thr,
        "keep_all_if_none": opts.keep_all_if_none, "action_threshold": opts.action_threshold,
        "top_k": opts.top_k, "csv_min_score": opts.csv_min_score, "video_id": video_id,
    }


def _preprocessor(info: VideoInfo, backend: Runner) -> Preprocessor:
    spec = backend.spec
    return Preprocessor.create((info.height, info.width), spec.short_side, spec.max_long_side,
                               spec.mean, spec.std, spec.input_size, spec.name)


def run_video(info: VideoInfo, video_id: str, out_dir: Path, backend: Runner,
              opts: DetectOptions, *, resume: bool = False, quiet: bool = False,
              state: dict | None = None, prog: str = "evad-trt-run", bar_position: int = 0,
              notes: Sequence[str] = ()) -> dict[str, Any]:
    """Detect in one video and write ``out_dir`` (CSV, JSONL, run.json, optionally the render).

    Args:
        info: the opened source (``open_video``): a file, a frame directory or a live source.
        video_id: the CSV's first column (checked by the caller).
        out_dir: the output folder; one run at a time (``FolderLock``).
        backend: any runner.
        opts: the detection options.
        resume: continue the interrupted run staged in ``out_dir``.
        quiet: no progress bar, no log lines.
        state: filled with ``writer`` and ``resumable`` for the caller's interrupt message.
        prog: the command name on log lines.
        bar_position: the progress bar's line (a job's video bar is line 0).
        notes: why the backend was chosen (logged).

    Returns:
        The run's summary (``run.json``'s ``summary``) plus ``files``: the outputs' paths.

    Raises:
        EvadError / OSError: the run failed; the finished keyframes stay staged for ``resume``.
        KeyboardInterrupt: as above (a live source instead finishes with what it has).
    """
    state = {} if state is None else state
    t_start = time.perf_counter()
    spec = backend.spec
    pre = _preprocessor(info, backend)
    batch = opts.batch_size or (8 if backend.on_gpu else 1)
    if info.is_live:
        batch = 1  # each keyframe goes out as soon as its clip is in
    person_thr = spec.person_threshold if opts.person_threshold is None else opts.person_threshold
    settings = _settings(info, backend, pre, opts, video_id, person_thr)
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
    created = not out_dir.exists()
    try:
        with FolderLock(out_dir, prog) as lock:
            if lock.taken_over:  # said even with --quiet: another run's leftovers are news
                print(f"{prog}: warning: {lock.taken_over}", file=sys.stderr)
            if resume and not info.is_live and not (out_dir / STAGING).is_dir() and \
                    _resume_mode(out_dir, settings, opts.render) == "done":
                # finished with these settings and nothing staged after it: nothing to
                # continue, and nothing is rewritten
                _log(prog, f"{out_dir} is finished with these settings: nothing to resume", quiet)
                run = _read_json(out_dir / RUN_NAME) or {}
                return {**run.get("summary", {}),
                        "files": [str(out_dir / n) for n in run.get("files", {})]}
            writer = DetectionWriter(out_dir, video_id, spec.labels, settings,
                                     opts.action_threshold, opts.top_k, opts.csv_min_score,
                                     resume=resume, source=source)
            try:
                return _detect_and_write(info, backend, pre, writer, opts, batch, person_thr,
                                         state, quiet, prog, bar_position, t_start)
            except BaseException:
                state["resumable"] = writer.abandon()
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
                      person_thr: float, state: dict, quiet: bool, prog: str,
                      bar_position: int, t_start: float) -> dict[str, Any]:
    state["writer"] = writer
    writer.open()
    if writer.resume_note:
        _log(prog, writer.resume_note, quiet)
    total = (None if info.is_live else
             expected_keyframes(info.duration_s - 1.0 / info.fps, opts.keyframe_stride))
    stopped = False
    with tqdm(total=None if total is None else max(total, writer.resumed),
              initial=writer.resumed, desc="detect", unit="kf", disable=quiet or info.is_live,
              leave=False, dynamic_ncols=True, position=_line(bar_position)) as bar:
        try:
            stats = detect(info, backend, pre, writer, keyframe_stride_s=opts.keyframe_stride,
                           batch_size=batch, person_threshold=person_thr,
                           keep_all_if_none=opts.keep_all_if_none, on_batch=bar.update,
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
                  leave=False, dynamic_ncols=True, position=_line(bar_position)) as bar:
            render_video(info, writer.records, writer.staged_path(VIDEO_NAME),
                         on_frame=bar.update)
        files.append(writer.add_output(VIDEO_NAME))
    rate = f", {stats.clips_per_s:.2f} clips/s" if stats is not None else ""
    if not quiet or bar_position == 0:
        tqdm.write(f"{prog}: {summary['keyframes']} keyframes"
                   + (f" ({writer.resumed} resumed)" if writer.resumed else "")
                   + f", {summary['people']} people{rate}, backend {backend.name}, "
                   f"{time.perf_counter() - t_start:.1f} s -> "
                   + ", ".join(str(f) for f in files))
    return {**summary, "files": [str(f) for f in files]}


def open_model(model: dict[str, Any]) -> Runner:
    """The runner for ``model`` (``engine``, ``onnx``, ``ckpt``: paths or None; ``backend``,
    ``threads``, ``precision``), as ``evad-trt-run`` opens it; a Ray actor opens its own."""
    def path(key: str) -> Path | None:
        return Path(model[key]) if model.get(key) else None

    runner, _ = open_runner(model.get("backend", "auto"), engine=path("engine"),
                            onnx=path("onnx"), ckpt=path("ckpt"),
                            threads=model.get("threads", 0), shrink_arena=True,
                            precision=model.get("precision", "fp32"))
    return runner


# -- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoTask:
    """One video of a job: where it is, its id (the CSV column and folder name), its folder."""

    video: str
    video_id: str
    out_dir: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def find_videos(source: str) -> list[Path] | None:
    """The videos a job argument names, or None when ``source`` is one video (a file, a frame
    directory, a live source).

    A job is: a directory with video files (``VIDEO_EXTENSIONS``), a glob (``'clips/*.mp4'``,
    ``**`` recursive; files with a video ending only), or a list file (``LIST_EXTENSIONS``: one
    path per line, ``#`` starts a comment at a line's start or after a space, relative paths
    from the list's folder). Sorted by path, except a list file, which keeps its order.

    Raises:
        VideoError: a directory with neither videos nor frames, or with both.
        ConfigError: a glob that matches no video, a list file that names none or names a
            missing file.
    """
    if live_source(source) is not None:  # a URL may hold '?' or '[': no glob
        return None
    p = Path(source)
    if p.is_dir():
        entries = [q for q in p.iterdir() if q.is_file()]
        images = sum(q.suffix.lower() in FRAME_EXTENSIONS for q in entries)
        videos = sorted(q for q in entries if q.suffix.lower() in VIDEO_EXTENSIONS)
        if images and videos:
            raise VideoError(f"directory {p} holds {len(videos)} videos and {images} images: "
                             "a job of videos or a video as frames? Move one kind out, or "
                             f"name the videos with a glob ('{p}/*.mp4')")
        if images:
            return None  # a frame directory
        if not videos:
            raise VideoError(f"directory {p} has no frames (images ending in "
                             f"{', '.join(FRAME_EXTENSIONS)}) and no videos (files ending in "
                             f"{', '.join(VIDEO_EXTENSIONS)})")
        return videos
    if p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
        check_input_file(p, "video list")
        videos = []
        for n, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
            if not line:
                continue
            q = Path(line) if Path(line).is_absolute() else p.parent / line
            if not q.exists():
                raise ConfigError(f"{p} line {n}: {q} does not exist")
            videos.append(q)
        if not videos:
            raise ConfigError(f"video list {p} names no video (one path per line)")
        return videos
    if not p.exists() and _is_glob(source):
        videos = sorted(Path(m) for m in glob.glob(source, recursive=True)
                        if Path(m).is_file() and Path(m).suffix.lower() in VIDEO_EXTENSIONS)
        if not videos:
            raise ConfigError(f"{source!r} matches no video (files ending in "
                              f"{', '.join(VIDEO_EXTENSIONS)}; quote the pattern so the shell "
                              "leaves it to evad-trt-run)")
        return videos
    return None


def plan_job(videos: Sequence[Path], out: Path) -> list[VideoTask]:
    """One task per video, its folder ``out/<video id>``.

    Raises:
        ConfigError: a video id that is no plain name or has a comma, or two videos with one
            id (their folders and CSV rows would mix).
    """
    seen: dict[str, Path] = {}
    tasks = []
    for v in videos:
        vid = check_video_id(v.name if v.is_dir() else v.stem, False)
        if vid in RESERVED or vid.startswith("."):
            raise ConfigError(f"{v}: its id {vid!r} is a name the job's folder uses itself "
                              f"({', '.join(sorted(RESERVED))}, dot files); rename the video")
        if vid in seen:
            raise ConfigError(f"{seen[vid]} and {v} have the same video id {vid!r}: their "
                              "folders and CSV rows would mix; rename one")
        seen[vid] = v
        tasks.append(VideoTask(str(v), vid, str(out / vid)))
    return tasks


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _resume_mode(out_dir: Path, settings: dict[str, Any], render: bool) -> str:
    """``done``: a finished run with these settings is there, its files in place (and its
    render, when one is asked for); ``resume``: an interrupted one; ``fresh``: nothing of these
    settings (a changed model or option starts again)."""
    run = _read_json(out_dir / RUN_NAME)
    if run and run.get("complete") and run.get("settings") == settings and all(
            (out_dir / n).is_file() for n in run.get("files", {})) and (
            not render or VIDEO_NAME in run.get("files", {})):
        return "done"
    staged = _read_json(out_dir / STAGING / RUN_NAME)
    if staged and staged.get("settings") == settings:
        return "resume"
    return "fresh"


def run_task(task: VideoTask, backend: Runner, opts: DetectOptions, *, resume: bool,
             quiet: bool = True, prog: str = "evad-trt-run", bar_position: int = 1
             ) -> dict[str, Any]:
    """Run one video of a job; never raises for the video's own failure.

    Returns:
        ``{video, video_id, out, status ("done" | "skipped" | "failed"), keyframes, people,
        seconds, error}``; ``skipped``: a finished run with the same settings was there.
    """
    t0 = time.perf_counter()
    res: dict[str, Any] = {**asdict(task), "status": "failed", "keyframes": 0, "people": 0,
                           "seconds": 0.0, "error": ""}
    del res["out_dir"]
    res["out"] = task.out_dir
    try:
        info = open_video(task.video, opts.fps)
        out_dir = Path(task.out_dir)
        mode = "fresh"
        if resume:
            pre = _preprocessor(info, backend)
            spec = backend.spec
            thr = spec.person_threshold if opts.person_threshold is None else \
                opts.person_threshold
            mode = _resume_mode(out_dir, _settings(info, backend, pre, opts, task.video_id, thr),
                                opts.render)
        if mode == "done":
            summary = _read_json(out_dir / RUN_NAME) or {}
            s = summary.get("summary", {})
            res.update(status="skipped", keyframes=s.get("keyframes", 0),
                       people=s.get("people", 0))
        else:
            s = run_video(info, task.video_id, out_dir, backend, opts, resume=mode == "resume",
                          quiet=quiet, prog=prog, bar_position=bar_position)
            res.update(status="done", keyframes=s["keyframes"], people=s["people"])
    except Exception as e:  # noqa: BLE001 - the video's failure is recorded, the job goes on
        res["error"] = (one_line(e) if isinstance(e, (EvadError, OSError))
                        else f"{type(e).__name__}: {one_line(e)[:300]}")
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def run_job(tasks: Sequence[VideoTask], backend: Runner, opts: DetectOptions, out: Path, *,
            resume: bool = False, quiet: bool = False, prog: str = "evad-trt-run",
            model: dict[str, Any] | None = None, state: dict | None = None) -> dict[str, Any]:
    """Every task in turn with one runner, a progress bar over the videos, then
    :func:`finish_job`. Interrupted (Ctrl-C): the summary of what finished is written, marked
    incomplete, and the interrupt goes on; ``state["results"]`` holds the finished videos for
    the caller's message."""
    results: list[dict[str, Any]] = []
    if state is not None:
        state["results"] = results
    with FolderLock(out, prog), tqdm(total=len(tasks), desc="videos", unit="video",
                                     disable=quiet, dynamic_ncols=True, position=0) as bar:
        try:
            for task in tasks:
                res = run_task(task, backend, opts, resume=resume, quiet=quiet, prog=prog)
                results.append(res)
                if res["status"] == "failed":
                    tqdm.write(f"{prog}: {task.video}: failed: {res['error']}", file=sys.stderr)
                bar.update(1)
        except KeyboardInterrupt:
            finish_job(out, tasks, results, model or {}, complete=False)
            raise
        return finish_job(out, tasks, results, model or {})


def finish_job(out: Path, tasks: Sequence[VideoTask], results: Sequence[dict[str, Any]],
               model: dict[str, Any], complete: bool = True) -> dict[str, Any]:
    """Write ``out/detections.csv`` (the finished videos' rows, in task order) and
    ``out/job.json``; both whole or not at all. Returns the job summary."""
    by_video = {r["video_id"]: dict(r) for r in results}
    ordered = [by_video[t.video_id] for t in tasks if t.video_id in by_video]
    merged = out / CSV_NAME
    with atomic_write(merged, "w", newline="") as dst:
        for r in ordered:
            if r["status"] == "failed":
                continue
            try:
                dst.write((Path(r["out"]) / CSV_NAME).read_text(encoding="utf-8"))
            except OSError as e:  # removed under us: that video is not in the merged file
                r.update(status="failed", error=one_line(e))
    counts = {k: sum(r["status"] == k for r in ordered) for k in ("done", "skipped", "failed")}
    summary = {"complete": complete and len(ordered) == len(tasks), "videos": len(tasks),
               **counts, "not_run": len(tasks) - len(ordered),
               "keyframes": sum(r["keyframes"] for r in ordered),
               "people": sum(r["people"] for r in ordered), "model": model,
               "merged_csv": {"file": CSV_NAME, "bytes": merged.stat().st_size,
                              "sha256": file_sha256(merged)},
               "results": list(ordered)}
    write_json_atomic(out / JOB_NAME, summary)
    return summary
