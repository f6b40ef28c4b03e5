"""``evad-bench``: how fast each backend and precision runs one EVAD model on this machine.

Each path (a backend at a precision) runs in a process of its own (``evad.runtime.benchmark``),
so its peak memory is its own; warm-up runs repeat until two in a row agree within 10 %; the
timed runs are interleaved (one run of every path per round). Reported per path: median and p95
latency, clips/s at the batch size, peak RSS, the achieved GMAC/s and its fraction of this
machine's GEMM rate measured on the spot at that precision, and the tokens after each pruning
block. A keep-rate sweep (``--keep-rate 1.0,0.7``) repeats it per rate and prints each path's
throughput ratio against the first rate (the paper's rho 1.0 vs 0.7 claim, checked here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.atomic import write_bytes_atomic, write_json_atomic
from evad.command import (
    ArgumentParser,
    check_input_file,
    check_output_file,
    number,
    run_command,
)
from evad.errors import ConfigError, EvadError
from evad.export.openvino_runner import cpu_has_bf16
from evad.lazy import lazy_import
from evad.metadata import read_metadata, write_metadata
from evad.models.presets import get_preset
from evad.runtime.backends import openvino_installed
from evad.runtime.benchmark import PATHS, cpu_name, gemm_rate, settle_warmups, summarise

if TYPE_CHECKING:
    import cv2
    import torch

    from evad import export, models
    from evad.export import metadata as export_metadata
    from evad.models import flops as model_flops
else:  # --help, and --onnx paths, need no torch
    cv2 = lazy_import("cv2", "pip install opencv-python-headless")
    torch = lazy_import("torch", "pip install torch")
    export = lazy_import("evad.export", "pip install torch onnx onnxscript")
    models = lazy_import("evad.models", "pip install torch")
    export_metadata = lazy_import("evad.export.metadata", "pip install torch")
    model_flops = lazy_import("evad.models.flops", "pip install torch")

__all__ = ["main"]

_PROG = "evad-bench"
_T0 = [time.perf_counter()]


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0[0]:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of keep rates "
                                         "(e.g. 1.0,0.7)") from None
    if not rates or any(not 0.0 < r <= 1.0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: keep rates must be in (0, 1]")
    return rates


def _paths(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in PATHS]
    if bad or not names:
        said = ", ".join(bad) if bad else repr(text)
        raise argparse.ArgumentTypeError(f"unknown path(s) {said}; choose from "
                                         f"{', '.join(PATHS)}")
    return list(dict.fromkeys(names))


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Time each backend and precision on one EVAD model on this "
        "machine: median and p95 latency, clips/s, peak memory, GMAC/s against the GEMM rate "
        "measured now, tokens per pruning block; a table, --json and --png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="paths: " + ", ".join(PATHS) + """

examples:
  evad-bench --preset vit_b_ktp --height 288 --width 512
  evad-bench --preset vit_b_ktp --paths torch-fp32,openvino-bf16 --keep-rate 1.0,0.7
  evad-bench --onnx exports/vitb.onnx --paths ort-fp32,openvino-bf16 --json bench.json
  evad-bench --ckpt vitb.pth --engine exports/vitb.engine --paths trt,torch-cuda-fp32

A preset benchmarks random (calmed) weights; ONNX paths export it first (a minute for ViT-B).
Times on a shared machine drift: compare paths within one run, not across runs.""")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="random weights of a preset (vit_b_ktp, tiny, ...)")
    src.add_argument("--ckpt", type=Path, help="a checkpoint (torch paths; exported for ONNX "
                     "paths)")
    src.add_argument("--onnx", type=Path, help="an evad-export ONNX (ONNX Runtime / OpenVINO "
                     "paths only)")
    ap.add_argument("--engine", type=Path, help="a TensorRT engine, for the trt path")
    ap.add_argument("--paths", type=_paths, default=None,
                    help="comma-separated paths (default: torch-fp32, ort-fp32 and the fast "
                    "CPU path, openvino-bf16 where OpenVINO and a bf16 CPU are here, else "
                    "torch-bf16; on a GPU also torch-cuda-fp32, and trt with --engine)")
    ap.add_argument("--height", type=number(32, 2048, integer=True), default=None,
                    help="input height, pixels, a multiple of 32 (default 288, or the "
                    "--onnx export's)")
    ap.add_argument("--width", type=number(32, 2048, integer=True), default=None,
                    help="input width, pixels, a multiple of 32 (default 512, or the "
                    "--onnx export's)")
    ap.add_argument("--batch", type=number(1, 256, integer=True), default=1,
                    help="clips per call (default 1)")
    ap.add_argument("--keep-rate", type=_rates, default=None,
                    help="keep rate(s) of every pruning block, comma-separated (default: the "
                    "model's own)")
    ap.add_argument("--runs", type=number(1, 1000, integer=True), default=5,
                    help="timed runs per path (default 5)")
    ap.add_argument("--max-warmup", type=number(1, 100, integer=True), default=6,
                    help="most warm-up runs per path (default 6; they stop once two agree "
                    "within 10%%)")
    ap.add_argument("--threads", type=number(0, 1024, integer=True), default=0,
                    help="threads per path (default: one per core)")
    ap.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0,
                    help="seed of the preset's weights and of the clip")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--png", type=Path, default=None,
                    help="write a latency and peak-memory plot (PNG)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(_PROG, lambda: _bench(args))


def _default_paths(args: argparse.Namespace) -> list[str]:
    paths = []
    if args.onnx is None:
        paths.append("torch-fp32")
    paths.append("ort-fp32")
    fast = "openvino-bf16" if openvino_installed() and cpu_has_bf16() else "torch-bf16"
    if fast == "openvino-bf16" or args.onnx is None:
        paths.append(fast)
    if _cuda():
        if args.onnx is None:
            paths.append("torch-cuda-fp32")
        if args.engine is not None:
            paths.append("trt")
    return paths


def _cuda() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except ImportError:  # no torch: no CUDA path
        return False


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "openvino", "tensorrt", "evad-deploy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _bench(args: argparse.Namespace) -> int:
    paths = args.paths or _default_paths(args)
    if args.onnx is not None:
        check_input_file(args.onnx, "ONNX model")
        fixed = tuple(read_metadata(args.onnx)["input_size"])
        given = (args.height or fixed[0], args.width or fixed[1])
        if given != fixed:
            raise ConfigError(f"{args.onnx} was exported for {fixed[0]}x{fixed[1]}; "
                              f"--height/--width ask for {given[0]}x{given[1]}")
    args.height, args.width = args.height or 288, args.width or 512
    if args.keep_rate and "trt" in paths:
        raise ConfigError("--keep-rate cannot apply to the trt path (an engine has its rates "
                          "built in)")
    for p in (args.json, args.png):
        if p is not None:
            check_output_file(p, "--json" if p is args.json else "--png")
    if args.height % 32 or args.width % 32:
        raise ConfigError(f"input size {args.height}x{args.width}: height and width must be "
                          "multiples of 32 (e.g. 288x512)")
    if args.onnx is not None:
        torch_paths = [p for p in paths if PATHS[p].needs == "ckpt"]
        if torch_paths:
            raise ConfigError(f"{', '.join(torch_paths)} need(s) --preset or --ckpt, not --onnx")
        if args.keep_rate:
            raise ConfigError("--keep-rate needs --preset or --ckpt (an ONNX has its rates "
                              "fixed at export)")
    if args.ckpt is not None:
        check_input_file(args.ckpt, "checkpoint")
    if "trt" in paths and args.engine is None:
        raise ConfigError("the trt path needs --engine FILE")
    if args.engine is not None:
        check_input_file(args.engine, "TensorRT engine")
    for p in paths:
        if PATHS[p].device == "cuda" and not _cuda():
            raise ConfigError(f"path {p} needs a CUDA GPU; none is visible here")
        if PATHS[p].backend == "openvino" and not openvino_installed():
            raise ConfigError(f"path {p} needs OpenVINO: pip install 'evad-deploy[openvino]'")
    threads = args.threads or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="evad-bench-"))
    try:
        report = _run(args, paths, threads, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in table(report):
        print(line)
    if args.json is not None:
        write_json_atomic(args.json, report)
    if args.png is not None:
        write_bytes_atomic(args.png, plot_png(report))
    failed = [r for r in report["results"] if r.get("error")]
    return 1 if failed else 0


def _model_preset(args: argparse.Namespace):
    if args.onnx is not None:
        return export_metadata.preset_of(read_metadata(args.onnx))
    if args.ckpt is not None:
        return models.load_checkpoint(args.ckpt)[0].preset
    return get_preset(args.preset)


def _export(args: argparse.Namespace, keep_rate: float | None, work: Path) -> Path:
    overrides = {"keep_rate": keep_rate} if keep_rate else {}
    if args.ckpt is not None:
        model, _ = models.load_checkpoint(args.ckpt, **overrides)
    else:
        torch.manual_seed(args.seed)
        model = models.build_model(args.preset, **overrides).eval().calm()
    t0 = time.perf_counter()
    proto = export.export_onnx(model, args.height, args.width)
    meta = export.build_metadata(model.preset, args.height, args.width, 18,
                                 random_weights=args.ckpt is None)
    write_metadata(proto, meta)
    path = export.save_model(proto, work / f"rho{keep_rate or 'model'}.onnx")
    _log(f"exported the ONNX for keep rate {keep_rate or 'as trained'} in "
         f"{time.perf_counter() - t0:.1f} s")
    return path


class _Child:
    """One path's process."""

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


def _run(args: argparse.Namespace, paths: list[str], threads: int, work: Path) -> dict:
    flops, token_counts = model_flops.flops, model_flops.token_counts
    preset = _model_preset(args)
    rates: list[float | None] = list(args.keep_rate) if args.keep_rate else [None]
    report: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
                    "platform": platform.platform()},
        "versions": _versions(),
        "date": datetime.date.today().isoformat(),
        "model": {"preset": preset.name, "source": str(args.onnx or args.ckpt or "random "
                  f"weights, seed {args.seed} (calmed)"), "height": args.height,
                  "width": args.width, "batch": args.batch},
        "settings": {"runs": args.runs, "max_warmup": args.max_warmup,
                     "warmup_rule": "until two runs in a row agree within 10%",
                     "interleaved": True, "one_process_per_path": True},
        "gemm_gmac_per_s": {}, "results": [],
    }
    try:
        for prec in sorted({_GEMM_PRECISION.get(PATHS[p].precision, PATHS[p].precision)
                            for p in paths if PATHS[p].device == "cpu"}):
            rate = gemm_rate(prec, threads)
            report["gemm_gmac_per_s"][prec] = round(rate, 1)
            _log(f"GEMM rate now, 4608x768 @ 768x3072, {prec}, {threads} threads: "
                 f"{rate:.0f} GMAC/s")
    except ImportError:
        _log("torch not installed: no GEMM yardstick (fraction of peak left out)")
    for rate in rates:
        p = preset.replace(keep_rate=rate) if rate else preset
        gmac = flops(p, args.height, args.width)["total"]
        onnx = args.onnx
        if onnx is None and any(PATHS[x].needs == "onnx" for x in paths):
            _log(f"exporting {preset.name} at {args.height}x{args.width} for the ONNX paths "
                 "(the dynamo exporter takes a while) ...")
            onnx = _export(args, rate, work)
        children: dict[str, _Child] = {}
        results: dict[str, dict[str, Any]] = {}
        try:
            for name in paths:
                cfg = {"path": name, "threads": threads, "batch": args.batch,
                       "height": args.height, "width": args.width, "seed": args.seed,
                       "preset": args.preset, "keep_rate": rate,
                       "ckpt": str(args.ckpt) if args.ckpt else None,
                       "onnx": str(onnx) if onnx else None,
                       "engine": str(args.engine) if args.engine else None}
                res = {"path": name, "backend": PATHS[name].backend,
                       "precision": PATHS[name].precision, "keep_rate": rate or "as trained",
                       "gmac_per_clip": round(gmac, 1),
                       "tokens_model": token_counts(p, args.height, args.width)}
                results[name] = res
                _log(f"{name}: loading ...")
                try:
                    children[name] = _Child(cfg)
                except EvadError as e:
                    res["error"] = str(e)
                    _log(f"{name}: FAILED: {e}")
                    continue
            for name, child in list(children.items()):
                res = results[name]
                warm: list[float] = []
                try:
                    while len(warm) < args.max_warmup and not settle_warmups(warm):
                        warm.append(child.ask("warmup")["seconds"])
                except EvadError as e:
                    res["error"] = str(e)
                    children.pop(name).close()
                    continue
                res["warmup_s"] = [round(x, 4) for x in warm]
                res["warmups"] = len(warm)
                res["settled"] = settle_warmups(warm)
                _log(f"{name}: {len(warm)} warm-up run(s): "
                     + ", ".join(f"{x:.2f}" for x in warm) + " s")
            runs: dict[str, list[float]] = {n: [] for n in children}
            last: dict[str, dict] = {}
            for r in range(args.runs):
                for name, child in list(children.items()):
                    try:
                        msg = child.ask("run")
                    except EvadError as e:
                        results[name]["error"] = str(e)
                        children.pop(name).close()
                        continue
                    runs[name].append(msg["seconds"])
                    last[name] = msg
                _log(f"round {r + 1}/{args.runs}: " + ", ".join(
                    f"{n} {runs[n][-1]:.2f} s" for n in children if runs[n]))
            for name in children:
                res = results[name]
                res.update({k: round(v, 4) for k, v in summarise(runs[name]).items()})
                res["runs_s"] = [round(x, 4) for x in runs[name]]
                res["clips_per_s"] = round(args.batch / res["median_s"], 4)
                res["peak_rss_gb"] = round(last[name]["peak_rss_gb"], 3)
                res["tokens_after_pruning"] = last[name]["tokens_after"]
                res["gmac_per_s"] = round(gmac * args.batch / res["median_s"], 1)
                prec = PATHS[name].precision
                peak = report["gemm_gmac_per_s"].get(_GEMM_PRECISION.get(prec, prec))
                if peak and PATHS[name].device == "cpu":
                    res["fraction_of_gemm_rate"] = round(res["gmac_per_s"] / peak, 3)
        finally:
            for child in children.values():
                child.close()
        report["results"].extend(results.values())
    report["keep_rate_ratios"] = _ratios(report["results"]) if len(rates) > 1 else {}
    return report


#: a path's precision -> the GEMM rate it is a fraction of (int8 weights: bf16 products)
_GEMM_PRECISION = {"bf16-int8w": "bf16"}


def _ratios(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per path: clips/s at each keep rate over clips/s at the first one."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["path"] for r in results):
        rows = [r for r in results if r["path"] == name and "clips_per_s" in r]
        if len(rows) > 1:
            base = rows[0]["clips_per_s"]
            out[name] = {str(r["keep_rate"]): round(r["clips_per_s"] / base, 3) for r in rows}
    return out


def table(report: dict) -> list[str]:
    """The report as a fixed-width table, one row per path and keep rate."""
    m = report["model"]
    lines = [f"evad-bench: {m['preset']} ({m['source']}), {m['height']}x{m['width']}, batch "
             f"{m['batch']}; {report['machine']['cpu']}, {report['machine']['threads']} "
             f"threads; {report['date']}"]
    if report["gemm_gmac_per_s"]:
        lines.append("GEMM rate now: " + ", ".join(
            f"{k} {v:.0f} GMAC/s" for k, v in report["gemm_gmac_per_s"].items()))
    head = (f"{'path':<16}{'keep':>6}{'median s':>10}{'p95 s':>8}{'clips/s':>9}{'peak GB':>9}"
            f"{'GMAC/s':>8}{'of GEMM':>9}{'warm-ups':>10}  tokens (all, after each pruning)")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        keep = r["keep_rate"] if isinstance(r["keep_rate"], str) else f"{r['keep_rate']:g}"
        keep = "model" if keep == "as trained" else keep
        if r.get("error"):
            lines.append(f"{r['path']:<16}{keep:>6}  FAILED: {r['error']}")
            continue
        frac = r.get("fraction_of_gemm_rate")
        tokens = " -> ".join(str(v) for v in [r["tokens_model"][0],
                                              *r["tokens_after_pruning"].values()])
        lines.append(
            f"{r['path']:<16}{keep:>6}{r['median_s']:>10.3f}{r['p95_s']:>8.3f}"
            f"{r['clips_per_s']:>9.3f}{r['peak_rss_gb']:>9.2f}{r['gmac_per_s']:>8.0f}"
            f"{(f'{frac:.0%}' if frac is not None else '-'):>9}{r['warmups']:>10}  {tokens}")
    for name, ratios in report.get("keep_rate_ratios", {}).items():
        lines.append(f"throughput vs keep {next(iter(ratios))}: {name} " + ", ".join(
            f"{k}: {v:.2f}x" for k, v in ratios.items()))
    return lines


def plot_png(report: dict, width: int = 900) -> bytes:
    """Two bar panels (median latency with its p95, peak RSS) per path, as PNG bytes."""
    rows = [r for r in report["results"] if not r.get("error")]
    bar_h, gap, left, top = 26, 10, 230, 60
    panel = len(rows) * (bar_h + gap) + 50
    img = np.full((top + 2 * panel + 20, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    m = report["model"]
    cv2.putText(img, f"evad-bench {m['preset']} {m['height']}x{m['width']} batch {m['batch']}",
                (10, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{report['machine']['cpu'][:60]}, {report['machine']['threads']} threads,"
                f" {report['date']}", (10, 48), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    colours = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]
    for p_i, (key, unit, title) in enumerate((("median_s", "s", "latency per call (median, "
                                               "p95 tick)"),
                                              ("peak_rss_gb", "GB", "peak memory (RSS)"))):
        y0 = top + p_i * panel
        cv2.putText(img, title, (10, y0 + 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        vmax = max([r.get("p95_s", 0) if key == "median_s" else r[key] for r in rows] + [1e-9])
        scale = (width - left - 90) / vmax
        for i, r in enumerate(rows):
            y = y0 + 30 + i * (bar_h + gap)
            keep = r["keep_rate"]
            label = r["path"] + ("" if keep == "as trained" else f" rho {keep:g}")
            cv2.putText(img, label, (10, y + 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            x1 = xt = left + int(r[key] * scale)
            cv2.rectangle(img, (left, y), (x1, y + bar_h), colours[i % len(colours)], -1)
            if key == "median_s":
                xt = max(x1, left + int(r["p95_s"] * scale))
                cv2.line(img, (xt, y - 2), (xt, y + bar_h + 2), (0, 0, 0), 2)
            cv2.putText(img, f"{r[key]:.2f} {unit}", (xt + 8, y + 18), font, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise EvadError("OpenCV could not encode the plot as PNG")
    return buf.tobytes()


if __name__ == "__main__":
    raise SystemExit(main())
