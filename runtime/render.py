"""``--render``: the source video with each keyframe's people drawn, at the source frame rate.

A second decoding pass after detection: every frame shows the detections of the nearest
keyframe in time, so nothing but the (small) per-keyframe records is held in memory, and a
resumed run renders exactly like an uninterrupted one. OpenCV writes MPEG-4 Part 2 (``mp4v``);
it cannot write H.264 (environment-facts.md, "Video").
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from evad.errors import EvadError
from evad.lazy import lazy_import
from evad.runtime.postprocess import short_label
from evad.runtime.video import VideoInfo, iter_frames

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["draw_people", "render_video"]

# BGR, distinguishable on most footage
_COLORS = ((0, 200, 255), (255, 120, 0), (60, 220, 60), (220, 60, 220), (0, 90, 255),
           (255, 255, 0), (140, 140, 255), (30, 160, 160))


def draw_people(frame: np.ndarray, people: Sequence[dict], max_actions: int = 3) -> None:
    """Draw JSONL ``people`` (boxes in source pixels, short labels, scores) on a BGR frame."""

    h = frame.shape[0]
    scale = max(0.4, h / 900)
    thick = max(1, round(h / 360))
    for n, p in enumerate(people):
        color = _COLORS[n % len(_COLORS)]
        x1, y1, x2, y2 = (round(v) for v in p["box"])
        cv2.rectangle(frame, (x1, y1), (x2, y2), color, thick)
        lines = [f"person {p['person_score']:.2f}"]
        lines += [f"{short_label(a['name'])} {a['score']:.2f}"
                  for a in p["actions"][:max_actions]]
        y = y1 + 2
        for text in lines:
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            cv2.rectangle(frame, (x1, y), (x1 + tw + 4, y + th + base + 2), color, -1)
            cv2.putText(frame, text, (x1 + 2, y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (0, 0, 0), 1, cv2.LINE_AA)
            y += th + base + 3


def render_video(info: VideoInfo, records: Sequence[dict], out_path: Path,
                 on_frame: Callable[[], None] | None = None) -> int:
    """Write ``out_path`` (mp4): the video with the nearest keyframe's people on every frame.

    Args:
        info: the source video.
        records: JSONL keyframe objects (``time``, ``people``), any order.
        out_path: the final file; written as ``<stem>.partial.mp4`` and moved into place.
        on_frame: called after each frame (progress bar).

    Returns:
        Frames written.
    """

    recs = sorted(records, key=lambda r: r["time"])
    times = [r["time"] for r in recs]
    tmp = out_path.with_name(out_path.stem + ".partial.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), info.fps,
                             (info.width, info.height))
    if not writer.isOpened():
        raise EvadError(f"OpenCV cannot write {tmp} (mp4v)")
    n = 0
    try:
        for _, t, frame in iter_frames(info):
            if recs:
                j = bisect.bisect_left(times, t)
                if j == len(times) or (j > 0 and t - times[j - 1] <= times[j] - t):
                    j -= 1
                draw_people(frame, recs[j]["people"])
            writer.write(frame)
            n += 1
            if on_frame is not None:
                on_frame()
    except BaseException:
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    writer.release()
    os.replace(tmp, out_path)
    return n
