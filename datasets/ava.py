"""AVA-format annotations for training and evaluation: the keyframes of a ground-truth CSV with
their people (boxes and action ids), and the label map.

The CSV rows are read by ``evad.ava_csv`` (the one reader of the format), which refuses, with
the file, the line and the fix, what it cannot read: text that is not UTF-8, a row with too few
columns, a value that is not a finite number, a field longer than the CSV limit.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evad.ava_csv import Box, clipped_repr, read_rows
from evad.command import check_input_dir, check_input_file, read_text
from evad.errors import EvadError

__all__ = ["AnnotatedKeyframe", "check_dataset", "read_ava_csv", "read_label_map"]

#: ``key: value`` of a pbtxt line (a quoted string, or a bare word up to a space or brace)
_PBTXT_FIELD = re.compile(r'\b(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s{}]+)')


@dataclass
class AnnotatedKeyframe:
    """The annotated people of one keyframe of a video: boxes (P, 4) normalised x1y1x2y2, each
    person's action ids and person id (-1: the CSV gave none)."""

    video: str
    timestamp: float
    boxes: list[Box] = field(default_factory=list)
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


def read_ava_csv(path: str | os.PathLike, what: str = "annotation file"
                 ) -> dict[tuple[str, float], AnnotatedKeyframe]:
    """Ground truth grouped by (video, timestamp) and person: one person per person id, or per
    box where the CSV gives no person id.

    Raises:
        EvadError: missing, unreadable or empty file, not UTF-8, or a malformed row (with its
            line number).
    """
    frames: dict[tuple[str, float], AnnotatedKeyframe] = {}
    slots: dict[tuple[str, float], dict] = defaultdict(dict)
    for video, ts, box, action, pid in read_rows(path, False, what):
        person = -1 if pid is None else pid
        key = (video, ts)
        kf = frames.setdefault(key, AnnotatedKeyframe(video, ts))
        slot_key = (person, box) if person >= 0 else box
        if slot_key not in slots[key]:
            slots[key][slot_key] = len(kf.boxes)
            kf.boxes.append(box)
            kf.actions.append(set())
            kf.ids.append(person)
        kf.actions[slots[key][slot_key]].add(action)
    return frames


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
                    raise EvadError(f"{what} {path}:{number}: id {clipped_repr(value)} is not an "
                                    'integer; each item is item { name: "walk" id: 1 }') from None
                name = None
    if not out:
        raise EvadError(f'{what} {path} has no items; each item is item {{ name: "walk" id: 1 }}'
                        " (pbtxt)")
    return out


def check_dataset(root: str | os.PathLike, flag: str) -> None:
    """An AVA-format folder (what ``evad-train --make-data`` writes): ``annotations.csv`` with
    valid rows and each annotated ``videos/<video id>.mp4``. ``flag`` names the folder in the
    message (``--data``).

    Raises:
        EvadError: the folder, its annotations or an annotated video is missing or unreadable;
            one line naming it and what the folder must hold.
    """
    try:
        check_input_dir(root, f"{flag} folder")
        ann = check_input_file(Path(root) / "annotations.csv", f"annotations of {flag}")
    except EvadError as e:
        raise EvadError(f"{e}: {flag} must hold annotations.csv and videos/<video id>.mp4 "
                        "(evad-train --make-data DIR makes one)") from e
    for video in sorted({kf.video for kf in read_ava_csv(ann, f"annotations of {flag}").values()}):
        check_input_file(Path(root) / "videos" / f"{video}.mp4", f"video of {flag} "
                         f"(annotated in {ann})")
