"""OpenCV, loaded lazily and kept quiet: the one place that sets its logging.

OpenCV and the FFmpeg inside it print their own warnings for corrupt or unreachable input
("moov atom not found"); every reader of this project reports one line of its own instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from evad.lazy import lazy_import

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["fourcc", "native_stderr_silenced", "quiet_cv2"]

# OpenCV reads this once, when it first initialises FFmpeg; -8 = quiet.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def quiet_cv2():
    """OpenCV with its own log silenced. Raises MissingDependency (one sentence) when it is not
    installed."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - builds without the logging module
        pass
    return cv2


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: for a process where FFmpeg was initialised before
    this module set its log level. Used only while probing a source, before any progress
    output."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def fourcc(value: float) -> str:
    """A FourCC code as text (``FMP4``), or its hex value when not printable."""
    code = int(value)
    chars = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return chars if chars.isprintable() and code else f"0x{code:08x}"
