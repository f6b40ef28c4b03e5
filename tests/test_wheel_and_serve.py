"""The package as it is deployed, and the command that serves a repository.

A wheel built from the checkout holds every ``evad.*`` package, the demo weights and the plugin
sources and nothing else; installed with its dependencies in a fresh venv, its commands and
the Triton ``evad`` model's module work there. ``evad-serve`` from that venv starts the tiny
model's repository on loopback with the Triton environment's server (``bash
.ci/triton_env.sh``, which installs the same wheel without torch, as NVIDIA's container gets
it), answers a request and leaves no process behind on SIGINT; in the container's way (a
``tritonserver`` on ``PATH``) it goes through the repository's ``launch.sh``, which refuses a
``python3`` without evad in one line and binds loopback unless told otherwise; its refusals
(no server, no model, a taken port, a host name) are one line each.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from conftest import ROOT, container_path, read_frames, require

from evad.runtime.video_run import DetectOptions
from evad.sampling import clip_indices
from evad.serving.triton_client import detect
from evad.serving.triton_repo import SERVE_REQUIREMENTS, write_repository

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """A command outside the checkout (so ``import evad`` cannot find its folder); fails the
    test with its output when it fails."""
    kw.setdefault("cwd", "/")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _source_files() -> dict[str, Path]:
    """What the wheel must hold: wheel path -> checkout file, from pyproject's package map
    (every module of each package, and its package data)."""
    out: dict[str, Path] = {}
    for pkg in SETUPTOOLS["packages"]:
        folder = ROOT / SETUPTOOLS["package-dir"][pkg]
        prefix = pkg.replace(".", "/")
        for f in folder.glob("*.py"):
            out[f"{prefix}/{f.name}"] = f
        for pattern in SETUPTOOLS["package-data"].get(pkg, []):
            for f in folder.glob(pattern):
                out[f"{prefix}/{f.relative_to(folder).as_posix()}"] = f
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the files git tracks or would track (an in-tree build
    reuses ``build/lib``, stale files included); without build isolation when this venv has
    the setuptools pyproject asks for (no download)."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    src = tmp / "src"
    for name in filter(None, files):
        f = ROOT / os.fsdecode(name)
        if f.is_file():  # a tracked file deleted in the work tree is listed too
            (src / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            (src / f.relative_to(ROOT)).write_bytes(f.read_bytes())
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        major = 0
    isolation = ["--no-build-isolation"] if major >= 68 else []
    t = time.monotonic()
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w",
          str(tmp / "dist"), str(src)])
    print(f"wheel built in {time.monotonic() - t:.1f} s")
    (whl,) = (tmp / "dist").glob("evad_deploy-*.whl")
    return whl


def test_wheel_holds_the_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
        content = {n: z.read(n) for n in names}
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    want = _source_files()
    # every package's modules and data, byte for byte as in the checkout, and nothing else
    assert names - dist_info == set(want)
    assert {n: hashlib.sha256(content[n]).hexdigest() for n in want} == {
        n: hashlib.sha256(f.read_bytes()).hexdigest() for n, f in want.items()}
    for must in ("evad/__init__.py", "evad/serving/triton_model.py", "evad/serving/cli.py",
                 "evad/models/weights/demo.pth", "evad/plugins/CMakeLists.txt",
                 "evad/plugins/roi_align_3d/roiAlign3dKernel.cu",
                 "evad/plugins/common/evadOpContract.h"):
        assert must in names
    assert not [n for n in names if n.startswith(("tests/", ".venv/", "build/"))
                or "__pycache__" in n or n.endswith(".pyc")]
    assert {p.split("/")[0] for p in names} == {"evad", "evad_deploy-0.1.0.dist-info"}
    # every command of pyproject, evad-serve among them, is an entry point of the wheel
    entry = content["evad_deploy-0.1.0.dist-info/entry_points.txt"].decode()
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", entry, re.M))
    assert scripts == PYPROJECT["project"]["scripts"]
    assert scripts["evad-serve"] == "evad.serving.cli:main"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel and its dependencies (torch pinned to this venv's, so pip
    takes the same build)."""
    import torch

    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", str(venv)])
    t = time.monotonic()
    _run([str(venv / "bin" / "pip"), "install", "-q",
          f"torch=={torch.__version__.split('+')[0]}", str(wheel)], timeout=900)
    print(f"wheel and dependencies installed in {time.monotonic() - t:.1f} s")
    return venv


def test_wheel_installs_in_a_fresh_venv(wheel_venv):
    bin_ = wheel_venv / "bin"
    for cmd, usage in (("evad-trt-run", "usage: evad-trt-run"),
                       ("evad-export", "usage: evad-export"),
                       ("evad-serve", "usage: evad-serve"),
                       ("evad-triton-repo", "usage: evad-triton-repo")):
        assert _run([str(bin_ / cmd), "--help"]).stdout.startswith(usage)
    # the Triton model's module, from the venv (not the checkout) and without torch
    probe = ("import sys, evad.serving.triton_model as m; "
             "print(m.__file__); print('torch' in sys.modules)")
    where, torch_loaded = _run([str(bin_ / "python"), "-c", probe]).stdout.split()
    site = _run([str(bin_ / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                 "'purelib'))"]).stdout.strip()
    assert where == f"{site}/evad/serving/triton_model.py"
    assert torch_loaded == "False"


@pytest.fixture(scope="module")
def grpc():
    """``tritonclient.grpc`` (the ``triton`` extra): only the serving tests need it."""
    return require("tritonclient.grpc", "triton")


def test_triton_env_runs_this_checkout_without_torch(server_env, wheel):
    """The server's environment holds this checkout's code: the wheel's files (triton_env.sh)
    or the checkout itself (--editable); no torch; the runtime it installs is the list
    launch.sh --install and the docs give."""
    probe = ("import importlib.util, json, evad; print(json.dumps({'evad': evad.__file__, "
             "'torch': importlib.util.find_spec('torch') is not None}))")
    found = json.loads(_run([str(server_env / "bin" / "python"), "-c", probe]).stdout)
    assert found["torch"] is False
    installed = Path(found["evad"]).parent
    if installed == ROOT / "evad":
        return  # editable: the checkout itself
    with zipfile.ZipFile(wheel) as z:
        want = {n: z.read(n) for n in z.namelist() if n.startswith("evad/")}
    stale = sorted(n for n, data in want.items()
                   if not (installed.parent / n).is_file()
                   or (installed.parent / n).read_bytes() != data)
    assert not stale, (f"{server_env} holds another evad than this checkout ({stale[:5]}): "
                       "rerun bash .ci/triton_env.sh")
    script = (ROOT / ".ci" / "triton_env.sh").read_text()
    for req in SERVE_REQUIREMENTS:
        name = re.split(r"[<>=]", req)[0]
        assert re.search(rf"'{re.escape(name)}>=", script), name


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (the server and its stubs carry
    the repository's path)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(ln for ln in (d / "status").read_text().splitlines()
                             if ln.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if text in cmd and "zombie" not in state:
                out.append(cmd)
    return out


def _start_serve(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """``evad-serve`` started from the checkout's root, whose evad/ (the core alone) must not
    shadow the installed package in the backend's stub; its first lines once it says where it
    serves."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if ": gRPC " in line:
            return proc, lines
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"evad-serve did not say it serves: {lines} {out} {err}")


def _stop_serve(proc: subprocess.Popen, sig: int, repo: Path) -> tuple[str, str]:
    """Send ``sig``; evad-serve must exit 0 and leave no process naming the repository."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    assert _processes_naming(str(repo)) == []
    return out, err


def _tiny_repo(tmp_path: Path, tiny_onnx: Path) -> Path:
    return write_repository(tmp_path / "repo", tiny_onnx, gpu=False)


def _one_clip(sample_mp4: Path) -> np.ndarray:
    frames = read_frames(sample_mp4)
    idx = clip_indices(len(frames) // 2, 16, 4, len(frames))
    return np.stack([frames[i] for i in idx])


def _expected(tiny_onnx: Path, clip, params: dict) -> tuple[list[dict], list[str]]:
    """What the server's evad model must answer: the same ClipDetector in this process."""
    from evad.export.ort_runner import OrtRunner
    from evad.serving.triton_model import ClipDetector

    lines, rows = ClipDetector(OrtRunner(tiny_onnx), DetectOptions()).clip(clip, params)
    return [json.loads(x) for x in lines], rows


def test_evad_serve_answers_on_loopback_and_stops_cleanly(tmp_path, grpc, server_env,
                                                          wheel_venv, tiny_onnx, sample_mp4):
    repo = _tiny_repo(tmp_path, tiny_onnx)
    env = {**os.environ, "EVAD_TRITON_ENV": str(server_env)}
    t = time.monotonic()
    proc, lines = _start_serve([str(wheel_venv / "bin" / "evad-serve"), str(repo),
                                "--grpc-port", "0"], env)
    ready_s = time.monotonic() - t
    try:
        assert lines[0] == (f"evad-serve: serving {repo} with the local tritonserver in "
                            f"{server_env}: models evad (not loaded: evad_onnx; the local "
                            "server has the Python backend only)")
        m = re.search(r"gRPC ([\d.]+):(\d+) \(HTTP off: --http\);", lines[1])
        assert m and m[1] == "127.0.0.1", lines
        url = f"{m[1]}:{m[2]}"
        clip = _one_clip(sample_mp4)
        params = {"time": 2.0, "video_id": "sample", "person_threshold": 0.05}
        client = grpc.InferenceServerClient(url)
        got = detect(client, frames=clip, **params)
        client.close()  # a connection still open holds the server for its exit timeout
        want = _expected(tiny_onnx, clip, params)
        assert got == want and want[0][0]["time"] == 2.0 and want[1]
        out, _ = _stop_serve(proc, signal.SIGINT, repo)
    finally:
        if proc.poll() is None:
            _stop_serve(proc, signal.SIGINT, repo)
    print(f"evad-serve ready in {ready_s:.1f} s")
    assert out.splitlines()[-2:] == ["evad-serve: stopping",
                                     "evad-serve: stopped (tritonserver exit code 0)"]
    with pytest.raises(OSError):  # nobody listens there any more
        socket.create_connection((m[1], int(m[2])), timeout=2).close()


def test_evad_serve_in_the_container_goes_through_launch_sh(tmp_path, grpc, server_env,
                                                            tiny_onnx, sample_mp4):
    repo = _tiny_repo(tmp_path, tiny_onnx)
    env = {**os.environ, "PATH": container_path(tmp_path, server_env),
           "EVAD_TRITON_ENV": str(tmp_path / "none")}  # no local server: the PATH one
    # another loopback address: --host reaches launch.sh and tritonserver binds it
    log = tmp_path / "tritonserver.log"
    proc, lines = _start_serve([sys.executable, "-m", "evad.serving.cli", str(repo),
                                "--host", "127.0.0.2", "--http", "--http-port", "0",
                                "--grpc-port", "0",
                                "--model", "evad", "--log", str(log)], env)
    try:
        assert lines[0] == (f"evad-serve: serving {repo} with {tmp_path}/container-bin/"
                            "tritonserver through launch.sh: models evad (not loaded: "
                            "evad_onnx)")
        m = re.search(r"gRPC ([\d.]+):(\d+), HTTP http://([\d.]+):(\d+) \(listening on "
                      r"127\.0\.0\.2\)", lines[1])
        assert m and m[1] == m[3] == "127.0.0.2", lines
        clip = _one_clip(sample_mp4)
        client = grpc.InferenceServerClient(f"{m[1]}:{m[2]}")
        got = detect(client, frames=clip, time=1.0)
        assert got == _expected(tiny_onnx, clip, {"time": 1.0})
        client.close()
        # SIGTERM with an HTTP client still connected (--http): tritonserver waits its exit
        # timeout (5 s here) for it, then gives up with code 1; evad-serve says so, exits 0
        import http.client

        keep_alive = http.client.HTTPConnection(m[3], int(m[4]), timeout=30)
        keep_alive.request("GET", "/v2/health/ready")
        assert keep_alive.getresponse().status == 200
        t = time.monotonic()
        out, err = _stop_serve(proc, signal.SIGTERM, repo)
        assert 5 <= time.monotonic() - t < 30
    finally:
        if proc.poll() is None:
            _stop_serve(proc, signal.SIGTERM, repo)
    assert "warning: listening on 127.0.0.2" in err
    last = out.splitlines()[-1]
    assert last.startswith("evad-serve: stopped (tritonserver exit code 1: E") and last.endswith(
        f'failed to stop server: Internal - Exit timeout expired. Exiting immediately."; log '
        f"{log})")


def _fake_tritonserver(folder: Path) -> Path:
    """A ``tritonserver`` that records its arguments, one a line, and exits."""
    folder.mkdir()
    fake = folder / "tritonserver"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder / "args"}"\n')
    fake.chmod(0o755)
    return folder / "args"


def test_launch_sh_checks_evad_and_binds_loopback(tmp_path, tiny_onnx, wheel_venv, wheel):
    repo = _tiny_repo(tmp_path, tiny_onnx)
    args = _fake_tritonserver(tmp_path / "bin")
    # a python3 without evad (a venv of its own): refused in one line, no server started
    bare = tmp_path / "bare"
    _run([sys.executable, "-m", "venv", "--without-pip", str(bare)])
    path = f"{tmp_path / 'bin'}{os.pathsep}{bare / 'bin'}{os.pathsep}{os.environ['PATH']}"
    r = subprocess.run(["sh", str(repo / "launch.sh")], capture_output=True, text=True,
                       env={**os.environ, "PATH": path}, cwd="/", timeout=60)
    assert r.returncode == 1 and not args.exists()
    assert r.stderr == (f"launch.sh: python3 ({bare / 'bin' / 'python3'}) cannot import "
                        "evad.serving.triton_model, which the evad model needs "
                        "(ModuleNotFoundError: No module named 'evad'): add --install "
                        "evad_deploy-<version>-py3-none-any.whl\n")
    # --install puts the wheel (and the runtime, already there) into python3, then serves on
    # loopback with the options it does not know passed on
    path = f"{tmp_path / 'bin'}{os.pathsep}{wheel_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    _run(["sh", str(repo / "launch.sh"), str(repo), "--install", str(wheel),
          "--log-verbose=1"], env={**os.environ, "PATH": path})
    assert args.read_text().splitlines() == [
        f"--model-repository={repo}", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
        "--allow-http=false", "--http-address=127.0.0.1", "--disable-auto-complete-config",
        "--strict-readiness=true", "--log-verbose=1"]
    _run(["sh", str(repo / "launch.sh"), "--host", "0.0.0.0"], env={**os.environ, "PATH": path})
    assert args.read_text().splitlines()[1:5] == ["--grpc-address=0.0.0.0",
                                                  "--metrics-address=0.0.0.0",
                                                  "--allow-http=false", "--http-address=0.0.0.0"]


def test_evad_serve_refusals_are_one_line(tmp_path, tiny_onnx, monkeypatch, capsys):
    from evad.serving.cli import main

    repo = _tiny_repo(tmp_path, tiny_onnx)
    monkeypatch.setenv("EVAD_TRITON_ENV", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cases = [
        ([str(repo), "--grpc-port", "0"],
         f"no tritonserver: none on PATH and no server environment at {tmp_path / 'none'}; "
         "make one with bash .ci/triton_env.sh in a checkout (or set EVAD_TRITON_ENV), or run "
         "in NVIDIA's container nvcr.io/nvidia/tritonserver:<yy.mm>-py3"),
        ([str(tmp_path)], f"model repository {tmp_path} holds no model (no */config.pbtxt): "
         "write one with evad-triton-repo"),
        ([str(repo), "--model", "nope"],
         f"--model nope: not in {repo} (it holds evad, evad_onnx)"),
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases.append(([str(repo), "--grpc-port", str(port)],
                      f"port {port} on 127.0.0.1 is taken (another server?): pass --grpc-port "
                      "with another port, or 0 for a free one"))
        for argv, line in cases:
            assert main(argv) == 2
            assert capsys.readouterr().err == f"evad-serve: error: {line}\n"
    with pytest.raises(SystemExit) as e:
        main([str(repo), "--host", "localhost"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "evad-serve: error: argument --host: 'localhost' is not an IPv4 address (127.0.0.1: this "
        "machine only; 0.0.0.0: every interface) (see evad-serve --help)\n")
