"""Detection files: ``detections.csv`` (AVA format) and ``detections.jsonl``, their rows and
how a run writes them (:class:`DetectionWriter`).

The writer stages both through the run's transaction (``evad.runtime.staging.StagedRun``:
``OUT/.evad-staging/``, moved into ``OUT`` with ``run.json`` when the run completes), appended
and flushed after every batch (CSV first, so every keyframe in the JSONL has its CSV rows). A
run killed at any moment leaves every finished keyframe readable there, and ``--resume`` reads
them back and continues.

CSV rows (no header, AVA's result format): ``video_id, timestamp, x1, y1, x2, y2, action_id,
score`` with the box normalised by the frame size, one row per person and action whose
probability is >= ``csv_min_score`` (default 0: every class, as the AVA evaluation expects),
each keyframe's rows by descending score (``evad.ava_csv.by_score``: the AVA code matches in
file order). :func:`csv_rows` makes a keyframe's rows from its people, ``evad.ava_csv`` formats,
writes and reads them (the resume reads the staged CSV back with its reader); ``evad-eval
--data`` and the Triton model use both too.
JSONL: one object per keyframe, ``{"keyframe", "time", "frame", "frame_time", "people":
[{"box" (source pixels), "box_norm", "person_score", "actions": [{"id", "name", "score"}]}]}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from evad.atomic import atomic_write
from evad.ava_csv import CsvRow, by_score, format_csv_row, format_time, parse_rows
from evad.errors import EvadError
from evad.runtime.postprocess import Person
from evad.runtime.staging import StagedRun
from evad.sampling import Keyframe

__all__ = ["CSV_NAME", "JSONL_NAME", "VIDEO_NAME", "DetectionWriter", "csv_rows",
           "people_records"]

CSV_NAME, JSONL_NAME, VIDEO_NAME = "detections.csv", "detections.jsonl", "annotated.mp4"


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


class DetectionWriter:
    """Append detections per batch into the staging folder; finish by moving them into place
    (the run's :class:`StagedRun`).

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
        self.action_threshold = action_threshold
        self.top_k = top_k
        self.csv_min_score = csv_min_score
        self.csv_path = self.out_dir / CSV_NAME
        self.jsonl_path = self.out_dir / JSONL_NAME
        self.run = StagedRun(self.out_dir, settings, source)
        self.staging = self.run.staging
        self._csv_part = self.run.part(CSV_NAME)
        self._jsonl_part = self.run.part(JSONL_NAME)
        self.records: list[dict] = []  # every keyframe's JSONL object, resumed ones included
        self.resumed = 0
        self.resume_note = ""
        self._csv: IO[str] | None = None
        self._jsonl: IO[str] | None = None
        self._resume = resume

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the staging folder and files (or pick up the staged run to resume).

        Raises:
            EvadError: ``--resume`` of a run with other settings (the first difference named).
        """
        resumes = self.run.resumes(self._resume, JSONL_NAME)
        if resumes:
            self._load_partial()  # refused: the staged run stays as it was, for its own resume
        else:
            self.resume_note = self.run.note
        self.run.begin(fresh=not resumes)
        self._csv = open(self._csv_part, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._jsonl = open(self._jsonl_part, "a", encoding="utf-8")  # noqa: SIM115

    @property
    def committed(self) -> bool:
        """The detections are in ``out_dir`` (:meth:`finish` ran)."""
        return self.run.committed

    def _load_partial(self) -> None:
        """Read back the staged run (its settings checked by ``StagedRun.resumes``)."""
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
        so an interrupted batch may have rows whose JSONL lines were not written, and a kill
        may have cut its last line (dropped: a row is whole or absent). The rows kept stay
        byte for byte as they were written.

        Raises:
            EvadError: a whole line of the staged CSV is not a detection row (the file was
                changed by hand): its line is named.
        """
        if not self._csv_part.is_file():
            return
        raw = self._csv_part.read_bytes()
        text = raw[:raw.rfind(b"\n") + 1].decode("utf-8")
        source = f"cannot resume: staged detections {self._csv_part}"
        rows = parse_rows(text, source, True)
        # one row per line: this writer's rows hold no quote, newline or blank line (the video
        # id is checked), so line i is row i
        lines = [line + "\n" for line in text.split("\n")[:-1]]
        if len(lines) != len(rows):
            raise EvadError(f"{source} has blank or quoted lines, which no run writes: it was "
                            "changed by hand; drop --resume to start again")
        # compared as numbers: a time is written as format_time gives it and read back as a float
        done = {float(format_time(r["time"])) for r in self.records}
        with atomic_write(self._csv_part, "w", newline="") as f:
            f.writelines(line for line, row in zip(lines, rows, strict=True) if row[1] in done)

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
        return self.run.abandon(has_work=bool(self.records))

    def finish(self, summary: dict[str, Any]) -> None:
        """Move the staged detections into ``out_dir`` and rewrite its ``run.json`` last
        (``StagedRun.commit``). A finished run that was there is replaced only now; its
        ``annotated.mp4`` is removed (it showed the other run)."""
        self.close()
        self.run.commit(summary, (CSV_NAME, JSONL_NAME), stale=(VIDEO_NAME,))

    def staged_path(self, name: str) -> Path:
        """Where to write an extra output (``annotated.mp4``) before :meth:`add_output`."""
        return self.run.staged_path(name)

    def add_output(self, name: str) -> Path:
        """Move a finished extra output from staging into ``out_dir`` and list it in
        ``run.json``."""
        return self.run.add_output(name)
