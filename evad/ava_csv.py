"""The AVA CSV format, read and written here only: rows ``video, seconds, x1, y1, x2, y2,
action id, last`` with the box normalised by the frame size (0..1) and no header.

Two kinds of row share the layout and differ in the last column:

- detections (:data:`CsvRow`, AVA's result format): the last column is the action's score.
  Written by :func:`format_csv_row` (``902`` for whole seconds, boxes to 4 decimals, scores to
  6, ``\\n``), each keyframe's rows by descending score (:func:`by_score`);
- ground truth (:data:`TruthRow`, AVA's annotation format): the last column is the person id
  (optional when read). Written by :func:`format_truth_row`, the bytes the synthetic generator
  has always written (``csv.writer``: boxes as the shortest repr of their 4-decimal rounding,
  ``\\r\\n``).

:func:`read_rows` reads either kind, strictly: a file that is not UTF-8, a row with too few
columns, a value that is not a finite number or an action id that is not an integer is refused
in one line naming the file, the line and the layout. :func:`write_csv_atomic` /
:func:`write_truth_csv_atomic` write a whole file or nothing (``evad.atomic``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar, overload

from evad.atomic import atomic_write
from evad.command import read_text
from evad.errors import EvadError

__all__ = ["Box", "CsvRow", "TruthRow", "by_score", "clipped_repr", "format_csv_row",
           "format_time", "format_truth_row", "parse_rows", "read_excluded", "read_rows",
           "write_csv_atomic", "write_truth_csv_atomic"]

T = TypeVar("T")
#: a box as normalised x1, y1, x2, y2 (fractions of the frame's width and height)
Box = tuple[float, float, float, float]
#: one detection row: video id, keyframe time (s), box, action id (1-based), score
CsvRow = tuple[str, float, Box, int, float]
#: one ground-truth row: video id, keyframe time (s), box, action id (1-based), person id
#: (None: the column is absent or empty)
TruthRow = tuple[str, float, Box, int, int | None]

#: the columns of an AVA row, as the messages name them
_COLUMNS = ("video", "seconds", "x1", "y1", "x2", "y2", "action id")
_LAYOUT = "video, seconds, x1, y1, x2, y2 (normalised 0..1), action id"


# -- writing -------------------------------------------------------------------------------

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


def format_csv_row(row: CsvRow) -> str:
    """``video,time,x1,y1,x2,y2,action,score`` + newline (boxes to 4 decimals, scores to 6)."""
    video, t, (x1, y1, x2, y2), action, score = row
    return (f"{video},{format_time(t)},{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},{action},"
            f"{score:.6f}\n")


def format_truth_row(row: TruthRow) -> str:
    """``video,time,x1,y1,x2,y2,action,person`` + ``\\r\\n``: the box rounded to 4 decimals and
    written as the shortest number that reads back as that (``0.0``, ``0.938``), an absent
    person id as an empty column, a video id holding a comma or quote quoted.

    These are the bytes ``csv.writer`` gave the synthetic generator's annotations, kept so a
    regenerated dataset is byte-identical to one made before.
    """
    video, t, box, action, person = row
    buf = io.StringIO()
    csv.writer(buf).writerow([video, format_time(t), *(repr(round(float(v), 4)) for v in box),
                              str(action), "" if person is None else str(person)])
    return buf.getvalue()


def _write_lines(lines: Iterable[str], path: str | os.PathLike) -> None:
    """Formatted rows to ``path``, whole or not at all (``evad.atomic``)."""
    with atomic_write(path, "w", newline="") as f:
        f.writelines(lines)


def write_csv_atomic(rows: Iterable[CsvRow], path: str | os.PathLike) -> None:
    """A whole AVA detection CSV (:func:`format_csv_row`), whole or not at all."""
    _write_lines(map(format_csv_row, rows), path)


def write_truth_csv_atomic(rows: Iterable[TruthRow], path: str | os.PathLike) -> None:
    """A whole AVA ground-truth CSV (:func:`format_truth_row`), whole or not at all."""
    _write_lines(map(format_truth_row, rows), path)


# -- reading -------------------------------------------------------------------------------

def clipped_repr(text: str) -> str:
    """``text`` quoted for a message, cut to 40 characters (a whole bad file is no message)."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _records(text: str, source: str) -> Iterator[tuple[str, list[str]]]:
    """The non-blank CSV rows of ``text``, each with ``"<source>:<line>"`` for messages.

    Raises:
        EvadError: a row the CSV reader refuses (a field longer than its limit: not a CSV file,
            or a broken quote).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            msg = str(e)
            if "field limit" in msg:
                msg = (f"a field is longer than {csv.field_size_limit()} characters (an "
                       "unclosed quote, or not a CSV file?)")
            raise EvadError(f"{source}:{reader.line_num}: not a CSV row: {msg}") from e
        if any(v.strip() for v in row):
            yield f"{source}:{reader.line_num}", row


def _finite(where: str, row: list[str], i: int, name: str, layout: str) -> float:
    """Column ``i`` of ``row`` as a finite number.

    Raises:
        EvadError: it is not a number (on line 1: perhaps a header), or NaN / infinite.
    """
    text = row[i].strip()
    try:
        v = float(text)
    except ValueError:
        header = " (a header row? AVA CSVs have none)" if where.endswith(":1") else ""
        raise EvadError(f"{where}: column {i + 1} ({name}) is {clipped_repr(text)}, not a "
                        f"number{header}; each row is {layout}") from None
    if not math.isfinite(v):
        raise EvadError(f"{where}: column {i + 1} ({name}) is {clipped_repr(text)}: it must be "
                        f"a finite number; each row is {layout}")
    return v


def _layout(scores: bool) -> str:
    return f"{_LAYOUT}, {'score' if scores else 'person id'}"


def _head(where: str, row: list[str], scores: bool) -> tuple[str, float, Box, int]:
    """The first seven columns of one AVA row: (video, seconds, box, action id).

    Raises:
        EvadError: too few columns (8 with a score, else 7), an empty video id, a value that is
            not a finite number or an action id that is not an integer.
    """
    layout = _layout(scores)
    need = 8 if scores else 7
    if len(row) < need:
        raise EvadError(f"{where}: {len(row)} column(s), an AVA row has {need}: {layout}")
    video = row[0]
    if not video.strip():
        raise EvadError(f"{where}: column 1 (video) is empty; each row is {layout}")
    ts = _finite(where, row, 1, "seconds", layout)
    x1, y1, x2, y2 = (_finite(where, row, i, _COLUMNS[i], layout) for i in range(2, 6))
    text = row[6].strip()
    try:
        action = int(text)
    except ValueError:
        raise EvadError(f"{where}: column 7 (action id) is {clipped_repr(text)}, not an "
                        f"integer; each row is {layout}") from None
    return video, ts, (x1, y1, x2, y2), action


def _person(where: str, row: list[str]) -> int | None:
    """Column 8 of a ground-truth row: the person id, None when absent or empty.

    Raises:
        EvadError: it is not a finite number.
    """
    if len(row) > 7 and row[7].strip():
        return int(_finite(where, row, 7, "person id", _layout(False)))
    return None


@overload
def parse_rows(text: str, source: str, scores: Literal[True]) -> list[CsvRow]: ...
@overload
def parse_rows(text: str, source: str, scores: Literal[False]) -> list[TruthRow]: ...
def parse_rows(text: str, source: str, scores: bool) -> list[CsvRow] | list[TruthRow]:
    """The AVA rows of CSV ``text``: detections (``scores``) or ground truth.

    Args:
        text: the CSV (``\\n`` or ``\\r\\n`` lines; blank lines are skipped).
        source: ``"<what> <path>"``, the start of each message (``:<line>`` is added).
        scores: the last column is a score (required, a finite number); else a person id
            (optional).

    Raises:
        EvadError: a malformed row, in one line with its line number.
    """
    if scores:
        return [(*_head(w, r, True), _finite(w, r, 7, "score", _layout(True)))
                for w, r in _records(text, source)]
    return [(*_head(w, r, False), _person(w, r)) for w, r in _records(text, source)]


@overload
def read_rows(path: str | os.PathLike, scores: Literal[True], what: str | None = None
              ) -> list[CsvRow]: ...
@overload
def read_rows(path: str | os.PathLike, scores: Literal[False], what: str | None = None
              ) -> list[TruthRow]: ...
def read_rows(path: str | os.PathLike, scores: bool, what: str | None = None
              ) -> list[CsvRow] | list[TruthRow]:
    """The rows of an AVA CSV file: detections (``scores``; an empty file is no detections) or
    ground truth (it must have rows).

    ``what`` names the file in messages (default "detections CSV" / "ground-truth CSV").

    Raises:
        EvadError: missing, unreadable or (ground truth) empty file, not UTF-8, or a malformed
            row: too few columns, a value that is not a finite number (NaN, inf), an action id
            that is not an integer (the message names the file, line and column).
    """
    what = what or ("detections CSV" if scores else "ground-truth CSV")
    text = read_text(path, what, empty_ok=scores)
    rows = parse_rows(text, f"{what} {path}", True) if scores else \
        parse_rows(text, f"{what} {path}", False)
    if not rows and not scores:
        raise EvadError(f"{what} {path} has no rows; each row is {_LAYOUT}, person id")
    return rows


def read_excluded(path: str | os.PathLike | None, what: str = "exclusions CSV"
                  ) -> set[tuple[str, float]]:
    """Excluded keyframes (``video, seconds`` rows), as AVA's evaluation reads them; an empty
    file (or no ``path``) excludes nothing.

    Raises:
        EvadError: missing or unreadable file, not UTF-8, or a row without a video and a
            finite timestamp (with its line number).
    """
    if path is None:
        return set()
    layout = "video, seconds"
    out = set()
    for where, row in _records(read_text(path, what, empty_ok=True), f"{what} {path}"):
        if len(row) < 2:
            raise EvadError(f"{where}: {len(row)} column(s), an exclusion row has 2: {layout}")
        if not row[0].strip():
            raise EvadError(f"{where}: column 1 (video) is empty; each row is {layout}")
        out.add((row[0], _finite(where, row, 1, "seconds", layout)))
    return out
