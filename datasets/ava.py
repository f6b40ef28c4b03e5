"""AVA-format annotations and detections: CSV rows ``video, timestamp, x1, y1, x2, y2, action,
[person or score]`` with normalised box coordinates, grouped per keyframe.

Every reader here checks its file first (``evad.command.check_input_file``) and refuses, with
the file, the line and the fix, what it cannot read: text that is not UTF-8, a row with too few
columns, a value that is not a finite number, a field longer than the CSV limit.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from evad.command import check_input_file
from evad.errors import EvadError

__all__ = ["Keyframe", "ava_row", "csv_rows", "read_ava_csv", "read_excluded",
           "read_label_map", "read_text"]

#: the columns of an AVA row, as the messages name them
_COLUMNS = ("video", "seconds", "x1", "y1", "x2", "y2", "action id")
_LAYOUT = "video, seconds, x1, y1, x2, y2 (normalised 0..1), action id"
#: ``key: value`` of a pbtxt line (a quoted string, or a bare word up to a space or brace)
_PBTXT_FIELD = re.compile(r'\b(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s{}]+)')


@dataclass
class Keyframe:
    """People at one keyframe: boxes (P, 4) normalised x1y1x2y2 and their action ids."""

    video: str
    timestamp: float
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    actions: list[set[int]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def multi_hot(self, num_classes: int) -> np.ndarray:
        """(P, num_classes) float32 targets; action id a is column a - 1."""
        out = np.zeros((len(self.boxes), num_classes), dtype=np.float32)
        for i, acts in enumerate(self.actions):
            for a in acts:
                if 1 <= a <= num_classes:
                    out[i, a - 1] = 1.0
        return out


def read_text(path: str | os.PathLike, what: str, *, empty_ok: bool = False) -> str:
    """The whole of ``path`` as UTF-8 text (a leading byte-order mark dropped).

    Raises:
        EvadError: the file is missing, not a readable regular file, empty (unless
            ``empty_ok``), or not UTF-8 (the line of the first bad byte is named).
    """
    p = check_input_file(path, what, empty_ok=empty_ok)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise EvadError(f"{what} {p} is not UTF-8 text: byte 0x{data[e.start]:02x} at line "
                        f"{line}{hint}; save it as UTF-8") from e


def csv_rows(path: str | os.PathLike, what: str, *, empty_ok: bool = False
             ) -> Iterator[tuple[str, list[str]]]:
    """The non-blank rows of a UTF-8 CSV file, each with ``"<what> <path>:<line>"`` for
    messages.

    Raises:
        EvadError: as :func:`read_text`, or a row the CSV reader refuses (a field longer than
            its limit: not a CSV file, or a broken quote).
    """
    text = read_text(path, what, empty_ok=empty_ok)
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
            raise EvadError(f"{what} {path}:{reader.line_num}: not a CSV row: {msg}") from e
        if any(v.strip() for v in row):
            yield f"{what} {path}:{reader.line_num}", row


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _finite(where: str, row: list[str], i: int, name: str, layout: str) -> float:
    text = row[i].strip()
    try:
        v = float(text)
    except ValueError:
        header = " (a header row? AVA CSVs have none)" if where.endswith(":1") else ""
        raise EvadError(f"{where}: column {i + 1} ({name}) is {_show(text)}, not a number"
                        f"{header}; each row is {layout}") from None
    if not math.isfinite(v):
        raise EvadError(f"{where}: column {i + 1} ({name}) is {_show(text)}: it must be a finite "
                        f"number; each row is {layout}")
    return v


def ava_row(where: str, row: list[str], last: str | None
            ) -> tuple[str, float, tuple[float, float, float, float], int, float | None]:
    """One AVA row as (video, seconds, box, action id, last column).

    Args:
        where: ``"<what> <path>:<line>"``, the start of each message.
        row: the CSV fields.
        last: ``"score"`` (required, a finite number), ``"person id"`` (optional: None when
            absent or empty) or None (ignored).

    Raises:
        EvadError: too few columns, an empty video id, a value that is not a finite number or
            an action id that is not an integer.
    """
    layout = f"{_LAYOUT}, {last or 'person id'}"
    need = 8 if last == "score" else 7
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
        raise EvadError(f"{where}: column 7 (action id) is {_show(text)}, not an integer; "
                        f"each row is {layout}") from None
    value: float | None = None
    if last == "score":
        value = _finite(where, row, 7, "score", layout)
    elif last == "person id" and len(row) > 7 and row[7].strip():
        value = float(int(_finite(where, row, 7, "person id", layout)))
    return video, ts, (x1, y1, x2, y2), action, value


def read_ava_csv(path: str | os.PathLike, what: str = "annotation file"
                 ) -> dict[tuple[str, float], Keyframe]:
    """Ground truth (last column: person id) grouped by (video, timestamp) and person/box.

    Raises:
        EvadError: missing, unreadable or empty file, not UTF-8, or a malformed row (with its
            line number).
    """
    frames: dict[tuple[str, float], Keyframe] = {}
    slots: dict[tuple[str, float], dict] = defaultdict(dict)
    for where, row in csv_rows(path, what):
        video, ts, box, action, pid = ava_row(where, row, "person id")
        person = -1 if pid is None else int(pid)
        key = (video, ts)
        kf = frames.setdefault(key, Keyframe(video, ts))
        slot_key = (person, box) if person >= 0 else box
        if slot_key not in slots[key]:
            slots[key][slot_key] = len(kf.boxes)
            kf.boxes.append(box)
            kf.actions.append(set())
            kf.ids.append(person)
        kf.actions[slots[key][slot_key]].add(action)
    if not frames:
        raise EvadError(f"{what} {path} has no rows; each row is {_LAYOUT}, person id")
    return frames


def read_excluded(path: str | os.PathLike | None, what: str = "exclusions CSV"
                  ) -> set[tuple[str, float]]:
    """Excluded timestamps (``video, timestamp`` rows), as AVA's evaluation reads them; an empty
    file excludes nothing.

    Raises:
        EvadError: missing or unreadable file, not UTF-8, or a row without a video and a
            finite timestamp (with its line number).
    """
    if path is None:
        return set()
    layout = "video, seconds"
    out = set()
    for where, row in csv_rows(path, what, empty_ok=True):
        if len(row) < 2:
            raise EvadError(f"{where}: {len(row)} column(s), an exclusion row has 2: {layout}")
        if not row[0].strip():
            raise EvadError(f"{where}: column 1 (video) is empty; each row is {layout}")
        out.add((row[0], _finite(where, row, 1, "seconds", layout)))
    return out


def read_label_map(path: str | os.PathLike, what: str = "label map") -> dict[int, str]:
    """AVA pbtxt label map -> {id: name} (``item { name: "..." id: N }`` or ``label_id``).

    Raises:
        EvadError: missing, unreadable or empty file, not UTF-8, an id that is not an integer
            (with its line number), or no items.
    """
    text = read_text(path, what)
    out, name = {}, None
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("#"):
            continue
        for key, value in _PBTXT_FIELD.findall(line):
            if key == "name":
                name = value.strip('"')
            elif key in ("id", "label_id") and name is not None:
                try:
                    out[int(value)] = name
                except ValueError:
                    raise EvadError(f"{what} {path}:{number}: id {_show(value)} is not an "
                                    'integer; each item is item { name: "walk" id: 1 }') from None
                name = None
    if not out:
        raise EvadError(f'{what} {path} has no items; each item is item {{ name: "walk" id: 1 }}'
                        " (pbtxt)")
    return out
