"""Post-processing: person threshold, boxes back to source pixels, labelled actions.

Per keyframe the model proposes ``n`` boxes; a box is a person when its person score is at
least the threshold (0.7 officially). The official code keeps every box when none passes; the
runtime does that only when asked (``keep_all_if_none``), since on real video "nobody here" is a
valid answer. Action probabilities are per class (sigmoid, multi-label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Person", "keyframe_people", "short_label"]


@dataclass(frozen=True)
class Person:
    """One detected person on a keyframe.

    box: (4,) x1y1x2y2 in source-frame pixels.
    box_norm: (4,) x1y1x2y2 divided by the frame width/height (the AVA CSV convention), 0..1.
    score: person probability.
    action_probs: (C,) per-class probabilities; class i is action id i + 1.
    """

    box: np.ndarray
    box_norm: np.ndarray
    score: float
    action_probs: np.ndarray

    def top_actions(self, labels: Sequence[str], threshold: float,
                    top_k: int) -> list[dict]:
        """Actions with probability >= ``threshold``, best first, at most ``top_k``:
        ``[{"id": 1-based id, "name": label, "score": probability}]``."""
        order = np.argsort(-self.action_probs, kind="stable")[:top_k]
        return [{"id": int(i) + 1, "name": labels[i] if i < len(labels) else f"class_{i + 1}",
                 "score": round(float(self.action_probs[i]), 4)}
                for i in order if self.action_probs[i] >= threshold]


def keyframe_people(boxes: np.ndarray, person_scores: np.ndarray, action_probs: np.ndarray,
                    scale: tuple[float, float], frame_size: tuple[int, int],
                    person_threshold: float, keep_all_if_none: bool = False) -> list[Person]:
    """The people of one keyframe, most confident first.

    Args:
        boxes: (n, 4) x1y1x2y2 in the resized, unpadded input's pixels.
        person_scores: (n,) person probabilities.
        action_probs: (n, C) action probabilities.
        scale: (sx, sy) resized -> source pixels (``Preprocessor.scale``).
        frame_size: (h, w) of the source frame, pixels.
        person_threshold: keep boxes whose person score is >= this.
        keep_all_if_none: the official fallback: keep every box when none passes.
    """
    keep = person_scores >= person_threshold
    if not keep.any() and keep_all_if_none:
        keep = np.ones_like(keep)
    h, w = frame_size
    sx, sy = scale
    lim = np.array([w, h, w, h], np.float64)
    out = []
    for i in np.flatnonzero(keep)[np.argsort(-person_scores[keep], kind="stable")]:
        box = np.clip(boxes[i].astype(np.float64) * [sx, sy, sx, sy], 0.0, lim)
        out.append(Person(box, box / lim, float(person_scores[i]),
                          action_probs[i].astype(np.float64)))
    return out


def short_label(name: str, max_len: int = 18) -> str:
    """A label short enough to draw: "carry/hold (an object)" -> "carry/hold"."""
    s = name.split(" (")[0]
    return s if len(s) <= max_len else s[: max_len - 1] + "."
