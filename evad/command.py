"""What every command shares: one line per error, numeric flags checked at parse time, and
input / output paths checked with exact messages before any slow work.

Each ``main`` runs its body through :func:`run_command`: an ``EvadError`` or ``OSError`` prints
``prog: error: <one line>`` and exits 2, Ctrl-C exits 130, anything else prints its type and
first line and exits 1. ``EVAD_DEBUG=1`` re-raises, so developers keep the traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import stat
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from evad.errors import ConfigError, EvadError

__all__ = ["KEYFRAME_STRIDE_S", "ArgumentParser", "add_keyframe_stride", "check_input_dir",
           "check_input_file", "check_name", "check_output_dir", "check_output_file", "debug",
           "is_text", "number", "one_line", "read_text", "run_command", "text_name"]


def debug() -> bool:
    """Whether ``EVAD_DEBUG`` asks for tracebacks."""
    return os.environ.get("EVAD_DEBUG", "") not in ("", "0")


def one_line(e: BaseException) -> str:
    """An exception as one line: its first non-empty line; an ``OSError`` with its file."""
    if isinstance(e, OSError) and not isinstance(e, EvadError) and e.strerror:
        where = f" {e.filename}" if e.filename else ""
        what = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large "
                "(a file size limit?)", errno.EACCES: "permission denied",
                errno.EROFS: "read-only file system"}.get(e.errno or 0, e.strerror)
        return f"cannot use{where}: {what}"
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def run_command(prog: str, body: Callable[[], int],
                interrupted: Callable[[], str] | None = None) -> int:
    """Run a command's body; every failure is one line on stderr and an exit code.

    Args:
        prog: the command name, the start of each line.
        body: the command; returns its exit code.
        interrupted: says what a Ctrl-C / SIGTERM left (default: "interrupted").

    Returns:
        body's code; 2 for an ``EvadError`` or ``OSError`` (the input or the machine), 130
        for an interrupt, 1 for anything else (a library's own error, named by type).
    """
    try:
        return body()
    except KeyboardInterrupt:
        print(f"\n{prog}: {interrupted() if interrupted else 'interrupted'}", file=sys.stderr)
        return 130
    except (EvadError, OSError) as e:
        if debug():
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug():
            raise
        print(f"{prog}: error: out of memory: use a smaller input size or batch",
              file=sys.stderr)
        return 2
    except Exception as e:  # a library's own error (onnxruntime, torch, OpenCV): still one line
        if debug():
            raise
        print(f"{prog}: error: {type(e).__name__}: {one_line(e)[:300]} (set EVAD_DEBUG=1 for "
              "the traceback)", file=sys.stderr)
        return 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse that states a usage error in one line and points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a finite number in a range (nan and inf are refused).

    ``number(0, 1)`` is [0, 1]; ``number(0, lo_open=True)`` is > 0; ``integer`` makes ints.
    """
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        want = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        want = f"{kind} {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        want = f"{kind} {'<' if hi_open else '<='} {hi:g}"
    else:
        want = f"a finite {'integer' if integer else 'number'}"

    def parse(text: str) -> float:
        try:
            v: float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        below = lo is not None and (v < lo or (lo_open and v == lo))
        above = hi is not None and (v > hi or (hi_open and v == hi))
        if not math.isfinite(v) or below or above:
            raise argparse.ArgumentTypeError(f"{text} must be {want}")
        return v

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in errors
    return parse


#: seconds between keyframes a command accepts: (0, 3600] (an hour; AVA's protocol is 1 s)
KEYFRAME_STRIDE_S = (0.0, 3600.0)


def add_keyframe_stride(ap: argparse.ArgumentParser | argparse._ArgumentGroup,
                        default: float = 1.0) -> None:
    """The one ``--keyframe-stride`` flag: seconds between keyframes, in
    :data:`KEYFRAME_STRIDE_S` (above 0, at most an hour), default 1 s (the AVA protocol)."""
    lo, hi = KEYFRAME_STRIDE_S
    ap.add_argument("--keyframe-stride", type=number(lo, hi, lo_open=True), default=default,
                    help=f"seconds between keyframes (default {default:g}, the AVA protocol; "
                    f"at most {hi:g})")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: str | os.PathLike, what: str, *, empty_ok: bool = False,
                     error: type[EvadError] = EvadError) -> Path:
    """``path`` as a readable, non-empty regular file, else one exact reason.

    Raises:
        error (EvadError or a subclass): missing (and whether its folder is), a directory, a
            FIFO or device, unreadable, or empty.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        parent = p.parent
        where = "" if parent.is_dir() else f" (nor does its folder {parent})"
        raise error(f"{what} {p} does not exist{where}") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {p} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is {_kind(st.st_mode)}, not a regular file")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {p} is not readable (permission denied)")
    if st.st_size == 0 and not empty_ok:
        raise error(f"{what} {p} is empty (0 bytes)")
    return p


def check_input_dir(path: str | os.PathLike, what: str,
                    error: type[EvadError] = EvadError) -> Path:
    """``path`` as a readable directory, else one exact reason (raised as ``error``)."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} {p} does not exist")
    if not p.is_dir():
        raise error(f"{what} {p} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise error(f"{what} {p} is not readable (permission denied)")
    return p


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder this process can create or write into (nothing is created).

    Raises:
        EvadError: it, or the nearest existing folder above it, is not a writable folder.
    """
    p = Path(path)
    _check_writable_folder(p, f"{what} {p}")
    return p


def _check_writable_folder(folder: Path, shown: str) -> None:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == folder and shown.endswith(str(folder)) else f": {probe}"
        raise EvadError(f"{shown}{where} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EvadError(f"{shown} is not writable ({probe}: permission denied)")


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a file this process can (over)write: not a directory, its folder
    writable (nothing is created)."""
    p = Path(path)
    if p.is_dir():
        raise EvadError(f"{what} {p} is a directory: give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise EvadError(f"{what} {p} is not writable (permission denied)")
    _check_writable_folder(p.parent if str(p.parent) else Path("."), f"{what} {p}")
    return p


def is_text(name: str) -> bool:
    """Whether ``name`` is real text: a file name made of bytes that are not UTF-8 reaches
    Python as a str holding surrogate escapes (PEP 383), which UTF-8 writers and OpenCV cannot
    take."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_name(name: str) -> str:
    """``name`` as UTF-8 text: each byte of a file name that is not UTF-8 (a surrogate escape)
    written ``%XX``, as URLs write bytes (``bad\\xff.mp4`` -> ``bad%FF.mp4``); a name that is
    text comes back unchanged."""
    if is_text(name):
        return name
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c
                   for c in name)


def check_name(name: str, what: str) -> str:
    """``name`` as one path component: not empty, no separator, not ``.`` or ``..``, no control
    characters, at most 255 bytes.

    Raises:
        ConfigError: naming what is wrong with it.
    """
    bad = None
    if not name:
        bad = "is empty"
    elif name in (".", "..") or name.startswith(".."):
        bad = "starts with '..'"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        bad = "has a path separator"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        bad = "has a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > 255:
        bad = "is longer than 255 bytes"

    if bad:
        raise ConfigError(f"{what} {name!r} {bad}: it names a file or folder, so it must be "
                          "a plain name")
    return name


def read_text(path: str | os.PathLike, what: str, *, empty_ok: bool = False) -> str:
    """The whole of ``path`` as UTF-8 text (a leading byte-order mark dropped).

    Raises:
        EvadError: the file is missing, not a readable regular file, empty (unless
            ``empty_ok``), or not UTF-8 (the line of the first bad byte is named).
    """
    p = check_input_file(path, what, empty_ok=empty_ok)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise EvadError(f"{what} {p} is not UTF-8 text: byte 0x{data[e.start]:02x} at line "
                        f"{line}{hint}; save it as UTF-8") from e
