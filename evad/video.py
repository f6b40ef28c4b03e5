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

import functools
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evad.command import check_input_dir, check_input_file, is_text, text_name
from evad.errors import VideoError
from evad.live import LIVE_MAX_BAD_FRAMES, is_camera, iter_live, probe_live, redact
from evad.opencv import fourcc, native_stderr_silenced, quiet_cv2

__all__ = ["CONTAINERS", "FRAME_EXTENSIONS", "VIDEO_EXTENSIONS", "Container", "VideoInfo",
           "decodes", "iter_frames", "open_live", "open_video", "sniff_container"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: file endings taken as videos when a directory, glob or list names many (a job)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".mts", ".3gp", ".ogv")


class Container(NamedTuple):
    """What :func:`sniff_container` read from a file's first bytes.

    container: the container's name (``MP4``, ``AVI``, ``Matroska/WebM``, ``MPEG-TS`` ...), ""
        when the bytes start no container of :data:`CONTAINERS`.
    codec: the video codec's FourCC where the header names one (AVI, MP4), else "".
    demuxer: FFmpeg's demuxer name(s) for that container (a ``format_whitelist``), else "".
    seen: for bytes that are no container, what they look like, as a noun phrase for one line
        (``an HLS playlist (text)``, ``an FFmpeg concat list (text)``, ``binary data ...``).
    """

    container: str
    codec: str
    demuxer: str
    seen: str


#: the containers :func:`sniff_container` recognises: name -> FFmpeg demuxer(s)
CONTAINERS = {"MP4": "mov", "QuickTime": "mov", "AVI": "avi", "Matroska/WebM": "matroska",
              "MPEG-TS": "mpegts", "MPEG-PS": "mpeg", "FLV": "flv,live_flv", "Ogg": "ogg",
              "ASF/WMV": "asf"}
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
#: QuickTime files from before ``ftyp``: their first atom (at byte 4) is one of these
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _ts_packets(head: bytes, offset: int, size: int) -> bool:
    """MPEG-TS: a 0x47 sync byte at ``offset`` of every ``size``-byte packet (at least two
    packets, up to eight checked)."""
    n = min((len(head) - offset) // size, 8)
    return n >= 2 and all(head[offset + k * size] == 0x47 for k in range(n))


def _text_kind(head: bytes) -> str:
    """What text bytes are (an HLS playlist, a concat list ...), "" when they are not text."""
    chunk = head[:4096]
    text = ""
    for cut in range(4):  # a multi-byte character cut at the chunk's end is still text
        try:
            text = chunk[:len(chunk) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if not text or any(c < " " and c not in "\t\r\n\f" for c in text[:512]):
        return ""
    low = text.lstrip("\ufeff \t\r\n").lower()
    if low.startswith("#extm3u"):
        return "an HLS playlist (text)"
    if low.startswith("ffconcat") or any(line.strip().startswith("file ")
                                          for line in low.splitlines()[:20]):
        return "an FFmpeg concat list (text)"
    if low.startswith("v=0"):
        return "an SDP session description (text)"
    if re.match(r"[a-z][a-z0-9+.-]*://", low):
        return "a URL (text)"
    if low.startswith(("<?xml", "<mpd", "<smil")):
        return "an XML document (text)"
    return "text"


def sniff_container(source: bytes | str | os.PathLike) -> Container:
    """Read a video's container from its first bytes: the one container sniff of the project.

    ``open_video`` uses it to tell "a codec this OpenCV lacks" from "not a video" when OpenCV
    cannot open a file; the Triton ``evad`` model uses it as its allow-list, refusing every
    VIDEO that is not one of :data:`CONTAINERS` before anything decodes (FFmpeg would follow a
    playlist's or concat list's paths to other files).

    Args:
        source: a file, or the bytes of one.

    Returns:
        The :class:`Container` (``container`` "" when the bytes start no known container).
    """
    path = None if isinstance(source, bytes) else Path(source)
    if path is None:
        assert isinstance(source, bytes)
        head, data = source[:1 << 16], source
    else:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        data = b""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        i = head.find(b"vids")  # the video stream header: 'vids' then the codec FourCC
        return Container("AVI", head[i + 4:i + 8].decode("latin-1") if i >= 0 else "", "avi", "")
    if head[4:8] == b"ftyp" or head[4:8] in _MOV_ATOMS:
        if path is not None:  # the sample table may sit after the media data: read it all
            data = path.read_bytes()
        i = data.find(b"stsd")  # sample description: flags, count, entry size, entry FourCC
        codec = data[i + 16:i + 20].decode("latin-1") if i >= 0 else ""
        return Container("MP4" if head[4:8] == b"ftyp" else "QuickTime", codec, "mov", "")
    for name, hit in (("Matroska/WebM", head[:4] == b"\x1aE\xdf\xa3"),
                      ("MPEG-TS", _ts_packets(head, 0, 188) or _ts_packets(head, 4, 192)),
                      ("MPEG-PS", head[:4] == b"\x00\x00\x01\xba"),
                      ("FLV", head[:3] == b"FLV"), ("Ogg", head[:4] == b"OggS"),
                      ("ASF/WMV", head[:16] == _ASF_GUID)):
        if hit:
            return Container(name, "", CONTAINERS[name], "")
    if not head:
        return Container("", "", "", "empty")
    seen = _text_kind(head) or ("binary data in no container this project reads (first "
                                f"bytes {head[:8].hex(' ')})")
    return Container("", "", "", seen)


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
    live: a camera index or stream URL as given ("" for files and frame directories).
    max_bad_frames: a live source's unreadable frames in a row that end it (fewer are skipped).
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    codec: str
    frames: tuple[Path, ...] = ()
    live: str = ""
    max_bad_frames: int = LIVE_MAX_BAD_FRAMES

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
            if is_camera(self.live):
                return f"camera{self.live}"
            tail = self.live.split("://", 1)[1].split("?", 1)[0].rstrip("/").split("/")
            name = Path(tail[-1]).stem if len(tail) > 1 else ""
            return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "stream"
        # a file name that is not UTF-8 keeps its bytes as %XX (the CSV and JSON are UTF-8)
        return text_name(self.path.name if self.is_directory else self.path.stem)


def _natural_key(p: Path) -> list:
    # frame_2.jpg before frame_10.jpg
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _capture(path: Path):
    """``cv2.VideoCapture`` of a file whatever bytes its name holds: OpenCV takes a name as
    UTF-8 and crashes the process (SIGSEGV) on a str holding surrogate escapes (a name that is
    not UTF-8), so such a file is opened through a link with a plain name in a private temporary
    folder, removed once FFmpeg holds the file open."""
    cv2 = quiet_cv2()
    if is_text(str(path)):
        return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    with tempfile.TemporaryDirectory(prefix="evad-open-") as tmp:  # mode 0700
        alias = Path(tmp) / f"video{path.suffix if is_text(path.suffix) else ''}"
        alias.symlink_to(Path(path).absolute())
        return cv2.VideoCapture(str(alias), cv2.CAP_FFMPEG)


def _imread(path: Path) -> np.ndarray | None:
    """``cv2.imread`` of an image (BGR uint8), None when OpenCV cannot decode it; a name that
    is not UTF-8 is read by Python and decoded from memory (see ``_capture``)."""
    cv2 = quiet_cv2()
    if is_text(str(path)):
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


@functools.cache
def decodes(codec: str, suffix: str) -> bool | None:
    """Whether this OpenCV build decodes the video codec ``codec`` (a FourCC as a container
    names it: ``mp4v``, ``XVID``) in a ``suffix`` (``.mp4``, ``.avi``) container.

    OpenCV cannot list FFmpeg's decoders, and a file it cannot open may lack a decoder or be
    damaged; so two frames are encoded with that FourCC and read back. True: it decodes (an
    unreadable file of that codec is damaged); None: this build has no encoder for it either,
    so the question stays open. Costs tens of milliseconds once per codec and process.
    """
    cv2 = quiet_cv2()
    if len(codec) != 4 or not codec.isascii() or not codec.isprintable():
        return None
    with tempfile.TemporaryDirectory(prefix="evad-codec-") as tmp, native_stderr_silenced():
        name = os.path.join(tmp, f"probe{suffix}")
        writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*codec), 10.0, (32, 32))
        if not writer.isOpened():
            return None
        for value in (0, 255):
            writer.write(np.full((32, 32, 3), value, np.uint8))
        writer.release()
        cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        try:
            ok, frame = cap.read() if cap.isOpened() else (False, None)
        finally:
            cap.release()
    return True if ok and frame is not None else None


def _unopenable(path: Path) -> str:
    """Why OpenCV cannot open a video file, in one line: no decoder for its codec, a damaged
    container, or not a video."""
    container, codec, _, _ = sniff_container(path)
    if not container:
        return (f"cannot open {path}: OpenCV finds no readable video stream in it (a corrupt "
                "file or not a video)")
    suffix = ".avi" if container == "AVI" else ".mp4"
    if codec and decodes(codec, suffix):
        return (f"cannot open {path}: its {container} container is damaged or truncated (its "
                f"codec '{codec}' is one this OpenCV decodes); re-encode or fetch the file again")
    if codec.isprintable() and codec.strip():
        return (f"cannot decode {path}: this OpenCV build has no decoder for its video codec "
                f"'{codec}' ({container}), or the file is damaged; convert it, e.g. "
                f"ffmpeg -i {path} -c:v mpeg4 {path.stem}_mpeg4.mp4")
    return (f"cannot open {path}: OpenCV finds no readable video stream in it (its {container} "
            "container is damaged or truncated)")


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
        first = _imread(frames[0])
        if first is None:
            raise VideoError(f"cannot read frame {frames[0]}: not an image OpenCV decodes")
        rate = 30.0 if fps is None else float(fps)
        if rate <= 0:
            raise VideoError(f"--fps must be > 0 for a frame directory, not {rate}")
        h, w = first.shape[:2]
        return VideoInfo(path, w, h, rate, len(frames), "", frames)
    check_input_file(path, "video", error=VideoError)
    with native_stderr_silenced():
        cap = _capture(path)
        opened = cap.isOpened()
        ok, frame = cap.read() if opened else (False, None)
    try:
        if not opened:
            raise VideoError(_unopenable(path))
        codec = fourcc(cap.get(cv2.CAP_PROP_FOURCC))
        if not ok or frame is None:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if count <= 0:
                raise VideoError(f"{path} has no video frames")
            # OpenCV opens a stream only once FFmpeg found its decoder: this data is damaged
            raise VideoError(f"cannot decode {path}: its '{codec}' video stream is damaged (no "
                             f"frame of the {count} it announces decodes, although this OpenCV "
                             "has the decoder); re-encode or fetch the file again")
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
            frame = _imread(p)
            if frame is None:
                raise VideoError(f"cannot read frame {p}: not an image OpenCV decodes")
            if frame.shape[:2] != (info.height, info.width):
                raise VideoError(f"frame {p} is {frame.shape[1]}x{frame.shape[0]}, the first "
                                 f"frame is {info.width}x{info.height}: frames of a directory "
                                 "must share one size")
            yield i, i / info.fps, frame
        return
    if info.is_live:
        yield from iter_live(info.live, info.fps, info.max_bad_frames)
        return
    cap = _capture(info.path)
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
