"""``evad-trt-run VIDEOS --ray``: the job on a local Ray cluster (``ray.init(num_cpus=2)``).

Its folders and merged CSV must equal the sequential job's byte for byte; a worker killed in
the middle of a video has that video retried by Ray Data, and no row is doubled.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import make_video, require

from evad.errors import EvadError
from evad.runtime.cli import main
from evad.runtime.job import plan_job
from evad.runtime.source import ModelRef
from evad.runtime.video_run import DetectOptions

ray = require("ray", "ray")
require("ray.data", "ray")

from evad.runtime.ray_job import (  # noqa: E402
    ATTEMPTS,
    _check_reachable,
    open_model,
    run_job_ray,
)

ARGS = ("--person-threshold", "0.05", "--keyframe-stride", "0.5", "--quiet")


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    # the killing opener below lives in this test module, which workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_onnx):
    d = tmp_path_factory.mktemp("ray-videos")
    for name, seconds, fps in (("v1", 2.0, 10.0), ("v2", 1.5, 8.0), ("v3", 2.5, 12.0),
                               ("v4", 1.0, 10.0)):
        make_video(d / f"{name}.mp4", seconds, 320, 180, fps)
    seq = tmp_path_factory.mktemp("seq") / "job"
    assert main([str(d), "--onnx", str(tiny_onnx), "--out", str(seq), *ARGS]) == 0
    return d, seq


def _same_job(a: Path, b: Path) -> None:
    assert (a / "detections.csv").read_bytes() == (b / "detections.csv").read_bytes()
    for vid in ("v1", "v2", "v3", "v4"):
        for name in ("detections.csv", "detections.jsonl"):
            assert (a / vid / name).read_bytes() == (b / vid / name).read_bytes(), (vid, name)
    ja, jb = (json.loads((p / "job.json").read_text()) for p in (a, b))
    assert [(r["video_id"], r["status"], r["keyframes"]) for r in ja["results"]] == \
        [(r["video_id"], r["status"], r["keyframes"]) for r in jb["results"]]


def test_ray_job_equals_the_sequential_job(cluster, job, tmp_path, tiny_onnx, capfd):
    d, seq = job
    out = tmp_path / "ray"
    assert main([str(d), "--onnx", str(tiny_onnx), "--out", str(out), "--ray", *ARGS]) == 0
    assert "4 done, 0 already done, 0 failed" in capfd.readouterr().out
    _same_job(out, seq)
    meta = json.loads((out / "job.json").read_text())["model"]
    assert meta["ray"] == "local" and meta["actors"] >= 1


class _Dying:
    """A runner that kills its own process (``os._exit``) on a call where ``dies(calls,
    size)`` holds: a worker dying in the middle of a video."""

    def __init__(self, runner, dies) -> None:
        self.runner, self.dies, self.calls = runner, dies, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, clip, size):
        self.calls += 1
        if self.dies(self.calls, size):
            os._exit(1)
        return self.runner(clip, size)


def _killing_opener(marker: str):
    """Dies on its 2nd call (after a video's first keyframe was written), once per marker."""
    def dies(calls, size):
        if calls == 2 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            return True
        return False

    def opener(model):
        return _Dying(open_model(model), dies)
    return opener


def test_a_killed_worker_has_its_video_retried_without_doubled_rows(cluster, job, tmp_path,
                                                                    tiny_onnx):
    d, seq = job
    out = tmp_path / "ray-killed"
    marker = tmp_path / "killed.pid"
    tasks = plan_job(sorted(d.glob("*.mp4")), out)
    opts = DetectOptions(person_threshold=0.05, keyframe_stride=0.5)
    summary = run_job_ray(tasks, ModelRef(onnx=str(tiny_onnx), backend="ort"), opts, out,
                          quiet=True, actors=2, opener=_killing_opener(str(marker)))
    assert marker.exists()  # a worker did die mid-video
    assert (summary["done"], summary["failed"]) == (4, 0)
    _same_job(out, seq)
    rows = (out / "detections.csv").read_text().splitlines()
    assert len(rows) == len((seq / "detections.csv").read_text().splitlines()) > 0
    for v in ("v1", "v2", "v3", "v4"):  # each keyframe once, in order
        recs = [json.loads(x) for x in (out / v / "detections.jsonl").read_text().splitlines()]
        assert [r["keyframe"] for r in recs] == list(range(len(recs)))
    assert not any((out / v / ".evad-staging").exists() for v in ("v1", "v2", "v3", "v4"))


def test_an_unreachable_cluster_is_one_line_at_once(job, tmp_path, tiny_onnx, capfd):
    import socket
    import time

    d, _ = job
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main([str(d), "--onnx", str(tiny_onnx), "--out", str(tmp_path / "o"), "--ray",
               f"127.0.0.1:{port}", *ARGS])
    err = capfd.readouterr().err
    assert rc == 2 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err
    assert time.monotonic() - t0 < 10 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _crashing_opener(width: int):
    """Dies on every clip of one frame width: a video that crashes its worker every time (a
    decoder or driver fault)."""
    def opener(model):
        return _Dying(open_model(model), lambda calls, size: int(size[0][1]) == width)
    return opener


def test_a_video_that_always_kills_its_worker_is_recorded_failed(cluster, job, tmp_path,
                                                                 tiny_onnx):
    d, seq = job
    square = tmp_path / "square.mp4"  # 4:3, resized to 128 x 96: the crashing size
    make_video(square, 1.0, 240, 180, 10.0)
    out = tmp_path / "ray-crash"
    tasks = plan_job([*sorted(d.glob("*.mp4"))[:2], square], out)
    opts = DetectOptions(person_threshold=0.05, keyframe_stride=0.5)
    summary = run_job_ray(tasks, ModelRef(onnx=str(tiny_onnx), backend="ort"), opts, out,
                          quiet=True, actors=1, opener=_crashing_opener(128), max_attempts=2)
    status = {r["video_id"]: (r["status"], r["error"]) for r in summary["results"]}
    assert status["v1"][0] == status["v2"][0] == "done"
    assert status["square"][0] == "failed" and "the worker died 2 times" in status["square"][1]
    for v in ("v1", "v2"):
        assert (out / v / "detections.csv").read_bytes() == \
            (seq / v / "detections.csv").read_bytes()
    assert not (out / ".evad-ray-attempts").exists()


def test_counts_left_by_earlier_runs_do_not_count(tmp_path, capfd, cluster, tiny_onnx):
    """Ray attempt counters belong to the run that made them: counts an interrupted job left in
    its folder (three Ctrl-C used to add up to "the worker died 3 times" on a video no worker
    died on) never count against a later run, and a run leaves none behind."""
    videos = tmp_path / "in"
    videos.mkdir()
    for name in ("a", "b"):
        make_video(videos / f"{name}.mp4", 1.0, 320, 180, 10.0)
    job = tmp_path / "job"
    # what three interrupted runs left: the old flat layout and a run folder of its own
    (job / ATTEMPTS / "0123abcd").mkdir(parents=True)
    for where in (job / ATTEMPTS, job / ATTEMPTS / "0123abcd"):
        for vid in ("a", "b"):
            (where / vid).write_text("3")
    rc = main([str(videos), "--onnx", str(tiny_onnx), "--out", str(job), "--ray", *ARGS])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "died" not in err
    results = json.loads((job / "job.json").read_text())["results"]
    assert [(r["video_id"], r["status"]) for r in results] == [("a", "done"), ("b", "done")]
    assert not (job / ATTEMPTS).exists()


def _vanishing_opener(path: str):
    """Deletes the model file, then opens it: the file gone after the driver checked it (while
    Ray started), before a worker opens it."""
    def opener(model):
        Path(path).unlink(missing_ok=True)
        return open_model(model)
    return opener


def test_a_model_that_vanished_is_one_line_naming_it(cluster, job, tmp_path, tiny_onnx, capfd):
    d, _ = job
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, model)
    out = tmp_path / "ray-gone"
    tasks = plan_job(sorted(d.glob("*.mp4")), out)
    opts = DetectOptions(person_threshold=0.05, keyframe_stride=0.5)
    with pytest.raises(EvadError) as e:
        run_job_ray(tasks, ModelRef(onnx=str(model), backend="ort"), opts, out, quiet=True,
                    actors=1, opener=_vanishing_opener(str(model)))
    msg = str(e.value)
    assert msg.startswith(f"a Ray worker cannot open the model: ONNX model {model} does not "
                          "exist;") and "rerun with --resume (4 of 4 videos not run)" in msg
    assert "\n" not in msg and "Traceback" not in capfd.readouterr().err  # no actor died
    summary = json.loads((out / "job.json").read_text())
    assert (summary["complete"], summary["done"], summary["not_run"]) == (False, 0, 4)
    assert not (out / ATTEMPTS).exists()


def test_a_ray_head_node_passes_the_address_check(cluster):
    """The gRPC handshake that refuses a web server (tests/test_ray_safety.py) takes a real
    GCS: it answers with an HTTP/2 SETTINGS frame."""
    _check_reachable(ray.get_runtime_context().gcs_address, timeout=2)
