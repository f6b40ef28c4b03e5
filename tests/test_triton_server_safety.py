"""A Triton server started by this project listens where it was told, survives the request that
crashes tritonserver's HTTP front, and leaves nothing behind (issue #28).

Real ``tritonserver`` 2.51 (the ``nvidia-pytriton`` wheel, ``bash .ci/triton_env.sh``) and real
signals: gRPC only and loopback unless asked; an oversized input shape is an error over gRPC
(over HTTP/JSON it aborts the server: why HTTP is off); ``kill -9`` of the program that started
the server, or SIGTERM / SIGHUP to it, leaves no server, stub, port or temporary folder; a
long VIDEO request does not hold up a clip request. ``launch.sh``'s arguments with a fake
``tritonserver``. Listening sockets are read from ``/proc`` (no psutil).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import container_path, make_video, require

from evad.serving.triton_repo import write_repository
from evad.serving.triton_server import TMP_PREFIX, TritonServer, sweep_stale_folders

grpcclient = require("tritonclient.grpc", "triton")
from tritonclient.utils import InferenceServerException  # noqa: E402 - after the extra's check

from evad.serving.triton_client import detect  # noqa: E402

#: the request that aborts tritonserver 2.51's HTTP front: 83 bytes of JSON, a UINT8 input
#: whose shape says 10^12 elements (std::bad_alloc in its JSON parser, exit by SIGABRT)
OVERSIZED_JSON = json.dumps({"inputs": [{"name": "VIDEO", "shape": [10**12], "datatype": "UINT8",
                                         "data": [1]}]}, separators=(",", ":")).encode()


def _http_post(port: int, body: bytes, host: str = "127.0.0.1") -> bytes:
    """POST ``body`` to the evad model's infer URL at ``host:port``; what came back."""
    head = (f"POST /v2/models/evad/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(head + body)
        try:
            return s.recv(4096)
        except OSError:
            return b""


# --- processes and sockets, from /proc ------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat``'s fields after the name (state first); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _tree(root: int) -> dict[int, str]:
    """``root`` and its live descendants: pid -> start time."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) and st[0] not in "ZX":
            children.setdefault(int(st[1]), []).append(int(d.name))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if (st := _stat(pid)) and st[0] not in "ZX":
            out[pid] = st[19]
            todo += children.get(pid, [])
    return out


def _alive(procs: dict[int, str]) -> list[int]:
    """Which of ``procs`` (pid -> start time) still run (not zombies)."""
    return [p for p, start in procs.items()
            if (st := _stat(p)) and st[19] == start and st[0] not in "ZX"]


def _address(hex_addr: str) -> str:
    """A ``/proc/net/tcp*`` address (little-endian words) as text; v4-mapped v6 as v4."""
    raw = bytes.fromhex(hex_addr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _listening(root: int, want: set[tuple[str, int]] | None = None) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in ``root``'s process tree; with ``want``,
    read again for up to 5 s until it is that (a listener can show a moment after the log
    line that says it started)."""
    deadline = time.monotonic() + (5 if want is not None else 0)
    while True:
        found = _listening_now(root)
        if want is None or found == want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _listening_now(root: int) -> set[tuple[str, int]]:
    inodes = set()
    for pid in _tree(root):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                addr, port = f[1].split(":")
                found.add((_address(addr), int(port, 16)))
    return found


def _shm_regions(root: int) -> set[Path]:
    """The Python backend's shared-memory regions mapped in ``root``'s process tree."""
    found = set()
    for pid in _tree(root):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        found |= {Path(ln.split()[-1]) for ln in maps.splitlines()
                  if "/dev/shm/triton_python_backend_shm_region_" in ln}
    return found


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_onnx) -> Path:
    return write_repository(tmp_path_factory.mktemp("safety") / "repo", tiny_onnx, gpu=False)


def _good_clip() -> np.ndarray:
    return np.zeros((16, 60, 80, 3), np.uint8)


# --- launch.sh, without a server --------------------------------------------------------------

def test_launch_sh_serves_grpc_on_loopback_unless_asked(tmp_path, repo):
    """Its arguments to tritonserver (a fake one that records them): gRPC, metrics and the
    (off) HTTP on 127.0.0.1 by default; --host and --http change exactly that."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "tritonserver").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (bin_ / "tritonserver").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}

    def args(*extra: str) -> list[str]:
        return subprocess.run(["sh", str(repo / "launch.sh"), str(repo), "--skip-check", *extra],
                              env=env, capture_output=True, text=True, check=True,
                              timeout=30).stdout.splitlines()

    def listen(got: list[str]) -> dict[str, str]:
        keys = ("--grpc-address", "--metrics-address", "--allow-http", "--http-address")
        return {k: v for k, _, v in (a.partition("=") for a in got) if k in keys}

    loopback = {"--grpc-address": "127.0.0.1", "--metrics-address": "127.0.0.1",
                "--allow-http": "false", "--http-address": "127.0.0.1"}
    assert listen(args()) == loopback
    assert listen(args("--http")) == {**loopback, "--allow-http": "true"}
    for host in (["--host", "0.0.0.0"], ["--host=0.0.0.0"]):
        assert listen(args(*host)) == {k: "0.0.0.0" if k.endswith("address") else v
                                       for k, v in loopback.items()}
    got = args("--host", "10.1.2.3", "--http", "--grpc-port=9001")
    assert listen(got) == {"--grpc-address": "10.1.2.3", "--metrics-address": "10.1.2.3",
                           "--allow-http": "true", "--http-address": "10.1.2.3"}
    assert got[-1] == "--grpc-port=9001"  # tritonserver's own options pass through, last
    text = (repo / "launch.sh").read_text()
    assert "sh /models/launch.sh /models --host 0.0.0.0" in text
    assert "Inside a container it needs --host 0.0.0.0" in text


def test_stale_server_folders_are_swept(tmp_path):
    """A folder whose owners are all gone is removed at the next start; a live owner's, and a
    new folder that has no owners yet, are kept."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]

    def folder(name: str, owners: str | None, age_s: float = 0) -> Path:
        d = tmp_path / f"{TMP_PREFIX}{name}"
        (d / "backends").mkdir(parents=True)
        if owners is not None:
            (d / "owners").write_text(owners)
        t = time.time() - age_s
        os.utime(d, (t, t))
        return d

    stale = folder("stale", f"{dead.pid} 1\n")
    reused = folder("reused", f"{os.getpid()} {int(me) + 1}\n")  # our pid, another start time
    live = folder("live", f"{dead.pid} 1\n{os.getpid()} {me}\n")
    new = folder("new", None)
    old = folder("old", None, age_s=3600)
    other = tmp_path / "evad-other"
    other.mkdir()
    assert sorted(sweep_stale_folders(tmp_path)) == sorted([stale, reused, old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, new.name, other.name])


# --- a real server ----------------------------------------------------------------------------

def test_server_listens_on_loopback_grpc_only_and_survives_oversized_json(server_env, repo):
    """Bars 1 and 3 (issue #28): started with the defaults, every listening socket of the
    server's process tree is its gRPC port on 127.0.0.1; the JSON request that aborts the HTTP
    front has nowhere to go (sent to the gRPC port it is refused), the same shape over gRPC is
    an INVALID_ARGUMENT, and a good request is answered after."""
    with TritonServer(repo, models=["evad"]) as server:
        assert server.proc is not None
        want = {("127.0.0.1", server.grpc_port)}
        assert _listening(server.proc.pid, want) == want
        assert len(_tree(server.proc.pid)) == 3  # tritonserver and its two evad instances
        assert not _http_post(server.grpc_port, OVERSIZED_JSON).startswith(b"HTTP/1.1 2")
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("VIDEO", [1], "UINT8")
        inp.set_data_from_numpy(np.ones(1, np.uint8))
        inp.set_shape([10**12])  # the JSON request's shape, one byte of data, as it sent
        with pytest.raises(InferenceServerException) as e:
            client.infer("evad", [inp])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert e.value.message().endswith("input byte size mismatch for input 'VIDEO' for model "
                                          "'evad'. Expected 1000000000000, got 1")
        assert server.proc.poll() is None and server.models_ready()
        lines, _ = detect(client, frames=_good_clip(), time=3.0)
        assert [x["time"] for x in lines] == [3.0]
        client.close()
        with pytest.raises(Exception, match="HTTP off: start it with http=True"):
            _ = server.http_url


def test_http_opt_in_listens_where_asked_and_is_why_http_is_off(server_env, repo, tmp_path):
    """With http=True on another address both ports listen there and nowhere else; and the
    83-byte JSON request aborts that tritonserver (std::bad_alloc), as measured for issue #28,
    leaving its stubs' shared memory behind (removed here)."""
    log = tmp_path / "server.log"
    server = TritonServer(repo, models=["evad"], host="127.0.0.2", http=True, log=log)
    with server:
        assert server.proc is not None
        want = {("127.0.0.2", server.grpc_port), ("127.0.0.2", server.http_port)}
        assert _listening(server.proc.pid, want) == want
        assert b"Unable to parse 'inputs'" in _http_post(server.http_port, b"{}", "127.0.0.2")
        shm = _shm_regions(server.proc.pid)
        assert len(shm) >= 2  # one per instance at least
        _http_post(server.http_port, OVERSIZED_JSON, "127.0.0.2")
        assert server.proc.wait(30) == -signal.SIGABRT
    assert "std::bad_alloc" in log.read_text(errors="replace")
    for p in shm:  # what the aborted server left (its stubs were killed by the stop)
        p.unlink(missing_ok=True)


def test_launch_sh_with_a_real_server_listens_on_loopback_only(server_env, repo, tmp_path,
                                                               monkeypatch):
    """launch.sh as evad-serve runs it in a container (metrics on, as there): gRPC and
    metrics on 127.0.0.1, no HTTP."""
    from evad.serving.cli import _LaunchScriptServer

    metrics = socket.socket()
    metrics.bind(("127.0.0.1", 0))
    metrics_port = metrics.getsockname()[1]
    metrics.close()
    monkeypatch.setenv("PATH", container_path(
        tmp_path, server_env, f"--allow-gpu-metrics=false --metrics-port={metrics_port}"))
    with _LaunchScriptServer(repo, models=["evad"]) as server:
        assert server.proc is not None
        want = {("127.0.0.1", server.grpc_port), ("127.0.0.1", metrics_port)}
        assert _listening(server.proc.pid, want) == want
        assert server.models_ready()


_CHILD = """\
import json, sys, time
from evad.serving.triton_server import TritonServer
with TritonServer(sys.argv[1], models=["evad"]) as s:
    print(json.dumps({"pid": s.proc.pid, "port": s.grpc_port, "tmp": str(s._tmp),
                      "log": str(s.log)}), flush=True)
    time.sleep(300)
print("after with", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP],
                         ids=["kill-9", "SIGTERM", "SIGHUP"])
def test_no_signal_to_the_program_leaves_a_server_behind(server_env, repo, tmp_path, sig):
    """A program inside ``with TritonServer(...)``, signalled: no tritonserver or stub of its
    run is left, its port is closed, its temporary folder and log are removed; SIGTERM and
    SIGHUP end the program as the signal would (128 + signal), after a clean stop."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(repo)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first, child.communicate(timeout=30)
        run = json.loads(first)
        server = _tree(run["pid"])
        assert len(server) == 3 and _port_open(run["port"])  # tritonserver + 2 stubs
        assert Path(run["tmp"]).is_dir() and Path(run["log"]).is_file()
        t = time.monotonic()
        child.send_signal(sig)
        out, err = child.communicate(timeout=60)
        deadline = time.monotonic() + 30  # after kill -9 the watchdog does the stop
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in _alive(server)]
        stop_s = time.monotonic() - t
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert left == [], f"left running after {sig!r}: {left}"
    assert child.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), err
    assert "after with" not in out and "Traceback" not in err
    assert not _port_open(run["port"])
    deadline = time.monotonic() + 10
    while Path(run["tmp"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(run["tmp"]).exists() and not Path(run["log"]).exists()
    print(f"{signal.Signals(sig).name}: server and stubs gone in {stop_s:.1f} s")


def test_long_video_request_does_not_hold_up_a_clip_request(server_env, repo, tmp_path):
    """With the default two instances, a clip request is answered while a long VIDEO request
    is still being served."""
    video = make_video(tmp_path / "long.mp4", 30.0, 160, 90, 10.0).read_bytes()
    with TritonServer(repo, models=["evad"]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        done: dict[str, float] = {}

        def long_request() -> None:
            lines, _ = detect(grpcclient.InferenceServerClient(server.grpc_url), video=video)
            done["video"] = time.monotonic()
            done["keyframes"] = len(lines)

        th = threading.Thread(target=long_request)
        t = time.monotonic()
        th.start()
        time.sleep(0.5)  # the VIDEO request holds one instance
        lines, _ = detect(client, frames=_good_clip(), time=1.0, timeout_s=60)
        clip_at = time.monotonic()
        th.join(120)
        client.close()
    assert lines[0]["time"] == 1.0 and done["keyframes"] == 30
    assert clip_at < done["video"], (clip_at - t, done["video"] - t)
    print(f"clip answered after {clip_at - t:.1f} s, the VIDEO after {done['video'] - t:.1f} s")
