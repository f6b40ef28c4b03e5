"""Live sources: a camera index (``0``) or a stream URL (``rtsp://``, ``http://``, ...).

``probe_live`` checks that a source opens and sends a frame; ``iter_live`` reads it on a
thread that stamps each frame on arrival, so frames never wait unseen in FFmpeg's or the
camera's buffers. ``redact`` hides a URL's password wherever a source is printed or recorded.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evad.errors import VideoError
from evad.opencv import fourcc, native_stderr_silenced, quiet_cv2

__all__ = ["LIVE_BUFFER_S", "LIVE_MAX_BAD_FRAMES", "LIVE_SCHEMES", "LIVE_TIMEOUT_MS", "LiveProbe",
           "is_camera", "iter_live", "live_name", "live_source", "probe_live", "redact"]

#: URL schemes read as live streams (OpenCV's FFmpeg opens them)
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
#: how long a live source may stay silent before it counts as dropped (ms)
LIVE_TIMEOUT_MS = 10_000
#: how far (s of frames) detection may fall behind a live source before frames are dropped
LIVE_BUFFER_S = 4.0
#: unreadable frames in a row (a corrupt JPEG of an MJPEG stream, a damaged packet) after which
#: a live source counts as ended; fewer are skipped and counted
LIVE_MAX_BAD_FRAMES = 25
#: OpenCV's camera index is a C int
_MAX_CAMERA_INDEX = 2**31 - 1


def live_source(text: str) -> str | None:
    """``text`` as a live source (a camera index such as ``0``, or a URL with a scheme in
    ``LIVE_SCHEMES``), or None for a path. An existing file of that name stays a file."""
    if Path(text).exists():
        return None
    if is_camera(text):
        if int(text) > _MAX_CAMERA_INDEX:
            raise VideoError(f"camera index {text} is out of range: a camera index is a small "
                             "number (0 is the first camera)")
        return text
    scheme, sep, _ = text.partition("://")
    return text if sep and scheme.lower() in LIVE_SCHEMES else None


def redact(source: str) -> str:
    """A stream URL without its password (``rtsp://user:***@host/...``): what is printed and
    recorded; the URL itself is used only to connect."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return source
    user = netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return f"{scheme}://{user}:***@{netloc.rsplit('@', 1)[1]}{slash}{path}"


def live_name(source: str) -> str:
    """How messages name a live source: ``camera 0`` or ``stream rtsp://user:***@host/x``."""
    return f"camera {source}" if is_camera(source) else f"stream {redact(source)}"


def is_camera(source: str) -> bool:
    """Whether a live source is a camera index (ASCII digits: ``"²".isdigit()`` holds too, and
    ``int`` refuses it)."""
    return source.isascii() and source.isdigit()


def _open_capture(source: str):
    """``cv2.VideoCapture`` of a live source; OpenCV's own exceptions (it raises for some
    sources it cannot parse) become one VideoError line naming the source."""
    cv2 = quiet_cv2()
    try:
        if is_camera(source):
            return cv2.VideoCapture(int(source))
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, LIVE_TIMEOUT_MS,
                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, LIVE_TIMEOUT_MS])
    except (cv2.error, OverflowError, ValueError) as e:
        reason = (str(e).strip().splitlines() or ["?"])[-1]
        raise VideoError(f"cannot open {live_name(source)}: OpenCV refused it ({reason})") from e


@dataclass(frozen=True)
class LiveProbe:
    """What a probe saw: frame ``width`` x ``height`` (pixels), nominal ``fps`` (frames/s; 30
    when the source does not say), and the codec's FourCC."""

    width: int
    height: int
    fps: float
    codec: str


def probe_live(source: str) -> LiveProbe:
    """Open a live source, read one frame and release it; ``iter_live`` opens it again, so
    frames sent while the model loads do not pile up in front of the first clip.

    Raises:
        VideoError: it does not open, or sends no frame within ``LIVE_TIMEOUT_MS``.
    """
    with native_stderr_silenced():
        cap = _open_capture(source)
        opened = cap.isOpened()
        ok, frame = cap.read() if opened else (False, None)
    try:
        what = live_name(source)
        if not opened:
            raise VideoError(f"cannot open {what}: OpenCV could not connect to it (check the "
                             "address, that it is serving, and that its format is one FFmpeg "
                             "reads)")
        if not ok or frame is None:
            raise VideoError(f"{what} opened but sent no frame within "
                             f"{LIVE_TIMEOUT_MS / 1000:g} s")
        rate = cap.get(quiet_cv2().CAP_PROP_FPS)
        codec = fourcc(cap.get(quiet_cv2().CAP_PROP_FOURCC))
    finally:
        cap.release()
    rate = rate if rate and 0 < rate < 1000 and np.isfinite(rate) else 30.0
    h, w = frame.shape[:2]
    return LiveProbe(w, h, float(rate), codec)


def iter_live(source: str, fps: float, max_bad_frames: int = LIVE_MAX_BAD_FRAMES
              ) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(index, time_s, frame)`` of a live source, ``time_s`` the arrival time (seconds since
    the first frame arrived), frame (H, W, 3) BGR uint8.

    A reader thread drains the source; when detection falls more than ``LIVE_BUFFER_S`` (at
    ``fps`` frames/s) behind, the oldest frames are dropped (said once, counted at the end)
    rather than letting the lag grow. An unreadable frame (a corrupt JPEG of an MJPEG stream) is
    skipped (said once, counted at the end); ``max_bad_frames`` failed reads in a row, or none
    readable for ``LIVE_TIMEOUT_MS``, end the source (closed, unplugged or silent) with one
    warning line.
    """
    with native_stderr_silenced():
        cap = _open_capture(source)
    if not cap.isOpened():
        raise VideoError(f"cannot open {redact(source)} again (it was readable a moment ago)")
    what = live_name(source)
    frames: queue.Queue = queue.Queue(maxsize=max(2, int(LIVE_BUFFER_S * fps)))
    stop = threading.Event()
    dropped, skipped = [0], [0]

    def read() -> None:
        bad_run, last_good = 0, time.monotonic()
        try:
            while not stop.is_set():
                ok, frame = cap.read()
                if not ok or frame is None:
                    # a closed source fails every read at once, a silent one after the read
                    # timeout: either ends it; failures a frame follows were unreadable frames
                    bad_run += 1
                    if (bad_run >= max_bad_frames
                            or time.monotonic() - last_good > LIVE_TIMEOUT_MS / 1000):
                        break
                    continue
                if bad_run:
                    if not skipped[0]:
                        print(f"warning: {what} sent an unreadable frame: skipping it (the "
                              "count is given at the end)", file=sys.stderr, flush=True)
                    skipped[0] += bad_run
                bad_run, last_good = 0, time.monotonic()
                item = (last_good, frame)
                while True:
                    try:
                        frames.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            frames.get_nowait()
                            dropped[0] += 1
                            if dropped[0] == 1:
                                print(f"warning: detection is more than {LIVE_BUFFER_S:g} s "
                                      f"behind {what}: dropping its oldest frames",
                                      file=sys.stderr, flush=True)
                        except queue.Empty:
                            pass
        finally:
            frames.put(None)

    reader = threading.Thread(target=read, name="evad-live-read", daemon=True)
    reader.start()
    try:
        i = 0
        t0 = item_t = 0.0
        while True:
            item = frames.get()
            if item is None:
                gone = f"{item_t - t0:.1f} s" if i else "0.0 s"
                lost = f"; {dropped[0]} frames dropped to keep up" if dropped[0] else ""
                bad = f"; {skipped[0]} unreadable frames skipped" if skipped[0] else ""
                print(f"warning: {what} stopped sending after {i + dropped[0]} frames ({gone})"
                      f": the detections up to there are kept{lost}{bad}", file=sys.stderr,
                      flush=True)
                return
            item_t, frame = item
            if i == 0:
                t0 = item_t
            yield i, round(item_t - t0, 6), frame
            i += 1
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                frames.get_nowait()
            except queue.Empty:
                pass
            reader.join(timeout=0.1)
        cap.release()
