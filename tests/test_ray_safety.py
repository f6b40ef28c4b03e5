"""What a Ray job does to the machine and to signals: ``evad-trt-run VIDEOS --ray``.

A local Ray's processes (GCS, raylet, agents, workers, the driver) listen on loopback only; a
SIGTERM to the driver ends the job as Ctrl-C does (one line saying what is left, ``job.json``
written, the lock gone, Ray shut down, no native stack dump); an address that is no Ray head
node (a web server, a silent port) is refused at once in one line; a missing model is refused
before Ray starts. The Ray run is a subprocess: its process tree is what is inspected, as the
command starts it and as a library caller that imported ray first does (``ray_job._init``).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import make_video, require

from evad.errors import EvadError
from evad.run_lock import LOCK_NAME
from evad.runtime.cli import main
from evad.runtime.job import plan_job
from evad.runtime.source import ModelRef
from evad.runtime.video_run import DetectOptions

require("ray", "ray")
require("ray.data", "ray")
import psutil  # noqa: E402 - Ray's own copy (ray/thirdparty_files), on the path once ray is

from evad.runtime.ray_job import ATTEMPTS, _check_reachable, run_job_ray  # noqa: E402

_CMD = [sys.executable, "-c",
        "import sys; from evad.runtime.cli import main; sys.exit(main(sys.argv[1:]))"]
ARGS = ("--person-threshold", "0.05", "--keyframe-stride", "0.5", "--quiet")
VIDEOS = 6


def _is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1: how Ray's
    gRPC servers bind 127.0.0.1 on a dual-stack socket)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _listening(root: psutil.Process) -> tuple[set[tuple[str, str, int]], set[psutil.Process]]:
    """(process name, address, port) of every listening TCP socket of ``root`` and its
    descendants, and those processes."""
    seen: set[tuple[str, str, int]] = set()
    try:
        procs = {root, *root.children(recursive=True)}
    except psutil.Error:
        return seen, set()
    for p in procs:
        try:
            name = p.name()
            seen.update((name, c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN)
        except psutil.Error:  # it ended meanwhile
            pass
    return seen, procs


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # ended; its reaper may be slow
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("ray_first", [False, True], ids=["command", "ray-imported-first"])
def test_a_local_ray_listens_on_loopback_and_sigterm_ends_it_like_ctrl_c(tmp_path, tiny_onnx,
                                                                         ray_first):
    videos = tmp_path / "in"
    videos.mkdir()
    for i in range(VIDEOS):
        make_video(videos / f"v{i}.mp4", 3.0, 320, 180, 10.0)
    out = tmp_path / "job"
    cmd = [_CMD[0], _CMD[1], ("import ray; " if ray_first else "") + _CMD[2]]
    proc = subprocess.Popen([*cmd, str(videos), "--onnx", str(tiny_onnx), "--out", str(out),
                             "--ray", *ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    root = psutil.Process(proc.pid)
    sockets: set[tuple[str, str, int]] = set()
    ray_procs: set[psutil.Process] = set()
    deadline = time.monotonic() + 120
    # watch the sockets until two videos are finished (the job well under way), then stop
    while len(list(out.glob("*/detections.csv"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        seen, procs = _listening(root)
        sockets |= seen
        ray_procs |= procs - {root}
        time.sleep(0.05)
    sockets |= _listening(root)[0]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)

    names = {name for name, _, _ in sockets}
    # not vacuous: Ray's servers and a worker were seen listening
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), \
        sockets
    assert all(_is_loopback(ip) for _, ip, _ in sockets), sorted(sockets)

    assert proc.returncode == 130, err
    ours = [x for x in err.splitlines() if x.startswith("evad-trt-run:")]
    assert len(ours) == 1 and "rerun with --resume" in ours[0], err
    assert "SIGTERM received" not in err and "Traceback" not in err, err  # Ray's native dump
    done = int(ours[0].split("interrupted after ")[1].split(" of ")[0])
    assert done < VIDEOS and f" of {VIDEOS} videos" in ours[0]
    job = json.loads((out / "job.json").read_text())
    assert (job["complete"], job["done"], job["not_run"]) == (False, done, VIDEOS - done)
    # what job.json lists as done is whole in its folder; a folder made whole just before the
    # signal, whose row had not reached the driver, is not listed (--resume verifies it)
    finished = {r["video_id"] for r in job["results"] if r["status"] == "done"}
    folders = {p.parent.name for p in out.glob("*/detections.csv")}
    assert finished <= folders and len(folders) >= 2
    assert not (out / LOCK_NAME).exists() and not (out / ATTEMPTS).exists()
    until = time.monotonic() + 15  # Ray shut down: none of its processes is left
    while not all(_gone(p) for p in ray_procs) and time.monotonic() < until:
        time.sleep(0.1)
    assert all(_gone(p) for p in ray_procs), [p for p in ray_procs if not _gone(p)]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # not on the test's stderr
        pass


@pytest.fixture
def web_server() -> Iterator[int]:
    """A plain HTTP server on a loopback port (``python -m http.server``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_that_is_no_ray_head_node_is_refused_at_once(web_server, scheme, tmp_path,
                                                                capfd, tiny_onnx):
    """Ray itself retries a web server's port for minutes (measured: 122 s for HOST:PORT,
    30 s for ray://); the gRPC handshake tells it in milliseconds."""
    videos = tmp_path / "in"
    videos.mkdir()
    make_video(videos / "a.mp4", 1.0, 320, 180, 10.0)
    address = f"{scheme}127.0.0.1:{web_server}"
    t0 = time.monotonic()
    rc = main([str(videos), "--onnx", str(tiny_onnx), "--out", str(tmp_path / "o"), "--ray",
               address, *ARGS])
    err = capfd.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 5, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--ray {address} is no Ray head node" in lines[0], err
    assert "answered b'" in lines[0]  # what the server said instead
    assert not (tmp_path / "o").exists()


def test_a_port_that_answers_nothing_is_refused_after_the_timeout():
    with socket.socket() as s:  # accepts (the kernel does) and never says a word
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(EvadError, match=r"is no Ray head node.*answered nothing in 0\.5 s"):
            _check_reachable(address, timeout=0.5)
        assert time.monotonic() - t0 < 2


def test_a_missing_model_is_refused_before_ray_starts(tmp_path):
    import ray

    videos = tmp_path / "in"
    videos.mkdir()
    make_video(videos / "a.mp4", 1.0, 320, 180, 10.0)
    out = tmp_path / "job"
    missing = tmp_path / "gone.onnx"
    with pytest.raises(EvadError, match=f"ONNX model {missing} does not exist"):
        run_job_ray(plan_job([videos / "a.mp4"], out), ModelRef(onnx=str(missing)),
                    DetectOptions(), out, quiet=True)
    assert not ray.is_initialized() and not out.exists()
