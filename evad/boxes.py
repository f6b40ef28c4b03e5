"""Axis-aligned boxes ``x1, y1, x2, y2`` in numpy (no torch): the one IoU the evaluation and the
parity judge share.

Areas have no +1 pixel convention (AVA's evaluation and detectron2 measure them so), which makes
the functions the same on pixel and on normalised (0..1) coordinates.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_area", "box_iou"]


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1y1x2y2 -> (n,) areas; a box with x2 < x1 or y2 < y1 has area 0."""
    return np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(-1)


def box_iou(a: np.ndarray, b: np.ndarray, flat_match: float | None = None) -> np.ndarray:
    """Intersection over union of every pair: (n, 4) x (m, 4) x1y1x2y2 -> (n, m) in [0, 1].

    Two boxes whose union is empty (both of area 0) have IoU 0, unless ``flat_match`` is given:
    then such a pair counts as 1 when every coordinate agrees within ``flat_match`` (in the
    boxes' unit). The parity judge uses that for boxes clipped flat against an image edge,
    where two backends agree on a box that has no area to overlap.
    """
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None] - inter
    # the inner where keeps 0 / 0 from being evaluated (no warning) where the outer drops it
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    if flat_match is None:
        return iou
    same = np.abs(a[:, None] - b[None]).max(-1) <= flat_match
    return np.where((union <= 0) & same, 1.0, iou)
