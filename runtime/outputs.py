"""Detection files: ``detections.csv`` (AVA format), ``detections.jsonl``, ``run.json``.

A run writes into a staging folder, ``OUT/.evad-staging/``: its ``run.json`` (settings,
``complete: false``), ``detections.csv`` and ``detections.jsonl``, appended and flushed after
every batch (CSV first, so every keyframe in the JSONL has its CSV rows). A run killed at any
moment leaves every finished keyframe readable there, and ``--resume`` continues from them. A
finished run in ``OUT`` is not touched until the new one completes; then its files are moved
into ``OUT`` (``os.replace``: each file is the old one or the whole new one) and ``OUT/run.json``
is rewritten last, naming every file beside it with its size and SHA-256. While the files move,
``OUT/run.json`` says ``complete: false``: at no moment does a ``run.json`` that says complete
sit beside files of another run.

The settings a resume must match are the content of the model (its SHA-256) and of the video
(size, and the SHA-256 of its first and last MiB) and every option that changes results; the
paths are recorded but not compared, so the same file under another spelling resumes.

CSV rows (no header, AVA's result format): ``video_id, timestamp, x1, y1, x2, y2, action_id,
score`` with the box normalised by the frame size, one row per person and action whose
probability is >= ``csv_min_score`` (default 0: every class, as the AVA evaluation expects),
each keyframe's rows by descending score (:func:`by_score`: the AVA code matches in file
order). :func:`csv_rows` and :func:`format_csv_row` are the only writer of these rows; ``evad-eval
--data`` uses them too.
JSONL: one object per keyframe, ``{"keyframe", "time", "frame", "frame_time", "people":
[{"box" (source pixels), "box_norm", "person_score", "actions": [{"id", "name", "score"}]}]}``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from evad.atomic import atomic_write, write_json_atomic
from evad.errors import EvadError
from evad.hashing import file_sha256
from evad.runtime.postprocess import Person
from evad.runtime.sampling import Keyframe

__all__ = ["STAGING", "CsvRow", "DetectionWriter", "by_score", "csv_rows", "format_csv_row",
           "format_time", "people_records", "write_csv_atomic"]

T = TypeVar("T")
#: one AVA detection row: video id, keyframe time (s), normalised x1 y1 x2 y2, action id
#: (1-based), score
CsvRow = tuple[str, float, tuple[float, float, float, float], int, float]

CSV_NAME, JSONL_NAME, RUN_NAME, VIDEO_NAME = ("detections.csv", "detections.jsonl", "run.json",
                                              "annotated.mp4")
#: the folder inside ``--out`` where a run writes until it completes
STAGING = ".evad-staging"


def format_time(t: float) -> str:
    """Keyframe time for the CSV: whole seconds as integers (AVA: ``902``), else milliseconds."""
    if abs(t - round(t)) < 1e-6:
        return str(round(t))
    return f"{t:.3f}".rstrip("0")


def by_score(rows: list[T], score: Callable[[T], float]) -> list[T]:
    """One keyframe's detection rows, highest ``score(row)`` first (ties keep their order).

    The AVA code matches a keyframe's detections in file order, so a lower-scored duplicate
    listed first would take the match and turn the better detection into a false positive.
    Listed by score, the matching is the VOC one (best detection first).
    """
    return sorted(rows, key=score, reverse=True)  # stable: reverse keeps the order of ties


def csv_rows(video_id: str, time_s: float, people: Iterable[Person],
             min_score: float = 0.0) -> list[CsvRow]:
    """One keyframe's AVA rows: one per person and class with probability >= ``min_score``,
    by descending score. Values are not rounded (:func:`format_csv_row` rounds)."""
    rows: list[CsvRow] = []
    for p in people:
        box = tuple(float(v) for v in p.box_norm)
        if not all(math.isfinite(v) for v in (*box, *map(float, p.action_probs))):
            raise EvadError(f"the model gave NaN or infinite values for a person at {time_s} s "
                            "(its weights or input are broken): nothing was written for it")
        rows.extend((video_id, time_s, box, c + 1, float(s))  # type: ignore[misc]
                    for c, s in enumerate(p.action_probs) if s >= min_score)
    return by_score(rows, lambda r: r[4])


def people_records(people: Iterable[Person], labels: Sequence[str], action_threshold: float,
                   top_k: int) -> list[dict[str, Any]]:
    """One keyframe's people as the JSONL writes them: ``box`` (source pixels, 0.1 px),
    ``box_norm``, ``person_score`` and ``actions`` (``Person.top_actions``)."""
    return [{"box": [round(float(v), 1) for v in p.box],
             "box_norm": [round(float(v), 4) for v in p.box_norm],
             "person_score": round(p.score, 4),
             "actions": p.top_actions(labels, action_threshold, top_k)}
            for p in people]


def format_csv_row(row: CsvRow) -> str:
    """``video,time,x1,y1,x2,y2,action,score`` + newline (boxes to 4 decimals, scores to 6)."""
    video, t, (x1, y1, x2, y2), action, score = row
    return (f"{video},{format_time(t)},{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},{action},"
            f"{score:.6f}\n")


def write_csv_atomic(rows: Iterable[CsvRow], path: str | os.PathLike) -> None:
    """A whole AVA detection CSV, whole or not at all (``evad.atomic``)."""
    with atomic_write(path, "w", newline="") as f:
        f.writelines(format_csv_row(r) for r in rows)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first setting that differs, said for a person (``""``: none)."""
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            what = {"model_sha256": "the model file's content (SHA-256)",
                    "video_identity": "the video's content (size / first and last MiB)"
                    }.get(k, k)
            a, b = old.get(k), new.get(k)
            if isinstance(a, str) and len(a) == 64:
                a, b = f"{a[:12]}...", f"{str(b)[:12]}..."
            return f"{what}: {a!r} then, {b!r} now"
    return ""


class DetectionWriter:
    """Append detections per batch into the staging folder; finish by moving them into place.

    Args:
        out_dir: the output folder (created).
        video_id: first CSV column.
        labels: action names (id i + 1 is ``labels[i]``).
        settings: what must match for ``--resume``: model and video content, options.
        action_threshold: JSONL ``actions`` keep probabilities >= this.
        top_k: at most this many JSONL ``actions`` per person.
        csv_min_score: CSV rows for probabilities >= this.
        resume: continue the unfinished run staged in ``out_dir`` (else any unfinished run
            there is discarded).
        source: recorded in ``run.json``, never compared (paths, model name).

    The caller holds ``out_dir``'s ``FolderLock`` for the writer's life.
    """

    def __init__(self, out_dir: Path, video_id: str, labels: Sequence[str],
                 settings: dict[str, Any], action_threshold: float = 0.5, top_k: int = 5,
                 csv_min_score: float = 0.0, resume: bool = False,
                 source: dict[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.video_id = video_id
        self.labels = list(labels)
        self.settings = settings
        self.source = dict(source or {})
        self.action_threshold = action_threshold
        self.top_k = top_k
        self.csv_min_score = csv_min_score
        self.csv_path = self.out_dir / CSV_NAME
        self.jsonl_path = self.out_dir / JSONL_NAME
        self.run_path = self.out_dir / RUN_NAME
        self.staging = self.out_dir / STAGING
        self._csv_part = self.staging / CSV_NAME
        self._jsonl_part = self.staging / JSONL_NAME
        self._run_part = self.staging / RUN_NAME
        self.records: list[dict] = []  # every keyframe's JSONL object, resumed ones included
        self.resumed = 0
        self.resume_note = ""
        self.committed = False
        self._owns_staging = False  # open() got past the resume check: the staging is ours
        self._recorded: dict[str, dict[str, Any]] = {}  # outputs moved in: name -> size, hash
        self._csv: IO[str] | None = None
        self._jsonl: IO[str] | None = None
        self._resume = resume

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the staging folder and files (or pick up the staged run to resume).

        Raises:
            EvadError: ``--resume`` of a run with other settings (the first difference named).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        finished = self._finished_settings()
        if self._resume and self._jsonl_part.is_file():
            self._load_partial()  # refused: the staged run stays as it was, for its own resume
        else:
            diff = _changed(finished, self.settings) if finished is not None else ""
            if self._resume and diff:
                # a finished run is never what --resume replaces: the user asked to continue
                raise EvadError(f"cannot resume {self.out_dir}: it holds a finished run and "
                                f"{diff}; its files are left as they are: use another --out, "
                                "or drop --resume to replace that run")
            if finished is not None:
                self.resume_note = (f"{self.out_dir} holds a finished run: it stays as it is "
                                    "until this run completes, then this run replaces it")
            elif self._resume:
                self.resume_note = (f"nothing to resume in {self.out_dir}: starting from the "
                                    "start")
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        self._owns_staging = True
        write_json_atomic(self._run_part, self._state(complete=False))
        self._csv = open(self._csv_part, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._jsonl = open(self._jsonl_part, "a", encoding="utf-8")  # noqa: SIM115

    def _finished_settings(self) -> dict[str, Any] | None:
        """The settings of the finished run in ``out_dir`` (``run.json`` complete), or None."""
        try:
            run = json.loads(self.run_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(run, dict) or run.get("complete") is not True:
            return None
        settings = run.get("settings")
        return settings if isinstance(settings, dict) else {}

    def _state(self, complete: bool, **more: Any) -> dict[str, Any]:
        return {"complete": complete, "settings": self.settings, "source": self.source, **more}

    def _load_partial(self) -> None:
        try:
            old = json.loads(self._run_part.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            old = None
        if not isinstance(old, dict):
            raise EvadError(f"cannot resume: {self._run_part} is unreadable, so what the staged "
                            "run was made with is unknown; drop --resume to start again")
        diff = _changed(old, self.settings)
        if diff:
            raise EvadError(f"cannot resume {self.out_dir}: {diff}; use another --out or drop "
                            "--resume to start again")
        # Keep the complete lines of the JSONL (a kill can cut the last one) ...
        raw = self._jsonl_part.read_bytes()
        good_end = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                self.records.append(json.loads(line))
            except ValueError:
                break
            good_end += len(line)
        with open(self._jsonl_part, "r+b") as f:
            f.truncate(good_end)
        # ... and the CSV rows of exactly those keyframes
        self._trim_csv()
        self.resumed = len(self.records)
        self.resume_note = (f"resuming {self.out_dir}: {self.resumed} keyframes already done"
                            + (f", up to {self.records[-1]['time']} s" if self.records else ""))

    def _trim_csv(self) -> None:
        """Keep the staged CSV rows of the recorded keyframes only: the CSV is written first,
        so an interrupted batch may have rows whose JSONL lines were not written."""
        done_times = {format_time(r["time"]) for r in self.records}
        if self._csv_part.is_file():
            with open(self._csv_part, newline="", encoding="utf-8") as src, atomic_write(
                    self._csv_part, "w", newline="") as dst:
                for row in src:
                    parts = row.split(",")
                    if row.endswith("\n") and len(parts) == 8 and parts[1] in done_times:
                        dst.write(row)

    def finish_interrupted(self, summary: dict[str, Any]) -> None:
        """:meth:`finish` after an interrupt that ends the run on purpose (Ctrl-C on a live
        source): the keyframes written so far are the result."""
        self.close(after_failure=True)
        with atomic_write(self._jsonl_part, "w") as f:  # exactly the recorded keyframes
            f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in self.records)
        self._trim_csv()
        self.finish(summary)

    @property
    def done(self) -> set[int]:
        """Indices of the keyframes already written."""
        return {int(r["keyframe"]) for r in self.records}

    # -- writing ---------------------------------------------------------------------------

    def write_batch(self, items: Sequence[tuple[Keyframe, list[Person]]]) -> None:
        """Append one batch's keyframes (CSV rows, then JSONL lines) and flush both."""
        assert self._csv is not None and self._jsonl is not None, "call open() first"
        csv_lines = []
        json_lines = []
        recs = []
        for kf, people in items:
            csv_lines += [format_csv_row(r) for r in csv_rows(self.video_id, kf.time_s, people,
                                                               self.csv_min_score)]
            rec = {"keyframe": kf.index, "time": kf.time_s, "frame": kf.frame,
                   "frame_time": round(kf.frame_time_s, 6),
                   "people": people_records(people, self.labels, self.action_threshold,
                                            self.top_k)}
            recs.append(rec)
            json_lines.append(json.dumps(rec, allow_nan=False) + "\n")
        for f, path, text in ((self._csv, self._csv_part, "".join(csv_lines)),
                              (self._jsonl, self._jsonl_part, "".join(json_lines))):
            try:
                f.write(text)
                f.flush()
            except OSError as e:  # name the file: a full disk says nothing else
                raise OSError(e.errno, e.strerror, str(path)) from e
        self.records.extend(recs)

    def close(self, after_failure: bool = False) -> None:
        """Close the staged files (they stay, for ``--resume``). ``after_failure``: a write
        error on closing is the failure already being reported (a full disk), and resume
        trims the file, so it is not raised again."""
        for f in (self._csv, self._jsonl):
            try:
                if f is not None:
                    f.close()
            except OSError:
                if not after_failure:
                    raise
        self._csv = self._jsonl = None

    def abandon(self) -> bool:
        """After a failure: close, and remove the staging folder when it holds no keyframe
        (nothing to resume). Returns whether resumable keyframes stay staged."""
        self.close(after_failure=True)
        if self.committed:  # only an extra output was being made: nothing to resume
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        if self.records or not self._owns_staging:
            return bool(self.records)
        shutil.rmtree(self.staging, ignore_errors=True)
        return False

    def _add_files(self, *names: str) -> dict[str, dict[str, Any]]:
        """Record the size and SHA-256 of outputs now in ``out_dir`` (each hashed once) and
        return every output recorded so far, for ``run.json``."""
        for n in names:
            self._recorded[n] = {"bytes": (self.out_dir / n).stat().st_size,
                                 "sha256": file_sha256(self.out_dir / n)}
        return dict(self._recorded)

    def finish(self, summary: dict[str, Any]) -> None:
        """Move the staged detections into ``out_dir`` and rewrite its ``run.json`` last.

        A finished run that was there is replaced only now; its ``annotated.mp4`` is removed
        (it showed the other run). If this is killed half-way, ``run.json`` says
        ``complete: false``."""
        self.close()
        for f in (self._csv_part, self._jsonl_part):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        self.summary = summary
        if self.run_path.exists():
            write_json_atomic(self.run_path, {
                "complete": False, "note": "a new run is replacing the files here; the "
                "detections may be of either run until this says complete"})
        (self.out_dir / VIDEO_NAME).unlink(missing_ok=True)
        os.replace(self._csv_part, self.csv_path)
        os.replace(self._jsonl_part, self.jsonl_path)
        write_json_atomic(self.run_path, self._state(
            True, summary=summary, files=self._add_files(CSV_NAME, JSONL_NAME)))
        self.committed = True
        shutil.rmtree(self.staging, ignore_errors=True)

    def staged_path(self, name: str) -> Path:
        """Where to write an extra output (``annotated.mp4``) before :meth:`add_output`."""
        self.staging.mkdir(exist_ok=True)
        return self.staging / name

    def add_output(self, name: str) -> Path:
        """Move a finished extra output from staging into ``out_dir`` and list it in
        ``run.json``."""
        assert self.committed, "finish() first"
        final = self.out_dir / name
        os.replace(self.staging / name, final)
        write_json_atomic(self.run_path, self._state(
            True, summary=self.summary, files=self._add_files(name)))
        shutil.rmtree(self.staging, ignore_errors=True)
        return final
