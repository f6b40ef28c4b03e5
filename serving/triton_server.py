"""Start NVIDIA's ``tritonserver`` on loopback for a model repository, outside a container.

For trying a repository on one machine and for the tests. The server is the one in the
``nvidia-pytriton`` wheel (tritonserver 2.51, Python backend only), installed with ``--no-deps``
in a Python environment of its own together with ``numpy<2`` (its backend stub misreads numpy 2
arrays), onnxruntime, OpenCV and evad-deploy: ``bash .ci/triton_env.sh`` makes one. The Python
backend runs its models with that environment's Python, found first on ``PATH``. In production,
run ``launch.sh`` of the repository in NVIDIA's Triton container instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from evad.errors import EvadError

__all__ = ["DEFAULT_ENV", "TritonServer", "triton_env"]

#: where ``.ci/triton_env.sh`` puts the server's environment (``EVAD_TRITON_ENV`` overrides)
DEFAULT_ENV = Path.home() / ".cache" / "evad-deploy" / "triton-env"


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


class TritonServer:
    """``with TritonServer(repo) as server: server.http_url ...``: started, ready, stopped.

    Args:
        repository: the model repository (``evad-triton-repo``).
        env: the server's Python environment (default :func:`triton_env`).
        ready_timeout_s: how long to wait for every model to be ready (s).
        log: the server's log file (default: a temporary file, removed by a clean stop, kept
            when the start fails, its path in the error).
        models: load only these (``--model-control-mode=explicit``); default every model. The
            wheel's server has the Python backend only, so the detector models (ONNX Runtime,
            TensorRT backends) are left to a full Triton: ``models=["evad"]``.
        host: the address HTTP and gRPC listen on (IPv4; ``0.0.0.0``: every interface).
        http_port, grpc_port: their ports; 0 (default): a free one each.
    """

    def __init__(self, repository: str | os.PathLike, env: str | os.PathLike | None = None,
                 ready_timeout_s: float = 120.0, log: str | os.PathLike | None = None,
                 models: list[str] | None = None, host: str = "127.0.0.1",
                 http_port: int = 0, grpc_port: int = 0) -> None:
        self.models = models
        self.host = host
        self._ports = (http_port, grpc_port)
        self.repository = Path(repository).resolve()
        self.env = Path(env) if env is not None else triton_env()
        self.ready_timeout_s = ready_timeout_s
        self.http_port = self.grpc_port = 0
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log = Path(log) if log is not None else None
        self._own_log = False

    @property
    def _reach(self) -> str:
        """The address a client on this machine uses (a server on every interface is on
        loopback too)."""
        return "127.0.0.1" if self.host == "0.0.0.0" else self.host

    @property
    def http_url(self) -> str:
        """``ADDRESS:PORT`` for a client on this machine (tritonclient.http's form)."""
        return f"{self._reach}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``ADDRESS:PORT`` for a gRPC client on this machine (tritonclient.grpc's form)."""
        return f"{self._reach}:{self.grpc_port}"

    def _choose_ports(self) -> None:
        """The ports asked for; a free one where 0 was."""
        free_http, free_grpc = _free_ports(2)
        self.http_port = self._ports[0] or free_http
        self.grpc_port = self._ports[1] or free_grpc

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

    def start(self) -> TritonServer:
        found = self._locate()
        ts = Path(found["pytriton"]) / "tritonserver"
        stub = ts / "python_backend_stubs" / found["version"] / "triton_python_backend_stub"
        if not stub.exists():
            raise EvadError(f"tritonserver has no Python-backend stub for Python "
                            f"{found['version']} ({stub})")
        self._tmp = tempfile.TemporaryDirectory(prefix="evad-tritonserver-")
        backends = Path(self._tmp.name) / "backends"
        (backends / "python").mkdir(parents=True)
        for f in (ts / "backends" / "python" / "libtriton_python.so",
                  ts / "backends" / "python" / "triton_python_backend_utils.py", stub):
            (backends / "python" / f.name).symlink_to(f)
        if self.log is None:
            fd, name = tempfile.mkstemp(prefix="evad-tritonserver-", suffix=".log")
            os.close(fd)
            self.log, self._own_log = Path(name), True
        self._choose_ports()
        libs = Path(found["pytriton"]).parent / "nvidia_pytriton.libs"
        env = {**os.environ,
               "PATH": f"{self.env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               "LD_LIBRARY_PATH": os.pathsep.join(
                   [p for p in (found["libdir"], str(libs), os.environ.get("LD_LIBRARY_PATH"))
                    if p]),
               "VIRTUAL_ENV": str(self.env)}
        cmd = [str(ts / "bin" / "tritonserver"), f"--model-repository={self.repository}",
               f"--backend-directory={backends}", f"--cache-directory={ts / 'caches'}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", "--allow-gpu-metrics=false",
               "--disable-auto-complete-config", "--strict-readiness=true",
               "--exit-on-error=false", "--exit-timeout-secs=5"]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        return self._launch(cmd, env)

    def _launch(self, cmd: list[str], env: dict[str, str] | None = None) -> TritonServer:
        """Start ``cmd`` in its own process group, its output to ``self.log``, in ``self._tmp``;
        wait until the server is ready (stopped again, log kept, when it is not)."""
        assert self._tmp is not None and self.log is not None
        # the backend's stub puts its working directory on sys.path: started in a checkout's
        # root, whose evad/ holds only the core, it would import that instead of the package
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, cwd=self._tmp.name)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EvadError(f"tritonserver exited with code {self.proc.returncode} while "
                                f"starting: {self.log_tail()}")
            if self.models_ready() and self._is_ours():
                return
            failed = [m for m in self.index() if m.get("state") == "UNAVAILABLE"
                      and (self.models is None or m.get("name") in self.models)]
            if failed:
                raise EvadError("tritonserver could not load " + "; ".join(
                    f"{m['name']}: {(str(m.get('reason') or '?').splitlines() or ['?'])[0]}"
                    for m in failed))
            time.sleep(0.2)
        raise EvadError(f"tritonserver was not ready in {self.ready_timeout_s:g} s: "
                        f"{self.log_tail()}")

    def models_ready(self) -> bool:
        """Whether the server answers ready (with ``--strict-readiness``: every model)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready",
                                        timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _is_ours(self) -> bool:
        """Whether the server answering on the port is this process (its log says it bound
        that port), not another one that took a port between choosing and binding."""
        assert self.log is not None
        return f"{self.host}:{self.http_port}" in self.log.read_text(errors="replace")

    def index(self) -> list[dict]:
        """The repository index (every model, its state and reason); [] when not answering."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}",
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return []

    def log_tail(self, lines: int = 8) -> str:
        """The last error lines of the server's log (for messages)."""
        if self.log is None or not self.log.exists():
            return "(no log)"
        text = self.log.read_text(errors="replace").splitlines()
        errors = [ln for ln in text if ln.startswith("E") or "error" in ln.lower()]
        return " | ".join((errors or text)[-lines:])

    def stop(self, timeout_s: float = 20.0, keep_log: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the stubs of its process group are killed
        too. Returns the exit code. ``keep_log``: leave a temporary log for the reader."""
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
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._own_log and not keep_log and self.log is not None:
            self.log.unlink(missing_ok=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
