"""Serving and batch-job figures on this machine: Triton load, a job locally and on Ray.

    bash .ci/triton_env.sh
    python benchmarks/scale_out.py --json benchmarks/results/scale_out_demo.json

With the demo model (ONNX, exported on first use) and synthetic videos made here:
- Triton: ``evad-triton-repo`` -> the wheel's ``tritonserver`` on loopback, gRPC (the ``evad``
  Python-backend model alone, ONNX Runtime in-process) -> the bounded load test with 1, 2 and
  4 clients (clip requests), and one whole-video request;
- jobs: ``--videos`` short videos through the local job, then through ``--ray`` on a local Ray
  (``ray.init(num_cpus=2)``), wall time each and whether the outputs are byte-identical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evad.export.demo import demo_onnx
from evad.runtime.benchmark import cpu_name
from evad.runtime.cli import main as run_main
from evad.serving.triton_client import detect, load_test
from evad.serving.triton_repo import write_repository
from evad.serving.triton_server import TritonServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_sample_video import make_video  # noqa: E402


def _triton(onnx: Path, tmp: Path, video: Path, requests: int) -> dict:
    import tritonclient.grpc as grpc

    repo = write_repository(tmp / "repo", onnx, gpu=False)
    t0 = time.perf_counter()
    with TritonServer(repo, models=["evad"]) as server:
        ready_s = time.perf_counter() - t0
        client = grpc.InferenceServerClient(server.grpc_url)
        spec_frames = json.loads((repo / "evad-repository.json").read_text())[
            "evad_metadata"]["num_frames"]
        rng = np.random.default_rng(0)
        clips = [rng.integers(0, 256, (spec_frames, 360, 640, 3), np.uint8) for _ in range(4)]
        load_test(server.grpc_url, clips, clients=1, requests=2)  # warm-up
        loads = [load_test(server.grpc_url, clips, clients=c, requests=requests)
                 for c in (1, 2, 4)]
        t = time.perf_counter()
        lines, rows = detect(client, video=video.read_bytes(), video_id="v", timeout_s=300)
        video_s = time.perf_counter() - t
    return {"ready_s": round(ready_s, 2), "clip_size": [spec_frames, 360, 640, 3],
            "load": loads, "video_request": {"seconds": round(video_s, 2),
                                             "keyframes": len(lines), "rows": len(rows)}}


def _jobs(onnx: Path, tmp: Path, n: int) -> dict:
    import ray

    d = tmp / "videos"
    d.mkdir()
    for i in range(n):
        make_video(d / f"v{i}.mp4", 6.0, 640, 360, 25.0)
    out = {}
    for name, extra in (("local", []), ("ray", ["--ray"])):
        t = time.perf_counter()
        assert run_main([str(d), "--onnx", str(onnx), "--out", str(tmp / name), "--quiet",
                         *extra]) == 0
        out[f"{name}_s"] = round(time.perf_counter() - t, 2)
    out["identical"] = all(
        (tmp / "local" / f"v{i}" / f).read_bytes() == (tmp / "ray" / f"v{i}" / f).read_bytes()
        for i in range(n) for f in ("detections.csv", "detections.jsonl"))
    out["videos"] = n
    out["ray_version"] = ray.__version__
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--requests", type=int, default=8, help="per client")
    ap.add_argument("--videos", type=int, default=4)
    args = ap.parse_args()
    onnx = demo_onnx()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        video = make_video(t / "one.mp4", 6.0, 640, 360, 25.0)
        result = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                  "model": str(onnx.name), "triton": _triton(onnx, t, video, args.requests),
                  "jobs": _jobs(onnx, t, args.videos)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
