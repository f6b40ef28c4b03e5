"""One benchmark path (a backend at a precision) in a process of its own, driven over a pipe.

``evad-bench`` starts one child per path (``python -m evad.runtime.benchmark``), so that each
path's peak memory is its own (ru_maxrss of that process) and an ONNX Runtime or OpenVINO path
never imports torch. The parent then interleaves the children's timed runs (one run of each
path in turn, round after round), so drift in the machine's speed falls on every path alike.

Protocol: the child reads one JSON config line, loads the model, answers ``{"ready": ...}``; then
for each command line ``warmup`` / ``run`` it answers one JSON line; ``quit`` ends it. Nothing
else goes to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.lazy import lazy_import
from evad.runner import KEPT_IDX_PREFIX, Runner

if TYPE_CHECKING:
    import torch

    from evad import models
    from evad.models import runner as torch_runner
    from evad.runtime import backends
else:  # a child for ONNX Runtime or OpenVINO never loads torch
    torch = lazy_import("torch", "pip install torch")
    models = lazy_import("evad.models", "pip install torch")
    torch_runner = lazy_import("evad.models.runner", "pip install torch")
    backends = lazy_import("evad.runtime.backends", "pip install -e .")

__all__ = ["PATHS", "BenchPath", "cpu_name", "gemm_rate", "p95", "settle_warmups"]


@dataclass(frozen=True)
class BenchPath:
    """A benchmark path: ``backend`` at ``precision`` on ``device``; ``needs`` the model file it
    runs from (``onnx``, ``ckpt`` or ``engine``: ``ckpt`` also takes a preset's random weights)."""

    name: str
    backend: str
    precision: str
    device: str
    needs: str


PATHS: dict[str, BenchPath] = {p.name: p for p in (
    BenchPath("torch-fp32", "torch", "fp32", "cpu", "ckpt"),
    BenchPath("torch-bf16", "torch", "bf16", "cpu", "ckpt"),
    BenchPath("ort-fp32", "ort", "fp32", "cpu", "onnx"),
    BenchPath("openvino-fp32", "openvino", "fp32", "cpu", "onnx"),
    BenchPath("openvino-bf16", "openvino", "bf16", "cpu", "onnx"),
    BenchPath("openvino-bf16-int8w", "openvino", "bf16-int8w", "cpu", "onnx"),
    BenchPath("torch-cuda-fp32", "torch", "fp32", "cuda", "ckpt"),
    BenchPath("torch-cuda-bf16", "torch", "bf16", "cuda", "ckpt"),
    BenchPath("trt", "trt", "engine", "cuda", "engine"),
)}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def p95(values: list[float]) -> float:
    """The 95th percentile, linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = 0.95 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def settle_warmups(times: list[float], rtol: float = 0.1) -> bool:
    """Whether warm-up has settled: the last two runs within ``rtol`` of each other."""
    return len(times) >= 2 and abs(times[-1] - times[-2]) <= rtol * min(times[-2:])


def _peak_rss_gb() -> float:
    """This process's peak RSS, GB. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    execve, so a child would report at least its parent's size at the fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB elsewhere


def _open(cfg: dict[str, Any]) -> Runner:
    path = PATHS[cfg["path"]]
    threads = int(cfg.get("threads", 0))
    if path.backend == "torch":
        if threads:
            torch.set_num_threads(threads)
        overrides = {"keep_rate": cfg["keep_rate"]} if cfg.get("keep_rate") else {}
        if cfg.get("ckpt"):
            model, _ = models.load_checkpoint(cfg["ckpt"], **overrides)
            return torch_runner.TorchRunner(model, f"checkpoint {cfg['ckpt']}", path.device,
                                            path.precision)
        torch.manual_seed(int(cfg["seed"]))
        model = models.build_model(cfg["preset"], **overrides).eval().calm()
        return torch_runner.TorchRunner(model, f"preset {cfg['preset']}", path.device,
                                        path.precision)
    if path.backend == "trt":
        runner, _ = backends.open_runner("trt", engine=Path(cfg["engine"]))
        return runner
    runner, _ = backends.open_runner(path.backend, onnx=Path(cfg["onnx"]), threads=threads,
                                     precision=path.precision, cuda=False)
    return runner


def _timer(runner: Runner):
    """A call timer: CUDA events around the call on a GPU (when torch is there), else wall."""
    if getattr(runner, "on_gpu", False):
        try:
            if torch.cuda.is_available():
                def cuda_time(fn) -> float:
                    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                    torch.cuda.synchronize()
                    start.record()
                    fn()
                    end.record()
                    torch.cuda.synchronize()
                    return start.elapsed_time(end) / 1e3
                return cuda_time
        except ImportError:  # MissingDependency too: no torch, wall time
            pass

    def wall(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return wall


def child() -> int:
    """The child's loop (see the module docstring)."""
    # the protocol gets its own copy of fd 1; fd 1 itself (where native libraries print) and
    # sys.stdout go to stderr, so nothing but answers reaches the parent's pipe
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def say(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    cfg = json.loads(sys.stdin.readline())
    try:
        t0 = time.perf_counter()
        runner = _open(cfg)
        load_s = time.perf_counter() - t0
        b, h, w = int(cfg["batch"]), int(cfg["height"]), int(cfg["width"])
        rng = np.random.default_rng(int(cfg["seed"]))
        frames = runner.spec.num_frames
        clip = rng.standard_normal((b, 3, frames, h, w), dtype=np.float32)
        size = np.tile(np.array([[h, w]], np.int64), (b, 1))
        timer = _timer(runner)
        result: dict[str, np.ndarray] = {}

        def call() -> None:
            result.update(runner(clip, size))

        say({"ready": True, "load_s": load_s, "name": runner.name,
             "gpu": _gpu_name() if PATHS[cfg["path"]].device == "cuda" else None,
             "rss_after_load_gb": _peak_rss_gb()})
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                break
            if cmd in ("warmup", "run"):
                seconds = timer(call)
                s = (h // runner.spec.patch_size) * (w // runner.spec.patch_size)
                kept = {k[len(KEPT_IDX_PREFIX):]: int(v.shape[1]) + s for k, v in result.items()
                        if k.startswith(KEPT_IDX_PREFIX)}
                say({"seconds": seconds, "peak_rss_gb": _peak_rss_gb(), "tokens_after": kept})
            else:
                say({"error": f"unknown command {cmd!r}"})
    except Exception as e:  # the parent prints it as the path's one-line failure
        say({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
        return 1
    return 0


def _gpu_name() -> str | None:
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def gemm_rate(precision: str, threads: int, m: int = 4608, k: int = 768, n: int = 3072,
              seconds: float = 1.5) -> float:
    """This machine's GEMM rate now, GMAC/s, at ViT-B's MLP shape (4608 x 768 @ 768 x 3072):
    the yardstick the achieved rate of each path is a fraction of. torch (oneDNN / MKL) on the
    CPU; ``precision`` fp32 or bf16."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        g = torch.Generator().manual_seed(0)
        a = torch.randn(m, k, generator=g).to(dtype)
        b = torch.randn(k, n, generator=g).to(dtype)
        torch.mm(a, b)
        best, spent = float("inf"), 0.0
        while spent < seconds:
            t0 = time.perf_counter()
            torch.mm(a, b)
            dt = time.perf_counter() - t0
            best, spent = min(best, dt), spent + dt
        return m * k * n / best / 1e9
    finally:
        torch.set_num_threads(old)


def summarise(times: list[float]) -> dict[str, float]:
    """median and p95 of the timed runs, seconds."""
    return {"median_s": statistics.median(times), "p95_s": p95(times)}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(child())
