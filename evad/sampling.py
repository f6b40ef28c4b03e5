"""Clip sampling, the clip path's second step: which frames make the clip of each keyframe
(the AVA protocol). The runtime, ``evad-eval --data``, training data and Triton all sample here.

A keyframe is requested every ``keyframe_stride`` seconds from t = 0 (1 s: AVA's one
annotation per second); its frame is the one whose container timestamp is nearest (the earlier
one on a tie), so variable frame rate video samples the right moment. The clip around a keyframe
at frame ``c`` is ``num_frames`` frames ``frame_stride`` apart with the keyframe at index
``num_frames // 2`` (16 x 4: frames c - 32, c - 28, ..., c + 28, keyframe at index 8), as in the
official code (SlowFast ``get_sequence``); indices before the first or after the last frame
repeat the edge frame.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Keyframe",
    "KeyframeSelector",
    "clip_indices",
    "clip_offsets",
    "expected_keyframes",
    "frame_at",
]


def clip_offsets(num_frames: int, frame_stride: int) -> list[int]:
    """Frame offsets of a clip from its keyframe: ``(j - num_frames // 2) * frame_stride``."""
    return [(j - num_frames // 2) * frame_stride for j in range(num_frames)]


def clip_indices(center: int, num_frames: int, frame_stride: int,
                 total_frames: int) -> list[int]:
    """The clip's frame indices around keyframe ``center``, clamped to ``[0, total_frames)``.

    Example: ``clip_indices(0, 16, 4, 100)`` is nine 0s (eight repeats of the first frame,
    then the keyframe itself) and 4, 8, ..., 28.
    """
    last = total_frames - 1
    return [min(max(center + o, 0), last) for o in clip_offsets(num_frames, frame_stride)]


def _previous_is_nearer(t: float, previous_s: float, next_s: float) -> bool:
    """The keyframe rule: the frame before ``t`` wins when it is at least as near as the frame
    at or after it (the earlier one on a tie). Times in seconds."""
    return t - previous_s <= next_s - t


def frame_at(times_s: Sequence[float], t: float) -> int:
    """The frame of a keyframe requested at ``t`` seconds, among frames at ``times_s``
    (container times, non-decreasing): the nearest, the earlier on a tie, as
    ``KeyframeSelector`` settles it; the last frame for a time past the end.

    Example: ``frame_at([0.0, 0.5, 1.5], 1.0)`` is 1 (0.5 s before vs 0.5 s after).
    """
    if not times_s:
        raise ValueError("no frames")
    j = bisect.bisect_left(times_s, t - 1e-9)  # first frame at or after t (the selector's)
    if j == len(times_s):
        return j - 1
    if j > 0 and _previous_is_nearer(t, times_s[j - 1], times_s[j]):
        return j - 1
    return j


@dataclass(frozen=True)
class Keyframe:
    """One keyframe: ``index`` k (0, 1, ...), requested ``time_s`` = k * stride (seconds, the
    CSV timestamp), the chosen ``frame`` index and that frame's container time ``frame_time_s``."""

    index: int
    time_s: float
    frame: int
    frame_time_s: float


class KeyframeSelector:
    """Streaming keyframe choice: feed frame times in order, get keyframes as they settle.

    A keyframe at time t settles on the first frame whose time is >= t (then it is that frame
    or the one before, whichever is nearer), so the selector needs no look-ahead buffer.

    Args:
        stride_s: seconds between keyframes (> 0).
    """

    def __init__(self, stride_s: float) -> None:
        if not stride_s > 0:
            raise ValueError(f"keyframe stride must be > 0 s, not {stride_s}")
        self.stride_s = float(stride_s)
        self._k = 0
        self._prev: tuple[int, float] | None = None

    def _time(self, k: int) -> float:
        # k * stride, rounded so 0.1-second strides give 0.3, not 0.30000000000000004
        return round(k * self.stride_s, 9)

    def push(self, index: int, time_s: float) -> list[Keyframe]:
        """Frame ``index`` at ``time_s`` (seconds, non-decreasing) -> the keyframes it settles."""
        out = []
        while self._time(self._k) <= time_s + 1e-9:
            t = self._time(self._k)
            if self._prev is not None and _previous_is_nearer(t, self._prev[1], time_s):
                frame, ft = self._prev
            else:
                frame, ft = index, time_s
            out.append(Keyframe(self._k, t, frame, ft))
            self._k += 1
        self._prev = (index, time_s)
        return out


def expected_keyframes(duration_s: float, stride_s: float) -> int:
    """Keyframes of a video whose last frame is at about ``duration_s`` (progress estimate)."""
    return int(max(duration_s, 0.0) / stride_s + 1e-9) + 1

