"""Start NVIDIA's ``tritonserver`` on loopback for a model repository, outside a container.

For trying a repository on one machine and for the tests. The server is the one in the
``nvidia-pytriton`` wheel (tritonserver 2.51, Python backend only), installed with ``--no-deps``
in a Python environment of its own together with ``numpy<2`` (its backend stub misreads numpy 2
arrays), onnxruntime, OpenCV and evad-deploy: ``bash .ci/triton_env.sh`` makes one. The Python
backend runs its models with that environment's Python, found first on ``PATH``. In production,
run ``launch.sh`` of the repository in NVIDIA's Triton container instead.

What it trusts and what it leaves behind (issue #28):

- gRPC only unless ``http=True``: tritonserver 2.51 has no bound on an HTTP request's input
  shape, and one ~90-byte HTTP/JSON request whose shape holds 10^12 elements aborts the whole
  server (``std::bad_alloc`` in its JSON parser); over gRPC the same request is answered with
  ``INVALID_ARGUMENT``. Readiness is read from the server's own log (it says when its gRPC
  service started, on which address, and which models loaded), so starting needs no client
  library.
- Loopback unless ``host`` says otherwise; metrics off.
- Nothing outlives the program: a watchdog process (its own session, so a terminal's signals
  do not reach it) stops the server's process group and removes its temporary folder when the
  program that started it dies, ``kill -9`` included; a start removes the folders of earlier
  runs whose processes are all gone (a program killed together with its watchdog); SIGTERM and
  SIGHUP to the main thread inside ``with TritonServer(...)`` stop the server cleanly and then
  end the program (exit code 128 + the signal), where the program had left them at their
  default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from evad.errors import EvadError
from evad.lazy import lazy_import

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient
else:
    grpcclient = lazy_import("tritonclient.grpc", "pip install 'evad-deploy[triton]'")

__all__ = ["DEFAULT_ENV", "TMP_PREFIX", "TritonServer", "sweep_stale_folders", "triton_env"]

#: where ``.ci/triton_env.sh`` puts the server's environment (``EVAD_TRITON_ENV`` overrides)
DEFAULT_ENV = Path.home() / ".cache" / "evad-deploy" / "triton-env"

#: the temporary folders' prefix; each holds ``owners``: "PID START_TIME" of the program that
#: made it and of its server, one a line (a folder whose processes are all gone is stale)
TMP_PREFIX = "evad-tritonserver-"
_OWNERS = "owners"

#: signals that end a program by default and that a running server turns into a clean stop
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

#: the watchdog: waits until the program that started it is gone (it is then re-parented),
#: then stops the server's process group (SIGTERM: tritonserver stops its stubs and frees their
#: shared memory; SIGKILL after the grace period) and removes the temporary folder and log.
#: Zombies are not counted: a container's init may never reap them.
_WATCHDOG = """\
# evad-deploy: the tritonserver watchdog (evad.serving.triton_server)
import os, shutil, signal, sys, time
parent, group, folder, log, grace = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                     sys.argv[4], float(sys.argv[5]))
while os.getppid() == parent:
    time.sleep(0.2)
def alive():
    for d in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(group) and fields[0] not in "ZX":
            return True
    return False
for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
    try:
        os.killpg(group, sig)
    except OSError:
        break
    deadline = time.monotonic() + wait
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not alive():
        break
shutil.rmtree(folder, ignore_errors=True)
if log:
    try:
        os.unlink(log)
    except OSError:
        pass
"""


def triton_env() -> Path:
    """The server environment: ``EVAD_TRITON_ENV`` or ``DEFAULT_ENV``."""
    return Path(os.environ.get("EVAD_TRITON_ENV", DEFAULT_ENV))


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now (all held until all are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start_time(pid: int) -> str | None:
    """A process's start time (``/proc/PID/stat``, clock ticks since boot), which tells it
    from a later process given the same pid; None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_line(pid: int) -> str:
    return f"{pid} {_start_time(pid)}\n"


def sweep_stale_folders(tmp_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove this user's temporary server folders whose owners are all gone (a program killed
    together with its watchdog, e.g. by the OOM killer); a folder still being made (no owners
    file yet) is left for 10 minutes. Returns the folders removed."""
    removed = []
    for d in Path(tmp_dir or tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
                continue
            owners = [ln.split() for ln in (d / _OWNERS).read_text().splitlines() if ln]
        except FileNotFoundError:
            owners = []
            if time.time() - st.st_mtime < 600:
                continue
        except OSError:
            continue
        if not any(len(o) == 2 and o[0].isdigit() and _start_time(int(o[0])) == o[1]
                   for o in owners):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _first_line(reason: str) -> str:
    """A log message's first line (tritonserver writes newlines as ``\\n``)."""
    return reason.split("\\n")[0].strip() or "?"


#: what the server's log says of each model while it starts: loaded, or not and why
_LOADED = re.compile(r"successfully loaded '([^']+)'")
_FAILED = re.compile(r"(?:failed to load '([^']+)' version \d+|failed to poll model '([^']+)'"
                     r"|Poll failed for model directory '([^']+)'): (.*?)\"?$", re.M)


class TritonServer:
    """``with TritonServer(repo) as server: server.grpc_url ...``: started, ready, stopped.

    Args:
        repository: the model repository (``evad-triton-repo``).
        env: the server's Python environment (default :func:`triton_env`).
        ready_timeout_s: how long to wait for every model to be ready (s).
        log: the server's log file (default: a temporary file, removed by a clean stop, kept
            when the start fails, its path in the error).
        models: load only these (``--model-control-mode=explicit``); default every model. The
            wheel's server has the Python backend only, so the detector models (ONNX Runtime,
            TensorRT backends) are left to a full Triton: ``models=["evad"]``.
        host: the address the server listens on (IPv4; ``0.0.0.0``: every interface).
        grpc_port: its gRPC port; 0 (default): a free one.
        http: serve HTTP/JSON too. Off by default: tritonserver 2.51's HTTP/JSON front can be
            crashed by one request (an input shape of 10^12 elements aborts the server).
        http_port: the HTTP port with ``http``; 0 (default): a free one.
    """

    def __init__(self, repository: str | os.PathLike, env: str | os.PathLike | None = None,
                 ready_timeout_s: float = 120.0, log: str | os.PathLike | None = None,
                 models: list[str] | None = None, host: str = "127.0.0.1",
                 grpc_port: int = 0, http: bool = False, http_port: int = 0) -> None:
        if http_port and not http:
            raise EvadError(f"HTTP port {http_port} given with HTTP off: pass http=True (off "
                            "by default: tritonserver's HTTP/JSON front can be crashed by one "
                            "request)")
        self.models = models
        self.host = host
        self.http = http
        self._ports = (http_port, grpc_port)
        self.repository = Path(repository).resolve()
        self.env = Path(env) if env is not None else triton_env()
        self.ready_timeout_s = ready_timeout_s
        self.http_port = self.grpc_port = 0
        self.proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self.log = Path(log) if log is not None else None
        self._own_log = False
        self._previous: dict[int, Any] = {}
        self._stopping = False
        self._pending: int | None = None

    @property
    def _reach(self) -> str:
        """The address a client on this machine uses (a server on every interface is on
        loopback too)."""
        return "127.0.0.1" if self.host == "0.0.0.0" else self.host

    @property
    def http_url(self) -> str:
        """``ADDRESS:PORT`` for an HTTP client on this machine (tritonclient.http's form)."""
        if not self.http:
            raise EvadError("this server has HTTP off: start it with http=True (off by "
                            "default: tritonserver's HTTP/JSON front can be crashed by one "
                            "request), or use grpc_url with tritonclient.grpc")
        return f"{self._reach}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``ADDRESS:PORT`` for a gRPC client on this machine (tritonclient.grpc's form)."""
        return f"{self._reach}:{self.grpc_port}"

    def _choose_ports(self) -> None:
        """The ports asked for; a free one where 0 was."""
        free_http, free_grpc = _free_ports(2)
        self.http_port = (self._ports[0] or free_http) if self.http else 0
        self.grpc_port = self._ports[1] or free_grpc

    def _listen_args(self) -> list[str]:
        """tritonserver's options for where it listens: gRPC on ``host``, HTTP only if asked."""
        args = [f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--allow-http={'true' if self.http else 'false'}"]
        if self.http:
            args += [f"--http-address={self.host}", f"--http-port={self.http_port}"]
        return args

    def _locate(self) -> dict[str, str]:
        python = self.env / "bin" / "python"
        if not python.exists():
            raise EvadError(f"no Triton server environment at {self.env}: make one with "
                            "bash .ci/triton_env.sh (or set EVAD_TRITON_ENV)")
        probe = ("import importlib.util, json, sys, sysconfig; "
                 "s = importlib.util.find_spec('pytriton'); "
                 "print(json.dumps({'pytriton': s and s.submodule_search_locations[0], "
                 "'version': '%d.%d' % sys.version_info[:2], "
                 "'libdir': sysconfig.get_config_var('LIBDIR')}))")
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                             check=True)
        found = json.loads(out.stdout)
        if not found["pytriton"]:
            raise EvadError(f"{self.env} has no nvidia-pytriton (its tritonserver): pip install "
                            "--no-deps nvidia-pytriton==0.7.0 there")
        return found

    def _prepare(self) -> Path:
        """The run's temporary folder (its owners file naming this program) and log; stale
        folders of earlier runs removed first."""
        sweep_stale_folders()
        self._tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        (self._tmp / _OWNERS).write_text(_owner_line(os.getpid()))
        if self.log is None:
            fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".log")
            os.close(fd)
            self.log, self._own_log = Path(name), True
        self._choose_ports()
        return self._tmp

    def start(self) -> TritonServer:
        found = self._locate()
        ts = Path(found["pytriton"]) / "tritonserver"
        stub = ts / "python_backend_stubs" / found["version"] / "triton_python_backend_stub"
        if not stub.exists():
            raise EvadError(f"tritonserver has no Python-backend stub for Python "
                            f"{found['version']} ({stub})")
        backends = self._prepare() / "backends"
        (backends / "python").mkdir(parents=True)
        for f in (ts / "backends" / "python" / "libtriton_python.so",
                  ts / "backends" / "python" / "triton_python_backend_utils.py", stub):
            (backends / "python" / f.name).symlink_to(f)
        libs = Path(found["pytriton"]).parent / "nvidia_pytriton.libs"
        env = {**os.environ,
               "PATH": f"{self.env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               "LD_LIBRARY_PATH": os.pathsep.join(
                   [p for p in (found["libdir"], str(libs), os.environ.get("LD_LIBRARY_PATH"))
                    if p]),
               "VIRTUAL_ENV": str(self.env)}
        cmd = [str(ts / "bin" / "tritonserver"), f"--model-repository={self.repository}",
               f"--backend-directory={backends}", f"--cache-directory={ts / 'caches'}",
               *self._listen_args(), "--allow-metrics=false", "--allow-gpu-metrics=false",
               "--disable-auto-complete-config", "--strict-readiness=true",
               "--exit-on-error=false", "--exit-timeout-secs=5"]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        return self._launch(cmd, env)

    def _launch(self, cmd: list[str], env: dict[str, str] | None = None) -> TritonServer:
        """Start ``cmd`` in its own process group, its output to ``self.log``, in ``self._tmp``,
        watched; wait until the server is ready (stopped again, log kept, when it is not)."""
        assert self._tmp is not None and self.log is not None
        self._stopping, self._pending = False, None
        self._install_handlers()
        try:
            # the backend's stub puts its working directory on sys.path: started in a
            # checkout's root, whose evad/ holds only the core, it would import that instead
            # of the package
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True, cwd=self._tmp)
            with open(self._tmp / _OWNERS, "a") as f:
                f.write(_owner_line(self.proc.pid))
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.proc.pid),
                 str(self._tmp), str(self.log) if self._own_log else "", "20"],
                stdin=subprocess.DEVNULL, start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def _install_handlers(self) -> None:
        """SIGTERM / SIGHUP stop the server, where the program left them at their default
        (which would end it without a stop); signal handlers belong to the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s in _STOP_SIGNALS:
            if signal.getsignal(s) == signal.SIG_DFL:
                self._previous[s] = signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """End the program as the signal would, but through ``with``'s stop; during a stop,
        remembered and re-raised once the server is down."""
        if self._stopping:
            self._pending = signum
            return
        raise SystemExit(128 + signum)

    def _wait_ready(self) -> None:
        """Until the log says the services started on our address (so this process bound
        the port, and the models it loads at start are loaded or failed)."""
        assert self.proc is not None and self.log is not None
        started = [f'Started GRPCInferenceService at {self.host}:{self.grpc_port}"']
        if self.http:
            started.append(f'Started HTTPService at {self.host}:{self.http_port}"')
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EvadError(f"tritonserver exited with code {self.proc.returncode} while "
                                f"starting: {self.log_tail()}")
            text = self.log.read_text(errors="replace")
            if all(s in text for s in started):
                failed = {m: why for m, why in self.model_states().items() if why != "READY"
                          and (self.models is None or m in self.models)}
                if failed:
                    raise EvadError("tritonserver could not load " + "; ".join(
                        f"{m}: {why}" for m, why in sorted(failed.items())))
                return
            time.sleep(0.2)
        raise EvadError(f"tritonserver was not ready in {self.ready_timeout_s:g} s: "
                        f"{self.log_tail()}")

    def model_states(self) -> dict[str, str]:
        """Each model the server tried to load at start: ``"READY"``, or the first line of why
        not (from its log)."""
        if self.log is None or not self.log.exists():
            return {}
        text = self.log.read_text(errors="replace")
        states = {m: "READY" for m in _LOADED.findall(text)}
        for m in _FAILED.finditer(text):
            states[m[1] or m[2] or m[3]] = _first_line(m[4])
        return states

    def models_ready(self) -> bool:
        """Whether the server answers ready over gRPC now (with ``--strict-readiness``: every
        model); needs tritonclient (the ``triton`` extra)."""
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            return bool(client.is_server_ready(client_timeout=5))
        except Exception:  # noqa: BLE001 - not answering is the answer
            return False
        finally:
            client.close()

    def log_tail(self, lines: int = 8) -> str:
        """The last error lines of the server's log (for messages)."""
        if self.log is None or not self.log.exists():
            return "(no log)"
        text = self.log.read_text(errors="replace").splitlines()
        errors = [ln for ln in text if ln.startswith("E") or "error" in ln.lower()]
        return " | ".join((errors or text)[-lines:])

    def stop(self, timeout_s: float = 20.0, keep_log: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the stubs of its process group are killed
        too. Returns the exit code. ``keep_log``: leave a temporary log for the reader. A
        SIGTERM / SIGHUP that came during the stop ends the program after it."""
        self._stopping = True
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            try:  # stubs left behind by a server that died or hung
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            code = self.proc.returncode
            self.proc = None
        if self._watchdog is not None:  # its work is done here
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._own_log and not keep_log and self.log is not None:
            self.log.unlink(missing_ok=True)
        if threading.current_thread() is threading.main_thread():
            for s, h in self._previous.items():
                signal.signal(s, h)
            self._previous = {}
        self._stopping = False
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise SystemExit(128 + pending)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
