"""What a run reads, each said once: the video input (:class:`Source`) and the model
(:class:`ModelRef`).

``evad-trt-run``'s positional argument names a video file, a frame directory, a live source
(a camera index or a stream URL) or a job of many videos (a directory of videos, a glob, a list
file). :meth:`Source.classify` decides which, once, before any slow work, and resolves a job's
videos; the CLI, the local job and the Ray job all take its answer. The grammar of a live
source (which schemes, a camera index) is ``evad.live.live_source``'s.

:class:`ModelRef` is the model a run opens (files and run options), one record for a single
run, a local job and a Ray job: the CLI opens it, a Ray actor opens it from its JSON, and
``job.json`` records it.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from evad.command import check_input_file, read_text
from evad.errors import ConfigError, VideoError
from evad.live import live_source
from evad.runner import Runner
from evad.runtime.backends import open_runner
from evad.video import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoInfo, open_live, open_video

__all__ = ["LIST_EXTENSIONS", "ModelRef", "Source", "SourceKind"]

#: list files: one video per line (``#`` starts a comment), paths relative to the list file
LIST_EXTENSIONS = (".txt", ".lst", ".list")

#: ``file``: a video file; ``frames``: a directory of images; ``live``: a camera index or a
#: stream URL; ``job``: many videos (a directory of videos, a glob, a list file)
SourceKind = Literal["file", "frames", "live", "job"]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass(frozen=True)
class Source:
    """An input argument, classified.

    text: the argument as given (a path, a pattern, a camera index or a URL).
    kind: what it names (:data:`SourceKind`).
    videos: a job's videos in job order (sorted by path; a list file keeps its order); empty
        for the other kinds.
    """

    text: str
    kind: SourceKind
    videos: tuple[Path, ...] = ()

    @property
    def is_job(self) -> bool:
        return self.kind == "job"

    @property
    def is_live(self) -> bool:
        return self.kind == "live"

    @classmethod
    def classify(cls, text: str | os.PathLike) -> Source:
        """What ``text`` names; a job's videos are listed (nothing is decoded).

        In this order: a live source (a camera index, or a URL with a scheme of
        ``evad.live.LIVE_SCHEMES``; an existing file of that name stays a file, and a URL's
        ``?`` or ``[`` make no glob); a directory (of images: frames; of videos: a job); a list
        file (``LIST_EXTENSIONS``: one path per line, ``#`` starts a comment at a line's start
        or after a space, relative paths from the list's folder); a glob (``**`` recursive,
        files with a video ending only) when no file has that name; else a video file (whether
        it exists is :meth:`open`'s to say).

        Raises:
            VideoError: a directory with neither videos nor frames, or with both.
            ConfigError: a glob that matches no video, a list file that names none or names a
                missing file.
        """
        text = os.fspath(text)
        if live_source(text) is not None:
            return cls(text, "live")
        p = Path(text)
        if p.is_dir():
            entries = [q for q in p.iterdir() if q.is_file()]
            images = sum(q.suffix.lower() in FRAME_EXTENSIONS for q in entries)
            videos = sorted(q for q in entries if q.suffix.lower() in VIDEO_EXTENSIONS)
            if images and videos:
                raise VideoError(f"directory {p} holds {len(videos)} videos and {images} "
                                 "images: a job of videos or a video as frames? Move one kind "
                                 f"out, or name the videos with a glob ('{p}/*.mp4')")
            if images:
                return cls(text, "frames")
            if not videos:
                raise VideoError(f"directory {p} has no frames (images ending in "
                                 f"{', '.join(FRAME_EXTENSIONS)}) and no videos (files ending "
                                 f"in {', '.join(VIDEO_EXTENSIONS)})")
            return cls(text, "job", tuple(videos))
        if p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            return cls(text, "job", _read_list(p))
        if not p.exists() and _is_glob(text):
            videos = sorted(Path(m) for m in glob.glob(text, recursive=True)
                            if Path(m).is_file() and Path(m).suffix.lower() in VIDEO_EXTENSIONS)
            if not videos:
                raise ConfigError(f"{text!r} matches no video (files ending in "
                                  f"{', '.join(VIDEO_EXTENSIONS)}; quote the pattern so the "
                                  "shell leaves it to evad-trt-run)")
            return cls(text, "job", tuple(videos))
        return cls(text, "file")

    def open(self, fps: float | None = None) -> VideoInfo:
        """Check the one video this names and describe it (``evad.video.open_video``).

        Args:
            fps: the frame rate of a frame directory (frames/s; default 30).

        Raises:
            ConfigError: a job (it names many videos: open each of :attr:`videos`).
            VideoError: as ``open_video``: missing, not a video, no decodable frame, a live
                source that does not open.
        """
        if self.is_job:
            raise ConfigError(f"{self.text} names {len(self.videos)} videos, not one")
        return open_live(self.text) if self.is_live else open_video(Path(self.text), fps)


def _read_list(p: Path) -> tuple[Path, ...]:
    """The videos a list file names, in its order.

    Raises:
        ConfigError: a missing file named (its line given), or no video named.
        EvadError: the list is empty, unreadable or not UTF-8 (file and line named).
    """
    videos = []
    # UTF-8, a byte-order mark dropped (Windows editors write one), other bytes refused naming
    # the file and line
    for n, raw in enumerate(read_text(p, "video list").splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        q = Path(line) if Path(line).is_absolute() else p.parent / line
        if not q.exists():
            raise ConfigError(f"{p} line {n}: {q} does not exist")
        videos.append(q)
    if not videos:
        raise ConfigError(f"video list {p} names no video (one path per line)")
    return tuple(videos)


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


@dataclass(frozen=True)
class ModelRef:
    """The model a run opens: its files and how to run them.

    engine, onnx, ckpt: the model files given (paths as text, absolute for a job so that Ray
        actors find them; any subset, None where not given).
    backend: ``auto`` or a backend of ``evad.runner.BACKEND_TABLE``.
    threads: ONNX Runtime / OpenVINO intra-op threads (0 = its default).
    precision: a run precision of the table (``fp32``, ``bf16``, ...).

    ``to_json`` / ``from_json`` carry it to a Ray actor and into ``job.json``.
    """

    engine: str | None = None
    onnx: str | None = None
    ckpt: str | None = None
    backend: str = "auto"
    threads: int = 0
    precision: str = "fp32"

    @classmethod
    def of(cls, engine: Path | None = None, onnx: Path | None = None,
           ckpt: Path | None = None, backend: str = "auto", threads: int = 0,
           precision: str = "fp32") -> ModelRef:
        """From paths (None: not given)."""
        def text(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return cls(text(engine), text(onnx), text(ckpt), backend, threads, precision)

    def files(self) -> tuple[Path | None, Path | None, Path | None]:
        """(engine, onnx, ckpt) as paths, None where not given."""
        return _path(self.engine), _path(self.onnx), _path(self.ckpt)

    def resolved(self) -> ModelRef:
        """The same model with each file checked and made absolute (for another machine's or
        folder's process: a Ray actor).

        Raises:
            EvadError: a file that is missing, not a regular file, unreadable or empty.
        """
        for f, what in zip(self.files(), ("TensorRT engine", "ONNX model", "checkpoint"),
                           strict=True):
            if f is not None:  # said here in one line, not by every actor that fails to start
                check_input_file(f, what)
        engine, onnx, ckpt = (None if f is None else f.resolve() for f in self.files())
        return ModelRef.of(engine, onnx, ckpt, self.backend, self.threads, self.precision)

    def open(self) -> tuple[Runner, list[str]]:
        """The runner (``open_runner``, the CPU arena shrunk after each run for long videos)
        and the notes on why ``auto`` chose it. Close the runner (``with``) when done.

        Raises:
            BackendError / EvadError: as ``open_runner``.
        """
        engine, onnx, ckpt = self.files()
        return open_runner(self.backend, engine=engine, onnx=onnx, ckpt=ckpt,
                           threads=self.threads, shrink_arena=True, precision=self.precision)

    def to_json(self) -> dict[str, Any]:
        """``{"engine", "onnx", "ckpt", "backend", "threads", "precision"}``."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelRef:
        """The inverse of :meth:`to_json` (keys it lacks take the defaults).

        Raises:
            ConfigError: a key that is no field.
        """
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"model reference has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**obj)
