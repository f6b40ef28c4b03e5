"""The benchmark's measurement: each path (a backend at a precision) in a process of its own,
driven over a pipe, and the parent that drives them (:func:`run_benchmark`, both ends of the
protocol in one module).

``evad-bench`` starts one child per path (``python -m evad.runtime.benchmark``), so that each
path's peak memory is its own (ru_maxrss of that process) and an ONNX Runtime or OpenVINO path
never imports torch. The parent then interleaves the children's timed runs (one run of each
path in turn, round after round), so drift in the machine's speed falls on every path alike.
The command line is ``evad.cli.bench``; the table and plot, ``evad.runtime.bench_report``.

Protocol: the child reads one JSON config line, loads the model, answers ``{"ready": ...}``; then
for each command line ``warmup`` / ``run`` it answers one JSON line; ``quit`` ends it. Nothing
else goes to stdout.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.errors import EvadError
from evad.lazy import lazy_import
from evad.models.presets import Preset
from evad.runner import BACKEND_TABLE, KEPT_IDX_PREFIX, Runner
from evad.runtime.gemm_rate import GEMM_SHAPE, gemm_rates

if TYPE_CHECKING:
    import torch

    from evad import models
    from evad.models import flops as model_flops
    from evad.runtime import backends
else:  # a child for ONNX Runtime or OpenVINO never loads torch
    torch = lazy_import("torch", "pip install torch")
    models = lazy_import("evad.models", "pip install torch")
    model_flops = lazy_import("evad.models.flops", "pip install torch")
    backends = lazy_import("evad.runtime.backends", "pip install -e .")

__all__ = ["CPU_FEATURES", "GEMM_PRECISION", "PATHS", "BenchPath", "BenchSettings",
           "cpu_features", "cpu_name", "keep_rate_ratios", "p95",
           "package_versions", "run_benchmark", "settle_warmups", "summarise"]


@dataclass(frozen=True)
class BenchPath:
    """A benchmark path: ``backend`` at ``precision`` on ``device``; ``needs`` the model file it
    runs from (``onnx``, ``ckpt`` or ``engine``: ``ckpt`` also takes a preset's random weights).
    A TensorRT path's precision is ``engine``: the one the engine was built with."""

    name: str
    backend: str
    precision: str
    device: str
    needs: str


def _paths() -> dict[str, BenchPath]:
    """One path per row x run precision of :data:`evad.runner.BACKEND_TABLE`, CPU paths
    first: ``torch-bf16``, ``openvino-bf16-int8w``, ``torch-cuda-fp32``; an engine is one path,
    ``trt``, at the precision it was built with."""
    out = []
    for row in sorted(BACKEND_TABLE, key=lambda r: r.device != "cpu"):
        if row.set_at == "build":
            out.append(BenchPath(row.backend, row.backend, "engine", row.device, row.model))
            continue
        on = "-cuda" if row.device == "cuda" else ""
        out += [BenchPath(f"{row.backend}{on}-{p}", row.backend, p, row.device, row.model)
                for p in row.precisions]
    return {p.name: p for p in out}


#: every path evad-bench can time, by name
PATHS = _paths()


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
    """The path's runner, through ``open_runner`` like every command's."""
    path = PATHS[cfg["path"]]
    threads = int(cfg.get("threads", 0))
    cuda = path.device == "cuda"
    if path.backend == "trt":
        runner, _ = backends.open_runner("trt", engine=Path(cfg["engine"]))
        return runner
    if path.backend != "torch":
        runner, _ = backends.open_runner(path.backend, onnx=Path(cfg["onnx"]), threads=threads,
                                         precision=path.precision, cuda=cuda)
        return runner
    if threads:
        torch.set_num_threads(threads)
    # keep-rate overrides apply to the model in memory, so torch opens from it, not the file
    model, _ = models.load_or_build(cfg.get("ckpt") or None, cfg.get("preset"),
                                    seed=int(cfg.get("seed", 0)),
                                    keep_rate=cfg.get("keep_rate") or None)
    name = f"checkpoint {cfg['ckpt']}" if cfg.get("ckpt") else f"preset {cfg['preset']}"
    runner, _ = backends.open_runner("torch", model=model, model_name=name, cuda=cuda,
                                     precision=path.precision)
    return runner


def _timer(runner: Runner):
    """A call timer: CUDA events around the call on a GPU (when torch is there), else wall."""
    if runner.on_gpu:
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
        with runner:  # an engine's device memory is freed before the child exits
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


#: the /proc/cpuinfo flags that decide which CPU path is fast: matrix units (AMX), vector
#: bf16 / int8 dot products (AVX512-BF16, VNNI), and the vector widths under them
CPU_FEATURES = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni",
                "avx512f", "avx2", "fma")


def cpu_features() -> list[str]:
    """Which of :data:`CPU_FEATURES` this CPU has (Linux's /proc/cpuinfo; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in CPU_FEATURES if x in have]
    except OSError:
        pass
    return []


def summarise(times: list[float]) -> dict[str, float]:
    """median and p95 of the timed runs, seconds."""
    return {"median_s": statistics.median(times), "p95_s": p95(times)}


# --- the parent: children per path, interleaved runs, the report --------------------------------

#: a path's precision -> the GEMM rate it is a fraction of (int8 weights: bf16 products; the
#: calibrated INT8 export: int8 x int8 products)
GEMM_PRECISION = {"bf16-int8w": "bf16"}


def keep_rate_ratios(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per path: clips/s at each keep rate over clips/s at the first one."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["path"] for r in results):
        rows = [r for r in results if r["path"] == name and "clips_per_s" in r]
        if len(rows) > 1:
            base = rows[0]["clips_per_s"]
            out[name] = {str(r["keep_rate"]): round(r["clips_per_s"] / base, 3) for r in rows}
    return out


def _onnx_of(path: str, onnx: Path | None, int8_onnx: Path | None) -> str | None:
    """The ONNX file ``path`` runs: the INT8 export for an int8 path, else the export."""
    chosen = int8_onnx if PATHS[path].precision == "int8" else onnx
    return str(chosen) if chosen else None


@dataclass(frozen=True)
class BenchSettings:
    """What one ``evad-bench`` run measures, as its command line gave it (checked there).

    The model: ``preset`` (random calmed weights, seeded by ``seed``), ``ckpt`` or ``onnx``;
    ``engine`` for the trt path; ``int8_onnx``, the model's calibrated INT8 export
    (``evad-export --int8``), for the int8 paths. ``height`` x ``width`` pixels, ``batch``
    clips per call; ``keep_rates``: one measurement per keep rate of every pruning block
    (empty: the model's own); ``runs`` timed runs and at most ``max_warmup`` warm-ups per
    path; ``threads`` per path (>= 1); ``seed`` also seeds the clip.
    """

    paths: tuple[str, ...]
    height: int
    width: int
    batch: int
    runs: int
    max_warmup: int
    threads: int
    seed: int
    keep_rates: tuple[float, ...] = ()
    preset: str | None = None
    ckpt: Path | None = None
    onnx: Path | None = None
    engine: Path | None = None
    int8_onnx: Path | None = None


def package_versions() -> dict[str, str | None]:
    """The installed version of Python and of each package a path may use (None: absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "openvino", "tensorrt", "evad-deploy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class _Child:
    """One path's process (``python -m evad.runtime.benchmark``), asked over its pipes
    (the protocol of the module docstring); ``ask`` raises EvadError in one line when the
    child answers an error or dies."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evad.runtime.benchmark"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        try:
            self.ask(json.dumps(cfg))
        except EvadError:
            self.close()
            raise

    def _died(self) -> EvadError:
        code = self.proc.wait(timeout=30) if self.proc.poll() is None else self.proc.returncode
        self.log.seek(0)
        tail = [x for x in self.log.read().splitlines() if x.strip()][-1:] or ["no output"]
        return EvadError(f"path {self.cfg['path']} died (exit code {code}): {tail[0][:300]}")

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        except OSError:  # the child is gone (broken pipe)
            raise self._died() from None
        if not answer:
            raise self._died()
        try:
            msg = json.loads(answer)
        except ValueError:
            raise EvadError(f"path {self.cfg['path']} answered {answer.strip()[:120]!r}, not "
                            "the benchmark protocol") from None
        if "error" in msg:
            raise EvadError(f"path {self.cfg['path']}: {msg['error']}")
        return msg

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.log.close()


def run_benchmark(s: BenchSettings, preset: Preset, export: Callable[[float | None], Path],
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Measure every path of ``s`` on the model ``preset`` describes, one child process per
    path, and return the report (what ``--json`` writes; ``evad.runtime.bench_report`` renders
    it).

    Per keep rate (``s.keep_rates``, else the model's own): ``export(rate)`` gives the ONNX
    the ONNX paths run unless ``s.onnx`` is one; each path's child loads its model, warms up
    until two runs agree within 10 % (at most ``s.max_warmup``), then the timed runs go round
    the children in turn, ``s.runs`` rounds. A path that fails gets an ``error`` (one line) and
    the others go on. ``log`` receives one line per step (the command prints it on stderr).

    Returns:
        ``{"machine", "versions", "date", "model", "settings", "gemm_gmac_per_s",
        "gemm_gmac_per_s_by_kernel", "results", "keep_rate_ratios"}``: this machine's GEMM
        rate per precision (the best of torch's and OpenVINO's kernels,
        :func:`evad.runtime.gemm_rate.gemm_rates`; each kernel's too); per path and rate,
        seconds (median, p95, each run), clips/s, peak RSS (GB), GMAC per clip and per second,
        its fraction of that GEMM rate at its precision, and the tokens after each pruning
        block.
    """
    flops, token_counts = model_flops.flops, model_flops.token_counts
    paths, threads = s.paths, s.threads
    rates: list[float | None] = list(s.keep_rates) if s.keep_rates else [None]
    report: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(),
                    "cores": os.cpu_count(), "threads": threads,
                    "platform": platform.platform()},
        "versions": package_versions(),
        "date": datetime.date.today().isoformat(),
        "model": {"preset": preset.name, "source": str(s.onnx or s.ckpt or "random "
                  f"weights, seed {s.seed} (calmed)"), "height": s.height,
                  "width": s.width, "batch": s.batch},
        "settings": {"runs": s.runs, "max_warmup": s.max_warmup,
                     "warmup_rule": "until two runs in a row agree within 10%",
                     "interleaved": True, "one_process_per_path": True},
        "gemm_gmac_per_s": {}, "gemm_gmac_per_s_by_kernel": {}, "results": [],
    }
    log(f"CPU {report['machine']['cpu']}: "
        f"{', '.join(report['machine']['cpu_features']) or 'none of ' + ', '.join(CPU_FEATURES)}")
    m, k, n = GEMM_SHAPE
    for prec in sorted({GEMM_PRECISION.get(PATHS[p].precision, PATHS[p].precision)
                        for p in paths if PATHS[p].device == "cpu"}):
        failed: dict[str, str] = {}
        by_kernel = gemm_rates(prec, threads, failed=failed)
        for kernel, why in failed.items():
            log(f"GEMM rate, {prec}: {kernel}'s kernel left out ({why})")
        if not by_kernel:
            log(f"no {prec} GEMM yardstick (neither torch nor OpenVINO could run it): its "
                "fraction of the GEMM rate is left out")
            continue
        # the log says the figures the JSON keeps (rounded once), so the two always agree
        kept = {kernel: round(rate, 1) for kernel, rate in by_kernel.items()}
        report["gemm_gmac_per_s"][prec] = max(kept.values())
        report["gemm_gmac_per_s_by_kernel"][prec] = kept
        log(f"GEMM rate now, {m}x{k} @ {k}x{n}, {prec}, {threads} threads: "
            f"{max(kept.values()):.0f} GMAC/s (the best of "
            + ", ".join(f"{kernel} {rate:.0f}" for kernel, rate in kept.items()) + ")")
    for rate in rates:
        p = preset.replace(keep_rate=rate) if rate else preset
        gmac = flops(p, s.height, s.width)["total"]
        onnx = s.onnx
        if onnx is None and any(PATHS[x].needs == "onnx" and PATHS[x].precision != "int8"
                                for x in paths):
            log(f"exporting {preset.name} at {s.height}x{s.width} for the ONNX paths "
                 "(the dynamo exporter takes a while) ...")
            onnx = export(rate)
        children: dict[str, _Child] = {}
        results: dict[str, dict[str, Any]] = {}
        try:
            for name in paths:
                cfg = {"path": name, "threads": threads, "batch": s.batch,
                       "height": s.height, "width": s.width, "seed": s.seed,
                       "preset": s.preset, "keep_rate": rate,
                       "ckpt": str(s.ckpt) if s.ckpt else None,
                       "onnx": _onnx_of(name, onnx, s.int8_onnx),
                       "engine": str(s.engine) if s.engine else None}
                res = {"path": name, "backend": PATHS[name].backend,
                       "precision": PATHS[name].precision, "keep_rate": rate or "as trained",
                       "gmac_per_clip": round(gmac, 1),
                       "tokens_model": token_counts(p, s.height, s.width)}
                results[name] = res
                log(f"{name}: loading ...")
                try:
                    children[name] = _Child(cfg)
                except EvadError as e:
                    res["error"] = str(e)
                    log(f"{name}: FAILED: {e}")
                    continue
            for name, child in list(children.items()):
                res = results[name]
                warm: list[float] = []
                try:
                    while len(warm) < s.max_warmup and not settle_warmups(warm):
                        warm.append(child.ask("warmup")["seconds"])
                except EvadError as e:
                    res["error"] = str(e)
                    children.pop(name).close()
                    continue
                res["warmup_s"] = [round(x, 4) for x in warm]
                res["warmups"] = len(warm)
                res["settled"] = settle_warmups(warm)
                log(f"{name}: {len(warm)} warm-up run(s): "
                     + ", ".join(f"{x:.2f}" for x in warm) + " s")
            runs: dict[str, list[float]] = {n: [] for n in children}
            last: dict[str, dict] = {}
            for r in range(s.runs):
                for name, child in list(children.items()):
                    try:
                        msg = child.ask("run")
                    except EvadError as e:
                        results[name]["error"] = str(e)
                        children.pop(name).close()
                        continue
                    runs[name].append(msg["seconds"])
                    last[name] = msg
                log(f"round {r + 1}/{s.runs}: " + ", ".join(
                    f"{n} {runs[n][-1]:.2f} s" for n in children if runs[n]))
            for name in children:
                res = results[name]
                res.update({k: round(v, 4) for k, v in summarise(runs[name]).items()})
                res["runs_s"] = [round(x, 4) for x in runs[name]]
                res["clips_per_s"] = round(s.batch / res["median_s"], 4)
                res["peak_rss_gb"] = round(last[name]["peak_rss_gb"], 3)
                res["tokens_after_pruning"] = last[name]["tokens_after"]
                res["gmac_per_s"] = round(gmac * s.batch / res["median_s"], 1)
                prec = PATHS[name].precision
                peak = report["gemm_gmac_per_s"].get(GEMM_PRECISION.get(prec, prec))
                if peak and PATHS[name].device == "cpu":
                    res["fraction_of_gemm_rate"] = round(res["gmac_per_s"] / peak, 3)
        finally:
            for child in children.values():
                child.close()
        report["results"].extend(results.values())
    report["keep_rate_ratios"] = keep_rate_ratios(report["results"]) if len(rates) > 1 else {}
    return report


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(child())
