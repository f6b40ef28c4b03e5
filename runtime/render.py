"""``--render``: the source video with each keyframe's people drawn, at the source frame rate.

A second decoding pass after detection: every frame shows the detections of the nearest
keyframe in time, so nothing but the (small) per-keyframe records is held in memory, and a
resumed run renders exactly like an uninterrupted one.

The mp4 is H.264 (``libx264``, yuv420p: what browsers play) through PyAV; without PyAV, OpenCV
writes MPEG-4 Part 2 (``mp4v``, which browsers do not play) and the run says so once. Labels
are laid out so that each stays inside the frame and none covers another.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.errors import EvadError
from evad.lazy import available, lazy_import
from evad.runtime.postprocess import short_label
from evad.video import VideoInfo, iter_frames

if TYPE_CHECKING:
    import av
    import cv2
else:
    cv2 = lazy_import("cv2", "pip install opencv-python-headless")
    av = lazy_import("av", "pip install av")

__all__ = ["Rect", "draw_people", "label_rects", "render_video", "video_codec"]

# BGR, distinguishable on most footage
_COLORS = ((0, 200, 255), (255, 120, 0), (60, 220, 60), (220, 60, 220), (0, 90, 255),
           (255, 255, 0), (140, 140, 255), (30, 160, 160))
#: a label block (x1, y1, x2, y2), pixels, x2 / y2 exclusive
Rect = tuple[int, int, int, int]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_rects(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]],
                frame_size: tuple[int, int]) -> list[Rect]:
    """Where each person's label block goes: at its box's top-left corner (above the box when
    there is room), moved left / up to stay inside the frame, then down past any block already
    placed, so that no block covers another or leaves the frame (when the frame can hold them).

    Args:
        boxes: (x1, y1, x2, y2) source pixels, one per person, in drawing order.
        sizes: (width, height) of each label block, pixels.
        frame_size: (height, width).
    """
    fh, fw = frame_size
    placed: list[Rect] = []
    for (x1, y1, _, _), (bw, bh) in zip(boxes, sizes, strict=True):
        bw, bh = min(bw, fw), min(bh, fh)
        x = int(min(max(round(x1), 0), fw - bw))
        y = int(round(y1)) - bh if round(y1) - bh >= 0 else int(max(round(y1), 0))
        y = min(y, fh - bh)
        for _ in range(len(placed) + 1):  # each move clears one block; n + 1 moves suffice
            hit = [r for r in placed if _overlaps((x, y, x + bw, y + bh), r)]
            if not hit:
                break
            y = max(r[3] for r in hit)
            if y + bh > fh:  # no room below: the free column to the right, else wrap to top
                x, y = max(r[2] for r in hit), 0
                if x + bw > fw:
                    x = 0
        placed.append((x, y, x + bw, y + bh))
    return placed


def draw_people(frame: np.ndarray, people: Sequence[dict], max_actions: int = 3) -> list[Rect]:
    """Draw JSONL ``people`` (boxes in source pixels, short labels, scores) on a BGR frame;
    returns where the label blocks went."""
    h, w = frame.shape[:2]
    scale = max(0.4, h / 900)
    thick = max(1, round(h / 360))
    texts: list[list[str]] = []
    sizes: list[tuple[int, int]] = []
    for p in people:
        lines = [f"person {p['person_score']:.2f}"]
        lines += [f"{short_label(a['name'])} {a['score']:.2f}"
                  for a in p["actions"][:max_actions]]
        dims = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1) for t in lines]
        line_h = max(th + base for (_, th), base in dims) + 3
        sizes.append((max(tw for (tw, _), _ in dims) + 4, line_h * len(lines)))
        texts.append(lines)
    rects = label_rects([p["box"] for p in people], sizes, (h, w))
    for n, (p, lines, (lx, ly, lx2, ly2)) in enumerate(zip(people, texts, rects, strict=True)):
        color = _COLORS[n % len(_COLORS)]
        x1, y1, x2, y2 = (round(v) for v in p["box"])
        cv2.rectangle(frame, (x1, y1), (x2, y2), color, thick)
        cv2.rectangle(frame, (lx, ly), (lx2 - 1, ly2 - 1), color, -1)
        line_h = (ly2 - ly) // len(lines)
        for i, text in enumerate(lines):
            cv2.putText(frame, text, (lx + 2, ly + (i + 1) * line_h - 4),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return rects


def video_codec() -> str:
    """The codec ``render_video`` writes here: ``h264`` with PyAV's libx264, else ``mp4v``."""
    if available(av):
        try:
            av.codec.Codec("libx264", "w")
            return "h264"
        except Exception:  # noqa: BLE001 - a PyAV build without libx264
            return "mp4v"
    return "mp4v"


class _H264Writer:
    """BGR frames -> H.264 yuv420p mp4 through PyAV (odd sizes padded by one edge pixel)."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        self.container: Any = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream: Any = self.container.add_stream("libx264", rate=rate)
        self.pad = (height % 2, width % 2)
        self.stream.width, self.stream.height = width + self.pad[1], height + self.pad[0]
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "23", "preset": "veryfast", "movflags": "+faststart"}

    def write(self, frame: np.ndarray) -> None:
        if any(self.pad):
            frame = np.pad(frame, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def release(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


class _Mp4vWriter:
    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                      (width, height))
        if not self.writer.isOpened():
            raise EvadError(f"OpenCV cannot write {path} (mp4v)")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    def release(self) -> None:
        self.writer.release()


def render_video(info: VideoInfo, records: Sequence[dict], out_path: Path,
                 on_frame: Callable[[], None] | None = None) -> int:
    """Write ``out_path`` (mp4, :func:`video_codec`): the video with the nearest keyframe's
    people on every frame.

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
    codec = video_codec()
    writer = (_H264Writer if codec == "h264" else _Mp4vWriter)(tmp, info.fps, info.width,
                                                                info.height)
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
        writer.release()
    except BaseException:
        try:
            writer.release()
        finally:
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out_path)
    return n
