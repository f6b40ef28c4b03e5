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

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from evad.errors import EvadError
from evad.lazy import lazy_import
from evad.run_lock import FolderLock
from evad.runner import Runner
from evad.runtime.backends import open_runner
from evad.runtime.job import DetectOptions, VideoTask, finish_job, run_task

if TYPE_CHECKING:
    import ray
    import ray.data as ray_data
else:
    ray = lazy_import("ray", "pip install 'evad-deploy[ray]'")
    ray_data = lazy_import("ray.data", "pip install 'evad-deploy[ray]'")

__all__ = ["VideoWorker", "run_job_ray"]

#: a function that opens the model in an actor: model arguments -> runner
OpenModel = Callable[[dict[str, Any]], Runner]


def open_model(model: dict[str, Any]) -> Runner:
    """The runner for ``model`` (``engine``, ``onnx``, ``ckpt``, ``backend``, ``threads``,
    ``precision``), as ``evad-trt-run`` opens it."""
    def path(key: str) -> Path | None:
        return Path(model[key]) if model.get(key) else None

    runner, _ = open_runner(model.get("backend", "auto"), engine=path("engine"),
                            onnx=path("onnx"), ckpt=path("ckpt"),
                            threads=model.get("threads", 0), shrink_arena=True,
                            precision=model.get("precision", "fp32"))
    return runner


class VideoWorker:
    """A Ray Data callable class: one model session per actor, one video per call.

    Args:
        model: the model arguments (:func:`open_model`).
        options: the detection options, as a dict (``DetectOptions``).
        resume: skip finished videos, continue interrupted ones.
        opener: how to open the model (default :func:`open_model`).
    """

    def __init__(self, model: dict[str, Any], options: dict[str, Any], resume: bool,
                 opener: OpenModel | None = None) -> None:
        self.runner = (opener or open_model)(model)
        self.options = DetectOptions(**options)
        self.resume = resume

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in ("video", "video_id", "out_dir", "result")}
        for video, vid, out_dir in zip(batch["video"], batch["video_id"], batch["out_dir"],
                                       strict=True):
            task = VideoTask(str(video), str(vid), str(out_dir))
            res = run_task(task, self.runner, self.options, resume=self.resume)
            out["video"].append(task.video)
            out["video_id"].append(task.video_id)
            out["out_dir"].append(task.out_dir)
            out["result"].append(json.dumps(res))
        return {k: np.array(v) for k, v in out.items()}


def _check_reachable(address: str) -> None:
    """Fail at once for a ``host:port`` nobody answers on: Ray itself retries for minutes."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EvadError(f"--ray {address}: give the head node as HOST:PORT (its GCS port, "
                        "6379 by default), ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise EvadError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start "
                        "one with ray start --head, or drop ADDRESS for a local Ray") from None


def _init(address: str | None) -> bool:
    """Connect to (or start) Ray; returns whether this call started it."""
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError) as e:
            raise EvadError(f"cannot connect to the Ray cluster at {address}: "
                            f"{str(e).splitlines()[0]}") from None
    else:
        ray.init(include_dashboard=False, object_store_memory=256 * 2**20, **kw)
    return True


def run_job_ray(tasks: Sequence[VideoTask], model: dict[str, Any], opts: DetectOptions,
                out: Path, *, address: str | None = None, resume: bool = False,
                quiet: bool = False, prog: str = "evad-trt-run", actors: int = 0,
                opener: OpenModel | None = None) -> dict[str, Any]:
    """Run a job's videos on Ray and write the job summary; the local job's outputs.

    Args:
        tasks: the videos (``plan_job``).
        model: model arguments for each actor (:func:`open_model`; paths must exist on every
            node).
        opts: detection options.
        out: the job folder (storage every node sees).
        address: the cluster (``host:port``, ``ray://host:port``, ``auto``); None: a local Ray
            on this machine, shut down at the end.
        resume: as the local job.
        actors: pool size (default: one per GPU when the cluster has GPUs, else one per two
            CPUs, at most one per video).
        opener: how actors open the model (tests pass one that fails on purpose).

    Returns:
        The job summary (``finish_job``).
    """
    started = _init(address)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(int(resources.get("CPU", 1)), 1)
        size = actors or max(1, min(len(tasks), gpus if gpus else max(cpus // 2, 1)))
        ctx = ray_data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        clean = {k: (str(v) if isinstance(v, Path) else v) for k, v in model.items()}
        ds = ray_data.from_items([asdict(t) for t in tasks], override_num_blocks=len(tasks))
        results = ds.map_batches(
            VideoWorker, batch_size=1, compute=ray_data.ActorPoolStrategy(size=size),
            num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_kwargs={"model": clean, "options": asdict(opts), "resume": resume,
                                   "opener": opener})
        done: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        with FolderLock(out, prog), tqdm(total=len(tasks), desc="videos", unit="video",
                                         disable=quiet, dynamic_ncols=True) as bar:
            try:
                for row in results.iter_rows():
                    res = json.loads(row["result"])
                    done.append(res)
                    if res["status"] == "failed":
                        tqdm.write(f"{prog}: {res['video']}: failed: {res['error']}")
                    bar.update(1)
            except KeyboardInterrupt:
                finish_job(out, tasks, done, {"ray": address or "local", **clean},
                           complete=False)
                raise
            job = finish_job(out, tasks, done, {"ray": address or "local", "actors": size,
                                                "gpus_per_actor": 1 if gpus else 0, **clean})
        job["ray_seconds"] = round(time.perf_counter() - t0, 3)
        return job
    finally:
        if started:
            ray.shutdown()
