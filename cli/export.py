"""``evad-export``: checkpoint -> ONNX (-> TensorRT engine), parity checked on the way.

It spans three stages (models -> export -> engines), so it lives above them; the engine step
alone is ``evad-build-engine`` (an ONNX made once is never re-exported to get an engine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from evad.command import (
    ArgumentParser,
    check_input_file,
    check_name,
    check_output_dir,
    number,
    run_command,
)
from evad.engines.cli import (
    add_engine_arguments,
    add_precision_arguments,
    engine_batch,
    missing_message,
    precision_of,
)
from evad.errors import ConfigError, EvadError
from evad.export.exporter import Exporter, ParityCheck
from evad.export.int8 import (
    DEFAULT_CLIPS,
    MIN_CLIPS,
    Calibration,
    plan_calibration,
    require_quantizer,
)
from evad.export.sizes import DEFAULT_OPSET, MAX_SIDE, validate_size
from evad.lazy import lazy_import
from evad.models.presets import PRESETS
from evad.plugins import library_path
from evad.runner import Runner
from evad.runtime.backends import open_runner
from evad.runtime.calibration import calibration_clips
from evad.serving.triton_repo import write_repository

if TYPE_CHECKING:
    from evad.engines import builder
else:
    # onnx and TensorRT load only once the cheap checks passed (and torch only in the
    # exporter): a missing checkpoint or a machine without TensorRT is refused in a fraction of
    # a second
    builder = lazy_import("evad.engines.builder", "pip install onnx")

__all__ = ["main"]

_EXPORT_EPILOG = """\
examples:
  evad-export --ckpt vitb_ktp.pth --onnx-only          # ONNX + parity check in ONNX Runtime
  evad-export --ckpt vitb_ktp.pth --keep-rate 0.6      # run a 0.7-trained model at 0.6
  evad-export --ckpt vitb_ktp.pth --fp16               # ... -> TensorRT fp16 engine
  evad-export --preset tiny --onnx-only                # random weights, for trying the tools
  evad-export --ckpt vitb_ktp.pth --onnx-only --int8 --calib videos/   # + calibrated INT8 ONNX
  evad-export --ckpt vitb_ktp.pth --fp16 --triton triton_repo   # ... + a Triton repository

The ONNX graph: inputs clip (B, 3, 16, H, W) float32 normalised and zero padded, image_size
(B, 2) int64 unpadded (h, w); outputs boxes (B, n, 4) input pixels, person_scores (B, n),
action_probs (B, n, classes), kept_idx_<block> (B, K) per pruning block. The batch is dynamic.
Custom ops are nodes in domain 'evad' with model-local functions, so plain onnxruntime runs it.
"""


_T0 = [time.perf_counter()]  # the command's start, for the elapsed time on each stage line


def _log(stage: str, msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[{time.perf_counter() - _T0[0]:6.1f} s] {stage}: {msg}", flush=True)


def _export_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="evad-export", description="Export an EVAD checkpoint to ONNX (and a TensorRT "
        "engine), checking parity against the torch reference on the way.",
        epilog=_EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="checkpoint (.pth/.pyth, the released layout)")
    src.add_argument("--preset", choices=list(PRESETS), help="export a randomly initialised "
                     "preset instead, seeded by --seed")
    ap.add_argument("--keep-rate", type=number(0, 1, lo_open=True), default=None,
                    help="override the trained keep rate of every pruning block (0 < r <= 1)")
    ap.add_argument("--height", type=number(32, MAX_SIDE, integer=True), default=288,
                    help="input height, multiple of 32 (default 288: the released short side)")
    ap.add_argument("--width", type=number(32, MAX_SIDE, integer=True), default=512,
                    help="input width, multiple of 32 (default 512: 16:9 video at short side "
                    "288)")
    ap.add_argument("--out", type=Path, default=Path("exports"), help="output folder "
                    "(default ./exports)")
    ap.add_argument("--name", default=None, help="file stem (default: the checkpoint's)")
    ap.add_argument("--opset", type=number(17, 99, integer=True), default=DEFAULT_OPSET,
                    help=f"ONNX opset (default {DEFAULT_OPSET}, >= 17)")
    add_precision_arguments(ap)
    ap.add_argument("--onnx-only", action="store_true", help="stop after the ONNX file")
    q = ap.add_argument_group("calibrated INT8 (ONNX Runtime / OpenVINO on the CPU, "
                              "--precision int8)")
    q.add_argument("--int8", action="store_true", help="also write <name>.int8.onnx: the "
                   "export as explicit Q/DQ INT8 (NNCF: pip install 'evad-deploy[int8]'), "
                   "calibrated on --calib; needs --onnx-only, memory about 13x the fp32 ONNX's "
                   "size (measured at 288x512) and, while it calibrates, as much "
                   "disk again as that ONNX in the output's folder")
    q.add_argument("--calib", type=Path, default=None, metavar="DATA", help="calibration data: "
                   "a folder of videos (a clip each second) or an AVA-format dataset (its "
                   "annotated keyframes; evad-train --make-data makes one)")
    q.add_argument("--calib-clips", type=number(MIN_CLIPS, 100000, integer=True),
                   default=DEFAULT_CLIPS, metavar="N", help=f"calibration clips, spread evenly "
                   f"over DATA (default {DEFAULT_CLIPS}, at least {MIN_CLIPS}); read twice, "
                   "decoded each time, so memory does not grow with N")
    add_engine_arguments(ap.add_argument_group("engine step (as evad-build-engine)"))
    ap.add_argument("--parity-clips", type=number(0, 1000, integer=True), default=1,
                    help="seeded clips for the ONNX Runtime parity check (0 skips it); the "
                    "ONNX is kept only if it passes")
    ap.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0,
                    help="seed of --preset weights and clips")
    ap.add_argument("--triton", type=Path, default=None, metavar="DIR",
                    help="also write a Triton Inference Server model repository (as "
                    "evad-triton-repo: the ONNX, the engine with its plugin library, the evad "
                    "Python-backend model)")
    ap.add_argument("--quiet", action="store_true", help="only errors and the summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _export_parser().parse_args(argv)
    return run_command("evad-export", lambda: _export(args),
                       interrupted=lambda: "interrupted; nothing half-written was left")


def _export(args: argparse.Namespace) -> int:
    # Everything cheap that can refuse the command runs before any slow work.
    validate_size(args.height, args.width)
    if args.ckpt is not None:
        check_input_file(args.ckpt, "checkpoint")
    if args.name is not None:
        check_name(args.name, "--name")
    check_output_dir(args.out, "--out")
    if args.triton is not None:
        if args.triton.exists():
            raise ConfigError(f"--triton {args.triton} exists: remove it or name a new folder")
        if not args.onnx_only and args.plugins == "python":
            raise ConfigError("--triton serves the engine with the C++ plugin library; build "
                              "it with --plugins cpp (or pass --onnx-only)")
        check_output_dir(args.triton, "--triton")
    batch = engine_batch(args.engine_batch)
    precision = precision_of(args)
    plan = None
    if args.int8 or args.calib is not None:
        if args.calib is None or not args.int8:
            raise ConfigError("--int8 and --calib DATA go together: --int8 --calib DATA writes "
                              "the calibrated INT8 ONNX")
        if not args.onnx_only:
            raise ConfigError("--int8 makes an INT8 ONNX for ONNX Runtime and OpenVINO on the "
                              "CPU; an INT8 TensorRT engine is not built yet: add --onnx-only")
        plan = plan_calibration(args.calib, args.calib_clips)  # bad data: refused here
        require_quantizer()
    if not args.onnx_only:
        missing = missing_message(precision)
        if missing:
            flag = "" if precision == "fp32" else f" --{precision}"
            raise EvadError(f"{missing}. Export the ONNX now with --onnx-only, and build the "
                            f"engine later on a machine with a GPU and TensorRT: "
                            f"evad-build-engine <out>/<name>.onnx{flag}")
    stem = args.ckpt.stem if args.ckpt is not None else f"{args.preset}_random{args.seed}"
    name = check_name(args.name or stem, "the file name")
    out = args.out / f"{name}.onnx"
    q = args.quiet
    _T0[0] = time.perf_counter()
    check = ParityCheck(args.parity_clips, args.seed, _open_ort) if args.parity_clips else None
    exporter = Exporter(args.height, args.width, made_by="evad-export", opset=args.opset,
                        precision=precision, parity=check, progress=not q,
                        calibration=Calibration(plan, calibration_clips) if plan else None,
                        log=lambda step, m: _log(step, m, q))
    done = exporter(out, ckpt=args.ckpt, preset=args.preset, seed=args.seed,
                    keep_rate=args.keep_rate)
    if not done.written:
        print(f"evad-export: error: the ONNX failed parity against torch (figures above), so "
              f"{out} was not written; export with --parity-clips 0 to keep it, then inspect "
              f"it with evad-parity --onnx {out}", file=sys.stderr)
        return 1

    engine_path = None
    if not args.onnx_only:
        engine_path = builder.build(out, precision=precision, batch=batch,
                                   timing_cache=args.timing_cache or args.out / "timing.cache",
                                   plugins=args.plugins, workspace_gib=args.workspace,
                                   log=lambda m: _log("engine", m, q))

    repo = None
    if args.triton is not None:
        repo = write_repository(args.triton, out, engine=engine_path,
                                plugins=library_path() if engine_path else None)
        _log("triton", f"wrote the model repository {repo} (serve it with sh "
             f"{repo / 'launch.sh'})", q)

    p, report = done.preset, done.report
    label = check.label if check is not None else ""
    tokens = " -> ".join(map(str, done.meta["tokens"]))
    print(f"\nsummary: {out}\n  preset {p.name}, classes {p.num_classes}, input "
          f"{args.height}x{args.width} (H x W), tokens {tokens}, "
          f"{done.gflops:.1f} GFLOPs/clip, export {done.export_s:.1f} s"
          + (f"\n  parity ({label}, {report.clips} clip): PASS; from the float64 oracle, as a "
             "ratio to torch fp32's own error: "
             + ", ".join(f"{o} {e.backend_max:.1e} ({e.ratio:.2g}x)"
                         for o, e in report.oracle.items())
             + f"; {out.with_suffix('.parity.json')}" if report else "")
          + (f"\n  int8: {done.int8_path} (Q/DQ, calibrated on {plan.clips} clips of "
             f"{plan.data}; run it with --precision int8)" if done.int8_path and plan else "")
          + (f"\n  engine: {engine_path} ({precision})" if engine_path else "")
          + (f"\n  triton repository: {repo}" if repo else ""))
    return 0


def _open_ort(onnx: Path) -> Runner:
    """The staged ONNX in ONNX Runtime on the CPU, for the exporter's parity step."""
    return open_runner("ort", onnx=onnx, cuda=False)[0]


if __name__ == "__main__":
    raise SystemExit(main())
