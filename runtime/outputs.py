"""Detection files: ``detections.csv`` (AVA format), ``detections.jsonl``, ``run.json``.

While a run is going, detections are appended to ``detections.csv.partial`` and
``detections.jsonl.partial`` and flushed after every batch (CSV first, so every keyframe in the
JSONL has its CSV rows); a run killed at any moment leaves every finished keyframe readable
there, and ``--resume`` continues from them. At the end both are renamed into place
(``os.replace``: a reader sees the old file or the whole new one, never half of one).
``run.json`` records the settings (so a resume with other settings is refused) and, at the end,
the summary.

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
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from evad.errors import EvadError
from evad.runtime.postprocess import Person
from evad.runtime.sampling import Keyframe

__all__ = ["CsvRow", "DetectionWriter", "by_score", "csv_rows", "format_csv_row", "format_time",
           "write_csv_atomic", "write_json_atomic"]

T = TypeVar("T")
#: one AVA detection row: video id, keyframe time (s), normalised x1 y1 x2 y2, action id
#: (1-based), score
CsvRow = tuple[str, float, tuple[float, float, float, float], int, float]

CSV_NAME, JSONL_NAME, RUN_NAME, VIDEO_NAME = ("detections.csv", "detections.jsonl", "run.json",
                                              "annotated.mp4")
PARTIAL = ".partial"


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
        rows.extend((video_id, time_s, box, c + 1, float(s))  # type: ignore[misc]
                    for c, s in enumerate(p.action_probs) if s >= min_score)
    return by_score(rows, lambda r: r[4])


def format_csv_row(row: CsvRow) -> str:
    """``video,time,x1,y1,x2,y2,action,score`` + newline (boxes to 4 decimals, scores to 6)."""
    video, t, (x1, y1, x2, y2), action, score = row
    return (f"{video},{format_time(t)},{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},{action},"
            f"{score:.6f}\n")


def write_csv_atomic(rows: Iterable[CsvRow], path: str | os.PathLike) -> None:
    """A whole AVA detection CSV, written through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.writelines(format_csv_row(r) for r in rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class DetectionWriter:
    """Append detections per batch; finish by moving them into place.

    Args:
        out_dir: the output folder (created).
        video_id: first CSV column.
        labels: action names (id i + 1 is ``labels[i]``).
        settings: what must match for ``--resume`` (video, model, stride, thresholds).
        action_threshold: JSONL ``actions`` keep probabilities >= this.
        top_k: at most this many JSONL ``actions`` per person.
        csv_min_score: CSV rows for probabilities >= this.
        resume: continue the unfinished run in ``out_dir`` (else any unfinished run there is
            discarded).
    """

    def __init__(self, out_dir: Path, video_id: str, labels: Sequence[str],
                 settings: dict[str, Any], action_threshold: float = 0.5, top_k: int = 5,
                 csv_min_score: float = 0.0, resume: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.video_id = video_id
        self.labels = list(labels)
        self.settings = settings
        self.action_threshold = action_threshold
        self.top_k = top_k
        self.csv_min_score = csv_min_score
        self.csv_path = self.out_dir / CSV_NAME
        self.jsonl_path = self.out_dir / JSONL_NAME
        self.run_path = self.out_dir / RUN_NAME
        self._csv_part = self.out_dir / (CSV_NAME + PARTIAL)
        self._jsonl_part = self.out_dir / (JSONL_NAME + PARTIAL)
        self.records: list[dict] = []  # every keyframe's JSONL object, resumed ones included
        self.resumed = 0
        self.resume_note = ""
        self._csv: IO[str] | None = None
        self._jsonl: IO[str] | None = None
        self._resume = resume

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the folder and partial files (or pick up the unfinished run to resume).

        Raises:
            EvadError: ``--resume`` of a run with other settings.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self._resume and self._jsonl_part.is_file():
            self._load_partial()
        else:
            if self._resume:
                self.resume_note = f"nothing to resume in {self.out_dir}: starting from the start"
            for p in (self._csv_part, self._jsonl_part):
                p.unlink(missing_ok=True)
        write_json_atomic(self.run_path, {"complete": False, "settings": self.settings})
        self._csv = open(self._csv_part, "a", newline="")  # noqa: SIM115 - kept open all run
        self._jsonl = open(self._jsonl_part, "a")  # noqa: SIM115

    def _load_partial(self) -> None:
        try:
            old = json.loads(self.run_path.read_text()).get("settings", {})
        except (OSError, ValueError):
            old = {}
        diff = sorted(k for k in set(old) | set(self.settings)
                      if old.get(k) != self.settings.get(k))
        if diff:
            k = diff[0]
            raise EvadError(f"cannot resume: {self.out_dir} holds a run with {k} = "
                            f"{old.get(k)!r}, this one has {self.settings.get(k)!r}; use another "
                            "--out or drop --resume")
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
        # ... and the CSV rows of exactly those keyframes (the CSV is written first, so it may
        # hold rows of a batch whose JSONL lines were not written).
        done_times = {format_time(r["time"]) for r in self.records}
        tmp = self._csv_part.with_name(self._csv_part.name + ".tmp")
        if self._csv_part.is_file():
            with open(self._csv_part, newline="") as src, open(tmp, "w", newline="") as dst:
                for row in src:
                    parts = row.split(",")
                    if row.endswith("\n") and len(parts) == 8 and parts[1] in done_times:
                        dst.write(row)
            os.replace(tmp, self._csv_part)
        self.resumed = len(self.records)
        self.resume_note = (f"resuming {self.out_dir}: {self.resumed} keyframes already done"
                            + (f", up to {self.records[-1]['time']} s" if self.records else ""))

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
        for kf, people in items:
            csv_lines += [format_csv_row(r) for r in csv_rows(self.video_id, kf.time_s, people,
                                                               self.csv_min_score)]
            rec = {"keyframe": kf.index, "time": kf.time_s, "frame": kf.frame,
                   "frame_time": round(kf.frame_time_s, 6),
                   "people": [{"box": [round(float(v), 1) for v in p.box],
                               "box_norm": [round(float(v), 4) for v in p.box_norm],
                               "person_score": round(p.score, 4),
                               "actions": p.top_actions(self.labels, self.action_threshold,
                                                        self.top_k)}
                              for p in people]}
            self.records.append(rec)
            json_lines.append(json.dumps(rec) + "\n")
        self._csv.write("".join(csv_lines))
        self._csv.flush()
        self._jsonl.write("".join(json_lines))
        self._jsonl.flush()

    def close(self) -> None:
        """Close the partial files (they stay, for ``--resume``)."""
        for f in (self._csv, self._jsonl):
            if f is not None:
                f.close()
        self._csv = self._jsonl = None

    def finish(self, summary: dict[str, Any]) -> None:
        """Move the detections into place and record the summary in ``run.json``."""
        self.close()
        for f in (self._csv_part, self._jsonl_part):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(self._csv_part, self.csv_path)
        os.replace(self._jsonl_part, self.jsonl_path)
        write_json_atomic(self.run_path, {"complete": True, "settings": self.settings,
                                          "summary": summary})
