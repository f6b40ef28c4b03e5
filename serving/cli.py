"""``evad-serve``: NVIDIA Triton Inference Server on a model repository, until Ctrl-C.

The server is, in this order:

- the local server environment (``EVAD_TRITON_ENV``, default ``~/.cache/evad-deploy/triton-env``,
  made by ``bash .ci/triton_env.sh``): the ``nvidia-pytriton`` wheel's ``tritonserver``, which
  has the Python backend only, so it serves the ``evad`` model alone unless ``--model`` says
  otherwise (``evad.serving.triton_server``);
- ``tritonserver`` on ``PATH`` (NVIDIA's container): the repository's own ``launch.sh``, so the
  plugin settings and the check that the backend's Python imports evad are the ones a
  deployment runs; every model.

It serves gRPC on loopback: HTTP/JSON only with ``--http`` (tritonserver 2.51's HTTP/JSON front
can be crashed by one request, an input shape of 10^12 elements; gRPC answers that request with
an error), another address only with ``--host``. It waits until every model it loads is ready,
prints the addresses, serves until Ctrl-C, SIGTERM or SIGHUP and then stops the server and its
Python-backend processes (exit 0); if it is killed outright, a watchdog stops them
(``evad.serving.triton_server``).
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

from evad.command import ArgumentParser, check_input_dir, number, run_command
from evad.errors import EvadError
from evad.serving.triton_repo import VIDEO_MODEL
from evad.serving.triton_server import TritonServer, triton_env

__all__ = ["main"]

_EPILOG = """\
examples:
  evad-serve triton_repo                         # gRPC 127.0.0.1:8001, no HTTP
  evad-serve triton_repo --grpc-port 0           # a free port, printed
  evad-serve triton_repo --http                  # HTTP/JSON too, http://127.0.0.1:8000
  evad-serve triton_repo --host 0.0.0.0          # every interface: other hosts can send requests

The server: the local environment's tritonserver (EVAD_TRITON_ENV, default
~/.cache/evad-deploy/triton-env, made by bash .ci/triton_env.sh; Python backend only, so the
evad model alone by default), else tritonserver on PATH (NVIDIA's container) through the
repository's launch.sh. README, "Serving and batch jobs", has a client example.
"""

#: how long a stopping server may take before it and its stubs are killed (s); Triton's own
#: default exit timeout, for in-flight requests, is 30 s
_STOP_TIMEOUT_S = 40.0


def _ipv4(text: str) -> str:
    """An argparse ``type``: an IPv4 address (tritonserver binds addresses, not names)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address (127.0.0.1: this machine only; 0.0.0.0: every "
            "interface)") from None


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="evad-serve", description="Serve a model repository from "
                        "evad-triton-repo with NVIDIA Triton Inference Server until Ctrl-C.",
                        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repository", type=Path, help="the model repository (evad-triton-repo)")
    ap.add_argument("--host", type=_ipv4, default="127.0.0.1",
                    help="address the server listens on (default 127.0.0.1: this machine "
                    "only; 0.0.0.0 serves other hosts, with no authentication)")
    port = number(0, 65535, integer=True)
    ap.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default 8001; "
                    "0: a free one)")
    ap.add_argument("--http", action="store_true", help="serve HTTP/JSON too (off by default: "
                    "tritonserver 2.51's HTTP/JSON front can be crashed by one request, an "
                    "input shape of 10^12 elements; gRPC answers it with an error)")
    ap.add_argument("--http-port", type=port, help="HTTP port, with --http (default 8000; 0: "
                    "a free one)")
    ap.add_argument("--model", action="append", metavar="NAME", help="load only this model "
                    "(repeatable; default: every model, or evad alone with the local server)")
    ap.add_argument("--log", type=Path, help="tritonserver's log file (default: a temporary "
                    "file, removed when the server stops cleanly)")
    ap.add_argument("--ready-timeout", type=number(0, lo_open=True), default=120.0,
                    metavar="S", help="seconds to wait for the models to be ready (default 120)")
    return ap


class _LaunchScriptServer(TritonServer):
    """``tritonserver`` from ``PATH`` (NVIDIA's container), started by the repository's
    ``launch.sh``, which ``exec``s it: stopping, readiness and the log are the base class's."""

    def start(self) -> TritonServer:
        launch = self.repository / "launch.sh"
        if not launch.is_file():
            raise EvadError(f"{self.repository} has no launch.sh: write the repository with "
                            "evad-triton-repo")
        # a neutral working directory, as the base class's (the stub puts it on sys.path)
        self._prepare()
        cmd = ["sh", str(launch), str(self.repository), "--host", self.host,
               *(["--http", f"--http-port={self.http_port}"] if self.http else []),
               f"--grpc-port={self.grpc_port}"]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        return self._launch(cmd)


def _check_port_free(host: str, port: int, flag: str) -> None:
    """Refuse a taken port now, in one line, rather than in tritonserver's log."""
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: a port
        try:  # left in TIME_WAIT by a stopped one is free
            s.bind((host, port))
        except OSError:
            raise EvadError(f"port {port} on {host} is taken (another server?): pass {flag} "
                            "with another port, or 0 for a free one") from None


def _server(args: argparse.Namespace, repo: Path, models: list[str]) -> tuple[TritonServer, str]:
    """The server to start and a few words on which it is."""
    env = triton_env()
    local = (env / "bin" / "python").exists()
    found = None if local else shutil.which("tritonserver")
    if local or found:
        kind = TritonServer if local else _LaunchScriptServer
        load = args.model
        if local and load is None:  # its server has no ONNX Runtime or TensorRT backend
            load = [VIDEO_MODEL] if VIDEO_MODEL in models else models
        server = kind(repo, env=env, ready_timeout_s=args.ready_timeout, log=args.log,
                      models=load, host=args.host, grpc_port=args.grpc_port, http=args.http,
                      http_port=args.http_port if args.http else 0)
        return server, (f"the local tritonserver in {env}" if local
                        else f"{found} through launch.sh")
    raise EvadError(f"no tritonserver: none on PATH and no server environment at {env}; make "
                    "one with bash .ci/triton_env.sh in a checkout (or set EVAD_TRITON_ENV), or "
                    "run in NVIDIA's container nvcr.io/nvidia/tritonserver:<yy.mm>-py3")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP stop the server the way Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    prog = "evad-serve"
    if args.http_port is not None and not args.http:
        ap.error("--http-port needs --http (HTTP is off by default: tritonserver 2.51's "
                 "HTTP/JSON front can be crashed by one request)")
    if args.http and args.http_port is None:
        args.http_port = 8000
    state = {"started": False}

    def body() -> int:
        repo = check_input_dir(args.repository, "model repository").resolve()
        models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
        if not models:
            raise EvadError(f"model repository {repo} holds no model (no */config.pbtxt): "
                            "write one with evad-triton-repo")
        unknown = sorted(set(args.model or []) - set(models))
        if unknown:
            raise EvadError(f"--model {', '.join(unknown)}: not in {repo} (it holds "
                            f"{', '.join(models)})")
        if args.http:
            _check_port_free(args.host, args.http_port, "--http-port")
        _check_port_free(args.host, args.grpc_port, "--grpc-port")
        server, which = _server(args, repo, models)
        previous = {s: signal.signal(s, h) for s, h in (
            (signal.SIGTERM, _raise_interrupt), (signal.SIGHUP, _raise_interrupt),
            (signal.SIGINT, signal.default_int_handler))}
        try:
            server.start()
            state["started"] = True
            ready = sorted(m for m, why in server.model_states().items() if why == "READY")
            left = sorted(set(models) - set(ready))
            local = not isinstance(server, _LaunchScriptServer)
            why = ("; the local server has the Python backend only"
                   if local and args.model is None else "")
            print(f"{prog}: serving {repo} with {which}: models {', '.join(ready)}"
                  + (f" (not loaded: {', '.join(left)}{why})" if left else "")
                  + f"\n{prog}: gRPC {server.grpc_url}"
                  + (f", HTTP http://{server.http_url}" if args.http else " (HTTP off: --http)")
                  + f"{'' if args.host == '127.0.0.1' else f' (listening on {args.host})'}; "
                  f"log {server.log}; Ctrl-C stops it", flush=True)
            if args.host != "127.0.0.1":
                print(f"{prog}: warning: listening on {args.host}: anyone who reaches this "
                      "machine can send requests (no authentication)", file=sys.stderr)
            try:
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                # a second Ctrl-C must not cut the stop short and leave stub processes
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print(f"{prog}: stopping", flush=True)
                code = server.stop(timeout_s=_STOP_TIMEOUT_S, keep_log=True)
                if code == 0:
                    if args.log is None and server.log is not None:  # ours, temporary
                        server.log.unlink(missing_ok=True)
                    print(f"{prog}: stopped (tritonserver exit code 0)", flush=True)
                else:  # e.g. clients still connected past its exit timeout: said, not failed
                    print(f"{prog}: stopped (tritonserver exit code {code}: "
                          f"{server.log_tail(1)}; log {server.log})", flush=True)
                return 0
            code = server.proc.returncode if server.proc is not None else None
            tail = server.log_tail()
            server.stop(keep_log=True)
            raise EvadError(f"tritonserver exited by itself with code {code} (log "
                            f"{server.log}): {tail}")
        finally:
            server.stop(keep_log=True)  # nothing to do after a stop above; else not left running
            for s, h in previous.items():
                signal.signal(s, h)

    return run_command(prog, body, interrupted=lambda: "interrupted while starting; the server "
                       "was stopped" if not state["started"] else "interrupted")


if __name__ == "__main__":
    raise SystemExit(main())
