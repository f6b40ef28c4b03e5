"""One run at a time per output folder: a lock file that names its holder.

``FolderLock(folder)`` takes an exclusive ``flock`` on ``folder/.evad.lock`` and writes the
holder's command, pid, host and start time into it. The kernel drops the lock when the holder
exits however it exits (SIGKILL included), so a lock file left by a dead run is stale by
construction: the next run takes it and says whose it was. A second live run is refused at
once with the holder's line. ``flock`` is local to one machine's kernel: on a network file
system, give each machine its own folder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from evad.errors import EvadError

__all__ = ["FolderBusyError", "FolderLock", "LOCK_NAME"]

LOCK_NAME = ".evad.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; a lock file created exclusively stands in
    fcntl = None  # type: ignore[assignment]


class FolderBusyError(EvadError):
    """Another live run holds the folder."""


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(
        started, (int, float)) else "?"
    return (f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {when})")


class FolderLock:
    """Hold ``folder`` for this process (a context manager; the folder is created).

    Args:
        folder: the output folder.
        command: what holds it, for the other run's message (``evad-trt-run``).

    Attributes:
        taken_over: after ``acquire``, the line describing a stale holder whose lock was
            taken, or "".
    """

    def __init__(self, folder: str | os.PathLike, command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.taken_over = ""
        self._file: IO[str] | None = None

    def acquire(self) -> FolderLock:
        """Take the lock or raise ``FolderBusyError`` naming the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the holder may remove the file between our open and flock
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
            try:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                elif f.tell() > 0:
                    raise BlockingIOError
            except BlockingIOError:
                holder = self._read(f)
                f.close()
                raise FolderBusyError(
                    f"{self.folder} is in use by {_describe(holder)}: wait for it to finish, "
                    "or use another output folder") from None
            except BaseException:
                f.close()
                raise
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder had just removed: try the new one
                f.close()
                continue
            old = self._read(f)
            if old:
                self.taken_over = (f"took over the lock of {_describe(old)}, which is no "
                                   "longer running")
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"command": self.command, "pid": os.getpid(),
                                "host": socket.gethostname(), "started": time.time(),
                                "argv": sys.argv}) + "\n")
            f.flush()
            self._file = f
            return self
        raise FolderBusyError(f"{self.folder}: could not take {self.path} (it keeps changing)")

    @staticmethod
    def _read(f: IO[str]) -> dict[str, Any]:
        try:
            f.seek(0)
            holder = json.loads(f.read() or "{}")
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first: a run that opens the file
        meanwhile finds it gone and retries)."""
        if self._file is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
