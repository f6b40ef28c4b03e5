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

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from evad.command import check_input_file, read_text
from evad.errors import ConfigError, VideoError
from evad.live import live_source
from evad.runner import Runner
from evad.runtime.backends import open_runner
from evad.video import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoInfo, open_live, open_video

__all__ = ["LIST_EXTENSIONS", "ModelRef", "SkippedInput", "Source", "SourceKind"]

#: list files: one video per line (``#`` starts a comment), paths relative to the list file
LIST_EXTENSIONS = (".txt", ".lst", ".list")

#: ``file``: a video file; ``frames``: a directory of images; ``live``: a camera index or a
#: stream URL; ``job``: many videos (a directory of videos, a glob, a list file)
SourceKind = Literal["file", "frames", "live", "job"]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass(frozen=True)
class SkippedInput:
    """An entry a job's folder or glob found that is no video the job can read (a dangling
    link, a symlink loop, an unreadable file or folder, a folder link a glob does not follow,
    a file inside the job's own ``--out``), and why: listed in ``job.json``, never dropped
    silently.

    path: the entry as found (not resolved). reason: why it is no input, one line.
    """

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """``{path, reason}``."""
        return asdict(self)


#: why a file with no read permission is no input
UNREADABLE = "not readable (permission denied)"
#: why an entry that links to itself (directly or in a ring) is no input
LOOP = "a symlink loop"


def _stat(p: Path) -> os.stat_result | str:
    """``p``'s status, links followed, or why it has none (a loop, a dangling link)."""
    try:
        return p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return LOOP
        if e.errno == errno.ENOENT:
            return (f"a link to {os.readlink(p)}, which does not exist" if p.is_symlink()
                    else "does not exist")
        return f"cannot be read: {e.strerror}"


def _unreadable(p: Path) -> str | None:
    """Why ``p`` cannot be a job's video (a regular file it can read), None when it can;
    links are followed (the data read is the target's; the name stays the link's)."""
    st = _stat(p)
    if isinstance(st, str):
        return st
    if stat.S_ISREG(st.st_mode) and not os.access(p, os.R_OK):
        return UNREADABLE
    return None


def _skipped_text(skipped: list[SkippedInput]) -> str:
    first = skipped[0]
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return f"{len(skipped)} skipped: {first.path}: {first.reason}{more}"


@dataclass(frozen=True)
class Source:
    """An input argument, classified.

    text: the argument as given (a path, a pattern, a camera index or a URL).
    kind: what it names (:data:`SourceKind`).
    videos: a job's videos in job order (sorted by path; a list file keeps its order), each
        as named (a link stays the link: a job's ids are the names the user gave); empty for
        the other kinds.
    skipped: what a job's folder or glob found with a video's ending that it cannot read
        (:class:`SkippedInput`), in path order.
    """

    text: str
    kind: SourceKind
    videos: tuple[Path, ...] = ()
    skipped: tuple[SkippedInput, ...] = ()

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
        files with a video ending only, folder links a wildcard matches not followed: see
        :class:`_Glob`) when no file has that name; else a video file (whether it exists is
        :meth:`open`'s to say). A job's entries are named as found (a link keeps its own name);
        a folder's or glob's entry with a video ending that cannot be read (a dangling link, a
        loop, no read permission) is skipped, each in :attr:`skipped` with why.

        Raises:
            VideoError: a directory with neither videos nor frames, or with both, or that
                cannot be listed.
            ConfigError: a glob that matches no video it can read, a list file that names none
                or names a file it cannot read (missing, a dangling link, a loop, unreadable).
        """
        text = os.fspath(text)
        if live_source(text) is not None:
            return cls(text, "live")
        p = Path(text)
        if p.is_dir():
            return cls._folder(text, p)
        if p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            return cls(text, "job", _read_list(p))
        if not p.exists() and _is_glob(text):
            videos, skipped = _Glob(p).expand()
            if not videos:
                left = f"; {_skipped_text(skipped)}" if skipped else ""
                raise ConfigError(f"{text!r} matches no video (files ending in "
                                  f"{', '.join(VIDEO_EXTENSIONS)}{left}; quote the pattern so "
                                  "the shell leaves it to evad-trt-run)")
            return cls(text, "job", tuple(videos), tuple(skipped))
        return cls(text, "file")

    @classmethod
    def _folder(cls, text: str, p: Path) -> Source:
        """A directory: its images (frames) or its videos (a job); a video-named entry it
        cannot read (a dangling link, a loop, no read permission) is skipped, said why."""
        try:
            names = sorted(p.iterdir())
        except OSError as e:
            raise VideoError(f"directory {p} cannot be listed: {e.strerror}") from None
        images, videos, skipped = 0, [], []
        for q in names:
            video = q.suffix.lower() in VIDEO_EXTENSIONS
            st = _stat(q)
            if isinstance(st, str):
                if video:
                    skipped.append(SkippedInput(str(q), st))
            elif not stat.S_ISREG(st.st_mode):
                continue
            elif not video:
                images += q.suffix.lower() in FRAME_EXTENSIONS
            elif os.access(q, os.R_OK):
                videos.append(q)
            else:
                skipped.append(SkippedInput(str(q), UNREADABLE))
        if images and videos:
            raise VideoError(f"directory {p} holds {len(videos)} videos and {images} "
                             "images: a job of videos or a video as frames? Move one kind "
                             f"out, or name the videos with a glob ('{p}/*.mp4')")
        if images:
            return cls(text, "frames")
        if not videos:
            if skipped:
                raise VideoError(f"directory {p} has no video it can read "
                                 f"({_skipped_text(skipped)})")
            raise VideoError(f"directory {p} has no frames (images ending in "
                             f"{', '.join(FRAME_EXTENSIONS)}) and no videos (files ending "
                             f"in {', '.join(VIDEO_EXTENSIONS)})")
        return cls(text, "job", tuple(videos), tuple(skipped))

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
        ConfigError: a file named that is missing, a dangling link, a loop or unreadable (its
            line given), or no video named.
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
        why = _unreadable(q)  # named one by one: what cannot be read is refused, not skipped
        if why is not None:
            raise ConfigError(f"{p} line {n}: {q}: {why}")
        videos.append(q)
    if not videos:
        raise ConfigError(f"video list {p} names no video (one path per line)")
    return tuple(videos)


class _Glob:
    """A glob's videos and what it skipped, found by walking its tree (``**``: any depth of
    folders, hidden ones excluded as ``glob.glob`` excludes them) without following a folder
    link that a wildcard matched: such a link can lead out of the tree or back into it (one to
    ``..`` made ``glob.glob`` recurse until the paths grew too long). Folders the pattern spells
    out are followed as named. Files, links included, keep the name they were found by.

    Args:
        pattern: the glob (``**`` recursive).
    """

    def __init__(self, pattern: Path) -> None:
        parts = pattern.parts
        i = next(i for i, part in enumerate(parts) if _is_glob(part))
        self.root = Path(*parts[:i])  # "." for a pattern that starts with a wildcard
        # "DIR/**" names every file below DIR, as "DIR/**/*"
        self.pats = parts[i:] + (("*",) if parts[-1] == "**" else ())
        self.real_root = Path(os.path.realpath(self.root))
        self.found: set[Path] = set()
        self.skipped: dict[Path, str] = {}
        self.seen: set[tuple[int, int, int]] = set()

    def expand(self) -> tuple[list[Path], list[SkippedInput]]:
        """The videos it can read and what it skipped, each sorted by path."""
        self._walk(self.root, 0)
        return sorted(self.found), [SkippedInput(str(q), why)
                                    for q, why in sorted(self.skipped.items())]

    def _walk(self, d: Path, k: int) -> None:
        """Match ``self.pats[k:]`` below the folder ``d``."""
        pat = self.pats[k]
        if pat == "**":
            st = d.stat()
            if (st.st_dev, st.st_ino, k) in self.seen:  # a bind mount of a folder above
                return
            self.seen.add((st.st_dev, st.st_ino, k))
            self._walk(d, k + 1)
            for sub in self._folders(d, "*"):
                self._walk(sub, k)
        elif k == len(self.pats) - 1:
            for q in self._entries(d, pat):
                if q.suffix.lower() not in VIDEO_EXTENSIONS:
                    continue
                why = _unreadable(q)
                if why is not None:
                    self.skipped.setdefault(q, why)
                elif q.is_file():
                    self.found.add(q)
        elif not _is_glob(pat):
            if (d / pat).is_dir():  # spelled out by the user: followed as named
                self._walk(d / pat, k + 1)
        else:
            for sub in self._folders(d, pat):
                self._walk(sub, k + 1)

    def _entries(self, d: Path, pat: str) -> list[Path]:
        """The entries of ``d`` that ``pat`` (one path component) matches, sorted; a name that
        starts with ``.`` only for a pattern that does."""
        if not _is_glob(pat):
            return [d / pat] if os.path.lexists(d / pat) else []
        try:
            names = os.listdir(d)
        except OSError as e:
            self.skipped.setdefault(d, f"cannot be listed: {e.strerror}")
            return []
        return [d / n for n in sorted(names) if fnmatch.fnmatch(n, pat)
                and (not n.startswith(".") or pat.startswith("."))]

    def _folders(self, d: Path, pat: str) -> Iterator[Path]:
        """The real folders in ``d`` that ``pat`` matches; a folder link or a loop it matches
        is skipped, said why."""
        for q in self._entries(d, pat):
            if not q.is_symlink():
                if q.is_dir():
                    yield q
                continue
            st = _stat(q)
            if isinstance(st, str):
                if st == LOOP:  # a folder or a file, who knows: said; a dangling link is no
                    self.skipped.setdefault(q, st)  # folder (skipped above if it is a video)
            elif stat.S_ISDIR(st.st_mode):
                self.skipped.setdefault(q, self._link_reason(d, q))

    def _link_reason(self, d: Path, link: Path) -> str:
        target = Path(os.path.realpath(link))
        if Path(os.path.realpath(d)).is_relative_to(target):
            return f"a link to {target}, a folder that holds it (a loop): not followed"
        if not target.is_relative_to(self.real_root):
            return f"a link to {target}, out of the tree {self.root}: not followed"
        return (f"a link to the folder {target}: not followed (a glob walks each folder of its "
                "tree by its own name)")


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
