"""Jobs of many videos: plan them, run each through :func:`run_task`, finish the job folder.

A job (a directory of videos, a glob, or a list file: ``evad.runtime.source.Source`` resolves
it) writes ``OUT/<video id>/`` for each video (the files of a single run, made by
``evad.runtime.video_run.run_video``), then ``OUT/detections.csv`` (every video's rows, in job
order) and ``OUT/job.json`` (each video's status, counts, time and error line, and the model).
``--resume`` skips a video whose folder holds a finished run with the same settings (model
content, video content, options), continues one that was interrupted, and redoes one made with
other settings (a changed model redoes every video). A video that fails is recorded with its
error and the job goes on. :func:`run_job` runs a job in this process; ``evad.runtime.ray_job``
runs the same :func:`run_task` on Ray actors; both end in :func:`finish_job`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from evad.atomic import atomic_write, write_json_atomic
from evad.command import check_output_dir, one_line, text_name
from evad.errors import ConfigError, EvadError
from evad.hashing import file_sha256
from evad.run_lock import LOCK_NAME, FolderLock
from evad.runner import Runner
from evad.runtime.outputs import CSV_NAME
from evad.runtime.source import ModelRef, SkippedInput
from evad.runtime.video_run import (
    DetectOptions,
    check_video_id,
    finished_outcome,
    resume_mode,
    run_video,
)
from evad.video import open_video

__all__ = ["JOB_NAME", "JobPlan", "JobProgress", "JobRun", "TaskResult", "TaskStatus",
           "VideoTask", "check_job_folder", "finish_job", "plan_job", "run_job", "run_task"]

#: the job summary in the job's folder
JOB_NAME = "job.json"
#: names in a job folder that no video folder may take
RESERVED = {CSV_NAME, JOB_NAME}
#: how a skipped video inside the job's own ``--out`` is said
INSIDE_OUT = "inside --out"

#: ``done``: run now; ``skipped``: a finished run with the same settings was there;
#: ``failed``: its error is recorded
TaskStatus = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class VideoTask:
    """One video of a job: where it is, its id (the CSV column and folder name), its folder."""

    video: str
    video_id: str
    out_dir: str


@dataclass(frozen=True)
class TaskResult:
    """One video's line in ``job.json``'s ``results``.

    video, video_id: as the task. status: :data:`TaskStatus`. keyframes, people: counts of
    its detections. seconds: wall time of the task. error: the failure's one line ("" when
    none). out: the video's folder.
    """

    video: str
    video_id: str
    status: TaskStatus = "failed"
    keyframes: int = 0
    people: int = 0
    seconds: float = 0.0
    error: str = ""
    out: str = ""

    @classmethod
    def failed(cls, task: VideoTask, error: str, seconds: float = 0.0) -> TaskResult:
        return cls(task.video, task.video_id, "failed", seconds=seconds, error=error,
                   out=task.out_dir)

    def to_json(self) -> dict[str, Any]:
        """``{video, video_id, status, keyframes, people, seconds, error, out}``."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TaskResult:
        """The inverse of :meth:`to_json`."""
        return cls(**obj)


@dataclass(frozen=True)
class JobRun:
    """How a job ran, recorded beside its :class:`ModelRef` in ``job.json``'s ``model``.

    name, sha256: the model opened (``ModelSpec.name``, its file's SHA-256); runner: the
        backend that ran it (``Runner.name``); None where no model was opened yet.
    ray: the Ray cluster (its address, or ``local``); None for a job in this process.
    actors: model sessions that ran the videos (1 in this process).
    gpus_per_actor: GPUs each session held (0 or 1).
    """

    name: str | None = None
    sha256: str | None = None
    runner: str | None = None
    ray: str | None = None
    actors: int = 1
    gpus_per_actor: int = 0

    @classmethod
    def of(cls, runner: Runner, **where: Any) -> JobRun:
        """What ``runner`` is, and where it ran (``ray``, ``actors``, ``gpus_per_actor``)."""
        return cls(runner.spec.name, runner.spec.sha256, runner.name, **where)


@dataclass
class JobProgress:
    """How far a job got, for its caller's interrupt message; owned by the caller, filled by
    :func:`run_job` / ``run_job_ray`` as videos finish.

    out: the job folder. videos: how many the job has. results: the finished ones, in the
    order they finished.
    """

    out: Path
    videos: int
    results: list[TaskResult] = field(default_factory=list)


class JobPlan(list[VideoTask]):
    """A job's tasks in job order (a list: what :func:`run_job` and ``run_job_ray`` iterate),
    and the entries named that are no task, each with why (``skipped``: :class:`SkippedInput`;
    :func:`finish_job` lists them in ``job.json``, so a job on Ray lists them too)."""

    def __init__(self, tasks: Iterable[VideoTask] = (),
                 skipped: Iterable[SkippedInput] = ()) -> None:
        super().__init__(tasks)
        self.skipped = tuple(skipped)


def plan_job(videos: Sequence[Path], out: Path, skipped: Sequence[SkippedInput] = ()
             ) -> JobPlan:
    """One task per video, its folder ``out/<video id>``, the id from the name the video was
    given by (a link's own name, not its target's; the data read is the target's). Videos
    inside ``out`` are the job's own outputs (a render, when ``--out`` lies in the globbed
    tree): never inputs, they join ``skipped``.

    Args:
        videos: the videos as named (``Source.videos``; absolute for a job that Ray runs).
        out: the job folder.
        skipped: what the input named that is no video it can read (``Source.skipped``).

    Raises:
        ConfigError: a video id that is no plain name or has a comma, two videos with one id
            (their folders and CSV rows would mix), or no video outside ``out``.
    """
    seen: dict[str, Path] = {}
    tasks = []
    root = out.resolve()
    inside = {v for v in videos if v.resolve().is_relative_to(root)}
    if inside and len(inside) == len(videos):
        raise ConfigError(f"every video named lies inside --out {out}: those are a job's own "
                          "outputs; name the input videos, or choose another --out")
    for v in videos:
        if v in inside:
            continue
        # a name that is not UTF-8 keeps its bytes as %XX, as a single run of it does
        vid = check_video_id(text_name(v.name if v.is_dir() else v.stem), False)
        if vid in RESERVED or vid.startswith("."):
            raise ConfigError(f"{v}: its id {vid!r} is a name the job's folder uses itself "
                              f"({', '.join(sorted(RESERVED))}, dot files); rename the video")
        if vid in seen:
            raise ConfigError(f"{seen[vid]} and {v} have the same video id {vid!r}: their "
                              "folders and CSV rows would mix; rename one")
        seen[vid] = v
        tasks.append(VideoTask(str(v), vid, str(out / vid)))
    own = [SkippedInput(str(v), f"{INSIDE_OUT} {out}: the job's own output")
           for v in videos if v in inside]
    return JobPlan(tasks, sorted([*skipped, *own], key=lambda s: s.path))


def check_job_folder(out: Path, tasks: Sequence[VideoTask], prog: str = "evad-trt-run"
                     ) -> None:
    """Refuse now, before a model opens or a video runs, what would stop the job later: an
    ``out`` that is a file or not writable, a folder where ``job.json``, the merged CSV or the
    lock file goes (found before only after every video ran), a file where a video's folder
    goes, and another run holding ``out``. One line naming the path; nothing is written (a
    stale lock file is taken and dropped).

    Raises:
        ConfigError: a place taken by the wrong kind of entry.
        EvadError: ``out`` not a writable folder (``check_output_dir``); ``FolderBusyError``:
            another live run holds ``out``.
    """
    check_output_dir(out, "--out")
    for name, what in ((JOB_NAME, "the job summary"), (CSV_NAME, "the merged CSV")):
        p = out / name  # written whole by a rename, which only a folder blocks (not a link)
        if p.is_dir() and not p.is_symlink():
            raise ConfigError(f"{p} is a folder, where the job writes {what}: remove or "
                              "rename it, or choose another --out")
    lock = out / LOCK_NAME  # opened (links followed) and written in place
    if lock.exists() and not lock.is_file():
        kind = "a folder" if lock.is_dir() else "not a regular file"
        raise ConfigError(f"{lock} is {kind}, where the job writes the lock: remove or rename "
                          "it, or choose another --out")
    for t in tasks:
        d = Path(t.out_dir)
        if os.path.lexists(d) and not d.is_dir():
            raise ConfigError(f"{d} is a file, where the job writes the folder of {t.video}: "
                              "remove or rename it, or choose another --out")
    if lock.is_file():  # held by a live run? said now, not after the model opens
        FolderLock(out, prog).acquire().release()


def run_task(task: VideoTask, backend: Runner, opts: DetectOptions, *, resume: bool,
             quiet: bool = True, prog: str = "evad-trt-run", bar_position: int = 1
             ) -> TaskResult:
    """Run one video of a job; never raises for the video's own failure (it is the result's
    ``failed`` status and ``error``)."""
    t0 = time.perf_counter()
    try:
        info = open_video(Path(task.video), opts.fps)
        out_dir = Path(task.out_dir)
        mode, settings = resume_mode(info, task.video_id, out_dir, backend, opts) if resume \
            else ("fresh", None)
        status: TaskStatus = "skipped" if mode == "done" else "done"
        outcome = finished_outcome(out_dir) if mode == "done" else run_video(
            info, task.video_id, out_dir, backend, opts, resume=mode == "resume", quiet=quiet,
            prog=prog, bar_position=bar_position, settings=settings)
        res = TaskResult(task.video, task.video_id, status, outcome.keyframes, outcome.people,
                         out=task.out_dir)
    except Exception as e:  # noqa: BLE001 - the video's failure is recorded, the job goes on
        res = TaskResult.failed(task, one_line(e) if isinstance(e, (EvadError, OSError))
                                else f"{type(e).__name__}: {one_line(e)[:300]}")
    return replace(res, seconds=round(time.perf_counter() - t0, 3))


def run_job(tasks: Sequence[VideoTask], backend: Runner, opts: DetectOptions, out: Path, *,
            model: ModelRef, resume: bool = False, quiet: bool = False,
            prog: str = "evad-trt-run", progress: JobProgress | None = None) -> dict[str, Any]:
    """Every task in turn with one runner, a progress bar over the videos, then
    :func:`finish_job`. Interrupted (Ctrl-C): the summary of what finished is written, marked
    incomplete, and the interrupt goes on; ``progress.results`` holds the finished videos for
    the caller's message.

    Args:
        model: what ``backend`` was opened from (recorded in ``job.json``).
    """
    progress = JobProgress(out, len(tasks)) if progress is None else progress
    results = progress.results
    ran = JobRun.of(backend, gpus_per_actor=int(backend.on_gpu))
    with FolderLock(out, prog), tqdm(total=len(tasks), desc="videos", unit="video",
                                     disable=quiet, dynamic_ncols=True, position=0) as bar:
        try:
            for task in tasks:
                res = run_task(task, backend, opts, resume=resume, quiet=quiet, prog=prog)
                results.append(res)
                if res.status == "failed":
                    tqdm.write(f"{prog}: {task.video}: failed: {res.error}", file=sys.stderr)
                bar.update(1)
        except KeyboardInterrupt:
            finish_job(out, tasks, results, model, ran, complete=False)
            raise
        return finish_job(out, tasks, results, model, ran)


def finish_job(out: Path, tasks: Sequence[VideoTask], results: Sequence[TaskResult],
               model: ModelRef, ran: JobRun, complete: bool = True) -> dict[str, Any]:
    """Write ``out/detections.csv`` (the finished videos' rows, in task order) and
    ``out/job.json``; both whole or not at all. Returns the job summary (``job.json``'s
    content): counts, ``model`` (the :class:`ModelRef` and the :class:`JobRun`),
    ``skipped_inputs`` (a :class:`JobPlan`'s ``skipped``: ``{path, reason}`` each, by path;
    empty for plain tasks), ``results`` (each :class:`TaskResult`, in task order)."""
    by_video = {r.video_id: r for r in results}
    ordered = [by_video[t.video_id] for t in tasks if t.video_id in by_video]
    merged = out / CSV_NAME
    with atomic_write(merged, "w", newline="") as dst:
        for i, r in enumerate(ordered):
            if r.status == "failed":
                continue
            try:
                dst.write((Path(r.out) / CSV_NAME).read_text(encoding="utf-8"))
            except OSError as e:  # removed under us: that video is not in the merged file
                ordered[i] = replace(r, status="failed", error=one_line(e))
    counts = {k: sum(r.status == k for r in ordered) for k in ("done", "skipped", "failed")}
    summary = {"complete": complete and len(ordered) == len(tasks), "videos": len(tasks),
               **counts, "not_run": len(tasks) - len(ordered),
               "keyframes": sum(r.keyframes for r in ordered),
               "people": sum(r.people for r in ordered),
               "model": {**model.to_json(), **asdict(ran)},
               "merged_csv": {"file": CSV_NAME, "bytes": merged.stat().st_size,
                              "sha256": file_sha256(merged)},
               "skipped_inputs": [s.to_json() for s in
                                  (tasks.skipped if isinstance(tasks, JobPlan) else ())],
               "results": [r.to_json() for r in ordered]}
    write_json_atomic(out / JOB_NAME, summary)
    return summary
