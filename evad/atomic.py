"""Files that appear whole or not at all: write to a unique temporary file beside the target,
flush it to disk, then ``os.replace`` it into place.

A reader sees the old file or the whole new one. Two writers of one path each write their own
temporary file (``mkstemp`` names), so they never write into each other's; the last replace
wins with a complete file. A failure at any point (disk full, Ctrl-C, a target that is a
directory) removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from evad.errors import EvadError

__all__ = ["atomic_path", "atomic_write", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that opens files itself (OpenCV's
    ``VideoWriter`` picks the container from ``suffix``, e.g. ``".tmp.mp4"``): on a clean exit
    the file there is flushed to disk and replaces ``path``; on an exception it is removed.

    Raises:
        EvadError: ``path`` is a directory (so nothing is written beside it).
    """
    path = Path(path)
    if path.is_dir():
        raise EvadError(f"{path} is a directory: give a file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)  # fsync through any descriptor flushes the file
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", newline: str | None = None
                 ) -> Iterator[IO[Any]]:
    """Open a temporary file for ``path`` (``mode`` ``"w"`` or ``"wb"``); on a clean exit it
    replaces ``path``, on an exception it is removed (:func:`atomic_path`).

    Raises:
        EvadError: ``path`` is a directory (so nothing is written beside it).
    """
    kw = {} if "b" in mode else {"newline": newline, "encoding": "utf-8"}
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as f:
        yield f


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` to ``path``, whole or not at all."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path``, whole or not at all."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON to ``path``, whole or not at all."""
    text = json.dumps(obj, indent=2) + "\n"
    write_text_atomic(path, text)
