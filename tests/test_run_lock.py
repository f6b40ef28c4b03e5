"""FolderLock: one holder per folder, named to the next; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from evad.run_lock import LOCK_NAME, FolderBusyError, FolderLock

_HOLD = ("import sys, time; from evad.run_lock import FolderLock; "
         "l = FolderLock(sys.argv[1], 'evad-train').acquire(); print('held', flush=True); "
         "time.sleep(60)")


def test_a_live_holder_is_named_and_a_dead_one_taken_over(tmp_path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "o")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError) as e:
            FolderLock(tmp_path / "o", "evad-trt-run").acquire()
        assert f"in use by evad-train (pid {child.pid} on {socket.gethostname()}" in str(e.value)
    finally:
        child.kill()
        child.wait()
    holder = json.loads((tmp_path / "o" / LOCK_NAME).read_text())
    assert holder["pid"] == child.pid  # SIGKILL leaves the file, but not the kernel's lock
    t0 = time.monotonic()
    with FolderLock(tmp_path / "o", "evad-trt-run") as lock:
        assert time.monotonic() - t0 < 1
        assert f"took over the lock of evad-train (pid {child.pid}" in lock.taken_over
        assert json.loads((tmp_path / "o" / LOCK_NAME).read_text())["command"] == "evad-trt-run"
    assert not (tmp_path / "o" / LOCK_NAME).exists()  # released: removed


def test_release_then_reacquire_in_one_process(tmp_path) -> None:
    a = FolderLock(tmp_path, "a").acquire()
    a.release()
    b = FolderLock(tmp_path, "b").acquire()
    assert b.taken_over == ""  # a released lock is not stale
    b.release()
