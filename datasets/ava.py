"""AVA-format annotations and detections: CSV rows ``video, timestamp, x1, y1, x2, y2, action,
[person or score]`` with normalised box coordinates, grouped per keyframe."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evad.errors import EvadError

__all__ = ["Keyframe", "read_ava_csv", "read_excluded", "read_label_map"]


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


def read_ava_csv(path: str | os.PathLike) -> dict[tuple[str, float], Keyframe]:
    """Ground truth (last column: person id) grouped by (video, timestamp) and person/box.

    Raises:
        EvadError: missing file or a malformed row (with its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise EvadError(f"annotation file {path} does not exist")
    frames: dict[tuple[str, float], Keyframe] = {}
    slots: dict[tuple[str, float], dict] = defaultdict(dict)
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            try:
                video, ts = row[0], float(row[1])
                box = tuple(float(v) for v in row[2:6])
                action = int(row[6])
                person = int(float(row[7])) if len(row) > 7 and row[7] != "" else -1
            except (ValueError, IndexError) as e:
                raise EvadError(f"{path}:{line}: not an AVA row ({e}): {row}") from e
            key = (video, ts)
            kf = frames.setdefault(key, Keyframe(video, ts))
            slot_key = (person, box) if person >= 0 else box
            if slot_key not in slots[key]:
                slots[key][slot_key] = len(kf.boxes)
                kf.boxes.append(box)  # type: ignore[arg-type]
                kf.actions.append(set())
                kf.ids.append(person)
            kf.actions[slots[key][slot_key]].add(action)
    return frames


def read_excluded(path: str | os.PathLike | None) -> set[tuple[str, float]]:
    """Excluded timestamps (``video, timestamp`` rows), as AVA's evaluation reads them."""
    if path is None:
        return set()
    with open(path, newline="") as f:
        return {(r[0], float(r[1])) for r in csv.reader(f) if r}


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """AVA pbtxt label map -> {id: name} (``item { name: "..." id: N }`` or ``label_id``)."""
    text = Path(path).read_text()
    out, name = {}, None
    for raw in text.replace("{", "\n").replace("}", "\n").splitlines():
        line = raw.strip()
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip().strip('"')
        elif line.startswith(("id:", "label_id:")) and name is not None:
            out[int(line.split(":", 1)[1])] = name
            name = None
    if not out:
        raise EvadError(f"{path} has no label map items")
    return out
