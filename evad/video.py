"""Video input, the first step of the clip path: a container OpenCV reads, a directory of
frames, or a live source (``evad.live``); timestamps from the source.

``open_video`` checks the source before any slow work (exists, not empty, opens, first frame
decodes) and returns a ``VideoInfo``; ``iter_frames`` then yields ``(index, time_s, frame)``
with the frame as decoded (BGR uint8, H x W x 3). Timestamps come from the container
(``CAP_PROP_POS_MSEC``, the presentation time of the frame just read), so variable frame rate
video keeps its real times; a frame directory has no container, so its times are
``index / fps`` with ``fps`` given by the caller.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evad.command import check_input_dir, check_input_file
from evad.errors import VideoError
from evad.live import fourcc, iter_live, probe_live, redact
from evad.opencv import native_stderr_silenced, quiet_cv2

__all__ = ["FRAME_EXTENSIONS", "VIDEO_EXTENSIONS", "VideoInfo", "iter_frames", "open_live",
           "open_video"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: file endings taken as videos when a directory, glob or list names many (a job)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".mts", ".3gp", ".ogv")


def _sniff(path: Path) -> tuple[str, str]:
    """(container, video codec FourCC) read from the file's header, "" where unknown: enough
    to tell "an unsupported codec" from "not a video" when OpenCV cannot open a file."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        i = head.find(b"vids")  # the video stream header: 'vids' then the codec FourCC
        return "AVI", head[i + 4:i + 8].decode("latin-1") if i >= 0 else ""
    if head[4:8] == b"ftyp":
        with open(path, "rb") as f:
            data = f.read()
        i = data.find(b"stsd")  # sample description: flags, count, entry size, entry FourCC
        return "MP4", data[i + 16:i + 20].decode("latin-1") if i >= 0 else ""
    if head[:4] == b"\x1aE\xdf\xa3":
        return "Matroska/WebM", ""
    return "", ""


@dataclass(frozen=True)
class VideoInfo:
    """What the runtime needs to know about a source before reading it.

    path: the video file or frame directory.
    width, height: frame size in pixels.
    fps: nominal frame rate (frames/s): the container's average, or the one given for a frame
        directory; used for the rendered video and progress estimates, never for timestamps.
    frame_count: frames the container announces (an estimate for some containers), or the
        number of images in a directory.
    duration_s: ``frame_count / fps`` (an estimate for progress bars).
    codec: FourCC of the video stream ("" for a frame directory).
    frames: the sorted image files of a frame directory (empty for a video file).
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    codec: str
    frames: tuple[Path, ...] = ()
    live: str = ""  # a camera index or stream URL as given; "" for files and frame directories

    @property
    def is_directory(self) -> bool:
        return bool(self.frames)

    @property
    def is_live(self) -> bool:
        return bool(self.live)

    @property
    def source(self) -> str:
        """The source as a person names it: the stream URL (password hidden) / camera index,
        else the path."""
        return redact(self.live) if self.live else str(self.path)

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0

    @property
    def video_id(self) -> str:
        """The id written in the CSV: the file stem, the directory name, ``camera<N>`` for a
        camera, or the last part of a stream URL's path (``stream`` when it has none)."""
        if self.is_live:
            if self.live.isdigit():
                return f"camera{self.live}"
            tail = self.live.split("://", 1)[1].split("?", 1)[0].rstrip("/").split("/")
            name = Path(tail[-1]).stem if len(tail) > 1 else ""
            return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "stream"
        return self.path.name if self.is_directory else self.path.stem


def _natural_key(p: Path) -> list:
    # frame_2.jpg before frame_10.jpg
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def open_live(source: str) -> VideoInfo:
    """Check a live source (a camera index ``0`` or a stream URL, as ``evad.live.live_source``
    tells them) and describe it; nothing is kept open.

    Raises:
        VideoError: it does not open, or sends no frame.
    """
    probe = probe_live(source)
    return VideoInfo(Path(redact(source).replace("://", "_").replace("/", "_")), probe.width,
                     probe.height, probe.fps, 0, probe.codec, live=source)


def open_video(path: str | os.PathLike, fps: float | None = None) -> VideoInfo:
    """Check a video file or frame directory and describe it; nothing is kept open. (A live
    source opens with ``open_live``; ``evad.runtime.source.Source`` tells which an input is.)

    Args:
        path: a video file (any container OpenCV's FFmpeg reads) or a directory of images.
        fps: frame rate of a frame directory (frames/s; default 30). Ignored for video files,
            whose timestamps come from the container.

    Raises:
        VideoError: missing, empty, not a video, no decodable frame (with the codec named), a
            directory without images, or an unreadable image.
    """
    cv2 = quiet_cv2()
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video {path} does not exist")
    if path.is_dir():
        check_input_dir(path, "frame directory", error=VideoError)
        frames = tuple(sorted((p for p in path.iterdir()
                               if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()),
                              key=_natural_key))
        if not frames:
            raise VideoError(f"directory {path} has no frames (images ending in "
                             f"{', '.join(FRAME_EXTENSIONS)})")
        first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise VideoError(f"cannot read frame {frames[0]}: not an image OpenCV decodes")
        rate = 30.0 if fps is None else float(fps)
        if rate <= 0:
            raise VideoError(f"--fps must be > 0 for a frame directory, not {rate}")
        h, w = first.shape[:2]
        return VideoInfo(path, w, h, rate, len(frames), "", frames)
    check_input_file(path, "video", error=VideoError)
    with native_stderr_silenced():
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        opened = cap.isOpened()
        ok, frame = cap.read() if opened else (False, None)
    try:
        if not opened:
            container, codec = _sniff(path)
            if container and codec.isprintable() and codec.strip():
                raise VideoError(f"cannot decode {path}: this OpenCV build has no decoder for "
                                 f"its video codec '{codec}' ({container}); convert it, e.g. "
                                 f"ffmpeg -i {path} -c:v mpeg4 {path.stem}_mpeg4.mp4")
            what = f"a corrupt {container} file" if container else "a corrupt file or not a video"
            raise VideoError(f"cannot open {path}: OpenCV finds no readable video stream in it "
                             f"({what})")
        codec = fourcc(cap.get(cv2.CAP_PROP_FOURCC))
        if not ok or frame is None:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if count <= 0:
                raise VideoError(f"{path} has no video frames")
            raise VideoError(f"cannot decode {path}: this OpenCV build has no decoder for its "
                             f"codec '{codec}' (or the stream is corrupt); convert it, e.g. "
                             f"ffmpeg -i {path} -c:v mpeg4 {path.stem}_mpeg4.mp4")
        h, w = frame.shape[:2]
        rate = cap.get(cv2.CAP_PROP_FPS)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    rate = rate if rate and rate > 0 and np.isfinite(rate) else 30.0
    return VideoInfo(path, w, h, float(rate), max(count, 1), codec)


def iter_frames(info: VideoInfo) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode every frame: ``(index, time_s, frame)``, frame (H, W, 3) BGR uint8.

    ``time_s`` is the container's presentation time (seconds from the stream start) for video
    files, ``index / fps`` for frame directories, and the arrival time (seconds since the first
    frame arrived) for a live source. A stream that ends early (truncated file) simply ends; a
    live source that stops sending (closed, or silent for ``LIVE_TIMEOUT_MS``) ends with one
    warning line; the first frame was checked by ``open_video``.

    Raises:
        VideoError: a directory image cannot be read, or has another size than the first.
    """
    cv2 = quiet_cv2()
    if info.is_directory:
        for i, p in enumerate(info.frames):
            frame = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if frame is None:
                raise VideoError(f"cannot read frame {p}: not an image OpenCV decodes")
            if frame.shape[:2] != (info.height, info.width):
                raise VideoError(f"frame {p} is {frame.shape[1]}x{frame.shape[0]}, the first "
                                 f"frame is {info.width}x{info.height}: frames of a directory "
                                 "must share one size")
            yield i, i / info.fps, frame
        return
    if info.is_live:
        yield from iter_live(info.live, info.fps)
        return
    cap = cv2.VideoCapture(str(info.path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise VideoError(f"cannot open {info.path} (it was readable a moment ago)")
    try:
        i = 0
        last_t = -1.0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                # Containers announce frame counts only roughly; a large shortfall means the
                # stream broke off (a truncated or damaged file): say so, keep what was decoded.
                if info.frame_count > 0 and i < 0.95 * info.frame_count:
                    print(f"warning: decoding of {info.path} stopped at frame {i} of the "
                          f"{info.frame_count} it announces ({i / max(info.fps, 1e-9):.1f} s); "
                          "the file may be truncated or damaged", file=sys.stderr)
                return
            # microsecond rounding drops float noise such as 0.30000000000000006
            t = round(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, 6)
            # Some demuxers report no time (0 or negative) for a frame; times never go back, so
            # such a frame gets the previous time plus one nominal frame.
            if i > 0 and t <= last_t:
                t = last_t + 1.0 / info.fps
            last_t = t
            yield i, t, frame
            i += 1
    finally:
        cap.release()
