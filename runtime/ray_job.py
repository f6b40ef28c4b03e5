"""A job of many videos on a Ray cluster (Ray Data): ``evad-trt-run VIDEOS --ray [ADDRESS]``.

The video list becomes a Ray dataset; ``map_batches`` hands one video at a time to a pool of
actors (``compute=ActorPoolStrategy``), each holding one model session (:class:`VideoWorker`
opens the runner once, in its constructor), one GPU per actor when the cluster has GPUs. Each
actor runs the same :func:`evad.runtime.job.run_task` as the local job, so a video's folder is
written exactly as the local job writes it (staged, then moved into place), and the driver ends
with the same :func:`evad.runtime.job.finish_job`: merged CSV and ``job.json``.

Failures: a video's own error (a corrupt file) is caught in the actor and recorded, as locally.
A worker that dies (killed, out of memory) is restarted by Ray Data and its video retried; the
retry starts that video's folder again from its staging, and a video only ever reaches its
folder whole, so nothing is doubled. The output folder must be on storage every node sees (one
machine, or a shared file system).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from evad.command import one_line
from evad.errors import EvadError
from evad.lazy import lazy_import
from evad.run_lock import FolderLock
from evad.runner import Runner
from evad.runtime.job import JobProgress, JobRun, TaskResult, VideoTask, finish_job, run_task
from evad.runtime.source import ModelRef
from evad.runtime.video_run import DetectOptions

if TYPE_CHECKING:
    import ray
    import ray.data as ray_data
else:
    ray = lazy_import("ray", "pip install 'evad-deploy[ray]'")
    ray_data = lazy_import("ray.data", "pip install 'evad-deploy[ray]'")

__all__ = ["VideoWorker", "open_model", "run_job_ray"]

#: per-video attempt counts, in the job folder while a Ray job runs: one subfolder per run
#: (a fresh id each time), so counts left by an interrupted run never count against the next
ATTEMPTS = ".evad-ray-attempts"


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")[:300]


#: a function that opens the model in an actor: model reference -> runner
OpenModel = Callable[[ModelRef], Runner]


def open_model(model: ModelRef) -> Runner:
    """An actor's runner for ``model``, opened as ``evad-trt-run`` opens it (the default
    :data:`OpenModel`)."""
    return model.open()[0]


class VideoWorker:
    """A Ray Data callable class: one model session per actor, one video per call.

    Each call returns, per video, its :class:`TaskResult` (``result``, JSON) and what this
    actor's runner is (``model``, JSON: ``name``, ``sha256``, ``runner``; for ``job.json``),
    or, where this actor could not open the model, ``error``: that reason in one line (the
    driver leaves those videos not run and ends the job with it; an actor whose constructor
    raised would be restarted by Ray and end in its tracebacks, none naming the model).

    Args:
        model: the model (:func:`open_model`; its paths must exist on every node).
        options: the detection options.
        resume: skip finished videos, continue interrupted ones.
        opener: how to open the model (default :func:`open_model`).
        attempts_dir: the folder counting each video's attempts (None: not counted).
        max_attempts: a video tried this many times is recorded failed, not run again.
    """

    def __init__(self, model: ModelRef, options: DetectOptions, resume: bool,
                 opener: OpenModel | None = None, attempts_dir: str | None = None,
                 max_attempts: int = 3) -> None:
        self.runner: Runner | None = None
        self.identity = self.error = ""
        try:
            self.runner = (opener or open_model)(model)
        except Exception as e:  # the model vanished, is unreadable or damaged on this node
            self.error = one_line(e) if isinstance(e, (EvadError, OSError)) else \
                f"{type(e).__name__}: {one_line(e)[:300]}"
        else:
            ran = JobRun.of(self.runner)
            self.identity = json.dumps({"name": ran.name, "sha256": ran.sha256,
                                        "runner": ran.runner})
        self.options = options
        self.resume = resume
        self.attempts_dir = Path(attempts_dir) if attempts_dir else None
        self.max_attempts = max_attempts

    def _attempt(self, task: VideoTask) -> int:
        """Count this attempt at ``task`` (a file per video: a dead worker cannot count)."""
        if self.attempts_dir is None:
            return 1
        self.attempts_dir.mkdir(parents=True, exist_ok=True)
        f = self.attempts_dir / task.video_id
        n = int(f.read_text() or 0) + 1 if f.is_file() else 1
        f.write_text(str(n))
        return n

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in ("video", "video_id", "out_dir", "result",
                                                "model", "error")}
        for video, vid, out_dir in zip(batch["video"], batch["video_id"], batch["out_dir"],
                                       strict=True):
            task = VideoTask(str(video), str(vid), str(out_dir))
            if self.runner is None:  # nothing run, nothing counted: the driver says why
                res = TaskResult.failed(task, self.error)
            elif (n := self._attempt(task)) > self.max_attempts:
                res = TaskResult.failed(task, f"the worker died {n - 1} times on this video (a "
                                        "crash in decoding or inference, or out of memory); "
                                        "see the Ray logs")
            else:
                res = run_task(task, self.runner, self.options, resume=self.resume)
            out["video"].append(task.video)
            out["video_id"].append(task.video_id)
            out["out_dir"].append(task.out_dir)
            out["result"].append(json.dumps(res.to_json()))
            out["model"].append(self.identity)
            out["error"].append(self.error)
        return {k: np.array(v) for k, v in out.items()}


#: what a gRPC client sends first: the HTTP/2 preface and an empty SETTINGS frame. Ray's GCS
#: (HOST:PORT) and its client server (ray://) are gRPC servers: they answer at once with a
#: SETTINGS frame (9-byte header, type 4); a web server answers text, and Ray would retry
#: either for minutes
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once for an address that is no Ray head node: nobody answers on it, or what
    answers does not speak gRPC (a web server); Ray itself retries either for minutes."""
    target = address.removeprefix("ray://")
    if address == "auto" or "://" in target:
        return
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise EvadError(f"--ray {address}: give the head node as HOST:PORT (its GCS port, "
                        "6379 by default), ray://HOST:PORT, or auto")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as e:
        raise EvadError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start "
                        "one with ray start --head, or drop ADDRESS for a local Ray") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS server answers a TLS handshake only: Ray's own connect says more
        head = b""
        try:
            conn.sendall(_H2_HELLO)
            while len(head) < 9 and (got := conn.recv(9 - len(head))):
                head += got
        except OSError:  # reset or timed out: what was read so far says it
            pass
    if len(head) < 9 or head[3] != 4:
        said = f"answered {head[:24]!r}" if head else f"answered nothing in {timeout:g} s"
        raise EvadError(f"--ray {address} is no Ray head node: the server there does not speak "
                        f"gRPC as Ray does ({said}): give the head node's GCS address (ray status "
                        "on it prints it; HOST:6379 by default, ray://HOST:10001 for Ray "
                        "Client), or drop ADDRESS for a local Ray")


#: ray.init replaces these signals' handlers (SIGTERM: sys.exit, after its core worker's
#: native stack dump): the caller's are put back, so evad-trt-run ends a Ray job as Ctrl-C does
_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _init(address: str | None) -> bool:
    """Connect to (or start) Ray; returns whether this call started it.

    A local Ray (no ``address``) listens on loopback only: Ray binds its servers to its node's
    IP, and takes 127.0.0.1 (a one-machine cluster) where ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    is 0 when ray is imported: set here for this process and the processes Ray starts. A
    program that imported ray before (a library caller) has read it already: its constant is
    set too; should a Ray version lack it, the node IP check below refuses the job rather than
    leave it listening on every interface.
    """
    if address:
        _check_reachable(address)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "ray" in sys.modules:
            constants = sys.modules.get("ray._private.ray_constants")
            if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
                constants.ENABLE_RAY_CLUSTER = False
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    main = threading.current_thread() is threading.main_thread()
    keep = {s: signal.getsignal(s) for s in _SIGNALS} if main else {}
    try:
        if address:
            try:
                ray.init(address=address, **kw)
            except (ConnectionError, ValueError) as e:
                raise EvadError(f"cannot connect to the Ray cluster at {address}: "
                                f"{str(e).splitlines()[0]}") from None
        else:
            ray.init(include_dashboard=False, object_store_memory=256 * 2**20, **kw)
    except (KeyboardInterrupt, SystemExit):
        # a signal while Ray starts: its SIGTERM handler (the only sys.exit in ray.init) or
        # the caller's; stopped as Ctrl-C stops the job, with what Ray started shut down
        ray.shutdown()
        raise KeyboardInterrupt from None
    finally:
        for sig, handler in keep.items():
            if callable(handler):  # a handler the caller chose; else Ray's cleans up
                signal.signal(sig, handler)
    if not address:
        ip = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(ip.strip("[]")).is_loopback:
            ray.shutdown()
            raise EvadError(f"the local Ray started on {ip}, not loopback (ray was imported "
                            "before this job could ask for loopback): set "
                            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray")
    return True


def run_job_ray(tasks: Sequence[VideoTask], model: ModelRef, opts: DetectOptions,
                out: Path, *, address: str | None = None, resume: bool = False,
                quiet: bool = False, prog: str = "evad-trt-run", actors: int = 0,
                opener: OpenModel | None = None, progress: JobProgress | None = None,
                max_attempts: int = 3) -> dict[str, Any]:
    """Run a job's videos on Ray and write the job summary; the local job's outputs.

    Args:
        tasks: the videos (``plan_job``).
        model: the model each actor opens (:func:`open_model`; its files are checked here,
            before Ray starts, and must exist at the same paths on every node).
        opts: detection options.
        out: the job folder (storage every node sees).
        address: the cluster (``host:port``, ``ray://host:port``, ``auto``); None: a local Ray
            on this machine, shut down at the end.
        resume: as the local job.
        actors: pool size (default: one per GPU when the cluster has GPUs, else one per two
            CPUs, at most one per video).
        opener: how actors open the model (tests pass one that fails on purpose).
        progress: its ``results`` get the finished videos (the caller's Ctrl-C message).
        max_attempts: a video whose worker died this many times is recorded as failed (a
            crash in a decoder, out of memory) instead of being retried for ever.

    Returns:
        The job summary (``finish_job``).

    Raises:
        EvadError: a model file missing here, or on a worker while the job runs (then after
            the other videos, with ``job.json`` written), an address that is no Ray head node.
        KeyboardInterrupt: Ctrl-C, or SIGTERM / SIGHUP where the caller turns them into it
            (``evad-trt-run`` does): ``job.json`` written, Ray shut down if started here.
    """
    # said here once, before Ray starts (each actor re-checks: the files can go meanwhile)
    model = model.resolved()
    started = _init(address)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(int(resources.get("CPU", 1)), 1)
        size = actors or max(1, min(len(tasks), gpus if gpus else max(cpus // 2, 1)))
        ctx = ray_data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # this run's counters; Ray Data is lazy: no actor counts before iter_rows below
        attempts = out / ATTEMPTS / uuid.uuid4().hex
        ds = ray_data.from_items([asdict(t) for t in tasks], override_num_blocks=len(tasks))
        results = ds.map_batches(
            VideoWorker, batch_size=1, compute=ray_data.ActorPoolStrategy(size=size),
            num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_kwargs={"model": model, "options": opts, "resume": resume,
                                   "opener": opener, "attempts_dir": str(attempts),
                                   "max_attempts": max_attempts})
        progress = JobProgress(out, len(tasks)) if progress is None else progress
        done = progress.results
        # what the actors opened, as the first of them reports it (no model is opened here)
        ran = JobRun(ray=address or "local", actors=size, gpus_per_actor=1 if gpus else 0)
        t0 = time.perf_counter()
        with FolderLock(out, prog), tqdm(total=len(tasks), desc="videos", unit="video",
                                         disable=quiet, dynamic_ncols=True) as bar:
            # counters of earlier runs (an interrupted one leaves its folder): not this run's
            shutil.rmtree(out / ATTEMPTS, ignore_errors=True)
            unopened = ""  # why an actor could not open the model (its videos: not run)
            try:
                for row in results.iter_rows():
                    if row["error"]:  # read on: stopping here has Ray kill busy actors
                        unopened = row["error"]
                        continue
                    res = TaskResult.from_json(json.loads(row["result"]))
                    if ran.runner is None:
                        ran = replace(ran, **json.loads(row["model"]))
                    done.append(res)
                    if res.status == "failed":
                        tqdm.write(f"{prog}: {res.video}: failed: {res.error}", file=sys.stderr)
                    bar.update(1)
            except BaseException as e:
                finish_job(out, tasks, done, model, ran, complete=False)
                if isinstance(e, Exception) and not isinstance(e, EvadError):
                    # Ray's own errors (actors that cannot start) run to many lines
                    raise EvadError(f"the Ray job stopped: {type(e).__name__}: "
                                    f"{_first_line(e)}") from e
                raise
            finally:
                shutil.rmtree(out / ATTEMPTS, ignore_errors=True)
            job = finish_job(out, tasks, done, model, ran, complete=not unopened)
            if unopened:
                raise EvadError(f"a Ray worker cannot open the model: {unopened}; its files "
                                "must stay in place, at the same path on every node, while "
                                f"the job runs: put them back and rerun with --resume "
                                f"({job['not_run']} of {len(tasks)} videos not run)")
        job["ray_seconds"] = round(time.perf_counter() - t0, 3)
        return job
    finally:
        if started:
            ray.shutdown()
