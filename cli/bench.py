"""``evad-bench``: how fast each backend and precision runs one EVAD model on this machine.

Each path (a backend at a precision) runs in a process of its own (``evad.runtime.benchmark``),
so its peak memory is its own; warm-up runs repeat until two in a row agree within 10 %; the
timed runs are interleaved (one run of every path per round). Reported per path: median and p95
latency, clips/s at the batch size, peak RSS, the achieved GMAC/s and its fraction of this
machine's GEMM rate measured on the spot at that precision, and the tokens after each pruning
block. A keep-rate sweep (``--keep-rate 1.0,0.7``) repeats it per rate and prints each path's
throughput ratio against the first rate (the paper's rho 1.0 vs 0.7 claim, checked here).

This module is the command: its flags and their checks, and the export of the ONNX paths'
model; the measurement is ``evad.runtime.benchmark.run_benchmark``, the table and the plot
``evad.runtime.bench_report``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from evad.atomic import write_bytes_atomic, write_json_atomic
from evad.command import (
    ArgumentParser,
    check_input_file,
    check_output_file,
    number,
    run_command,
)
from evad.errors import ConfigError
from evad.export.exporter import Exporter
from evad.export.openvino_runner import cpu_has_bf16
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.models.presets import Preset, get_preset
from evad.runtime.backends import openvino_installed
from evad.runtime.bench_report import plot_png, table
from evad.runtime.benchmark import PATHS, BenchSettings, run_benchmark

if TYPE_CHECKING:
    import torch

    from evad import models
    from evad.export import metadata as export_metadata
else:  # --help, and --onnx paths, need no torch
    torch = lazy_import("torch", "pip install torch")
    models = lazy_import("evad.models", "pip install torch")
    export_metadata = lazy_import("evad.export.metadata", "pip install torch")

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
  evad-bench --preset vit_b_ktp --int8-onnx exports/vit_b_ktp_random0.int8.onnx
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
    ap.add_argument("--int8-onnx", type=Path, default=None,
                    help="the same model's calibrated INT8 export (evad-export --onnx-only "
                    "--int8 --calib DATA), run by the int8 paths (openvino-int8, ort-int8; "
                    "openvino-int8 joins the default paths), timed against the int8 GEMM rate")
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
    if args.int8_onnx is not None and openvino_installed():
        paths.append("openvino-int8")
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


def _bench(args: argparse.Namespace) -> int:
    # the named files first: a typo is refused before the default paths ask torch for a GPU
    for path, what in ((args.onnx, "ONNX model"), (args.ckpt, "checkpoint"),
                       (args.engine, "TensorRT engine"), (args.int8_onnx, "INT8 ONNX model")):
        if path is not None:
            check_input_file(path, what)
    paths = args.paths or _default_paths(args)
    if args.onnx is not None:
        fixed = tuple(read_metadata(args.onnx)["input_size"])
        given = (args.height or fixed[0], args.width or fixed[1])
        if given != fixed:
            raise ConfigError(f"{args.onnx} was exported for {fixed[0]}x{fixed[1]}; "
                              f"--height/--width ask for {given[0]}x{given[1]}")
        args.height, args.width = given  # the export's own size unless asked
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
    if "trt" in paths and args.engine is None:
        raise ConfigError("the trt path needs --engine FILE")
    _check_int8(args, paths)
    for p in paths:
        if PATHS[p].device == "cuda" and not _cuda():
            raise ConfigError(f"path {p} needs a CUDA GPU; none is visible here")
        if PATHS[p].backend == "openvino" and not openvino_installed():
            raise ConfigError(f"path {p} needs OpenVINO: pip install 'evad-deploy[openvino]'")
    settings = BenchSettings(
        paths=tuple(paths), height=args.height, width=args.width, batch=args.batch,
        runs=args.runs, max_warmup=args.max_warmup,
        threads=args.threads or os.cpu_count() or 1, seed=args.seed,
        keep_rates=tuple(args.keep_rate or ()), preset=args.preset, ckpt=args.ckpt,
        onnx=args.onnx, engine=args.engine, int8_onnx=args.int8_onnx)
    work = Path(tempfile.mkdtemp(prefix="evad-bench-"))
    try:
        report = run_benchmark(settings, _model_preset(args),
                               lambda rate: _export(args, rate, work), _log)
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


def _check_int8(args: argparse.Namespace, paths: list[str]) -> None:
    """The int8 paths and --int8-onnx go together, and the file is the INT8 export of the
    model benchmarked, at its size (one line each, before any path starts)."""
    int8 = [p for p in paths if PATHS[p].precision == "int8"]
    if int8 and args.int8_onnx is None:
        raise ConfigError(f"{', '.join(int8)} need(s) --int8-onnx FILE, the calibrated INT8 "
                          "export (evad-export --onnx-only --int8 --calib DATA)")
    if args.int8_onnx is None:
        return
    meta = read_metadata(args.int8_onnx)
    if meta.get("precision") != "int8":
        raise ConfigError(f"{args.int8_onnx} is not an INT8 export (evad-export --onnx-only "
                          "--int8 --calib DATA writes <name>.int8.onnx)")
    size = tuple(meta["input_size"])
    if size != (args.height, args.width):
        raise ConfigError(f"{args.int8_onnx} was exported for {size[0]}x{size[1]}; the "
                          f"benchmark runs {args.height}x{args.width}")
    preset, model = export_metadata.preset_of(meta).name, _model_preset(args).name
    if preset != model:
        raise ConfigError(f"{args.int8_onnx} is a {preset} export; the benchmark's model is "
                          f"{model}")
    if args.keep_rate:
        raise ConfigError("--keep-rate cannot apply to --int8-onnx (an export has its rates "
                          "fixed)")


def _model_preset(args: argparse.Namespace) -> Preset:
    """The preset of the model benchmarked: the --onnx export's, the --ckpt's or --preset."""
    if args.onnx is not None:
        return export_metadata.preset_of(read_metadata(args.onnx))
    if args.ckpt is not None:
        return models.load_or_build(args.ckpt)[1]["preset"]
    return get_preset(args.preset)


def _export(args: argparse.Namespace, keep_rate: float | None, work: Path) -> Path:
    """The ONNX paths' model: the checkpoint or the preset (seeded by --seed) at ``keep_rate``
    (None: as trained), exported at --height x --width into ``work`` by the one exporter."""
    t0 = time.perf_counter()
    done = Exporter(args.height, args.width, made_by=_PROG)(
        work / f"rho{keep_rate or 'model'}.onnx", ckpt=args.ckpt, preset=args.preset,
        seed=args.seed, keep_rate=keep_rate or None)
    _log(f"exported the ONNX for keep rate {keep_rate or 'as trained'} in "
         f"{time.perf_counter() - t0:.1f} s")
    return done.path


if __name__ == "__main__":
    raise SystemExit(main())
