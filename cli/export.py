"""``evad-export``: checkpoint -> ONNX (-> TensorRT engine), parity checked on the way.

It spans three stages (models -> export -> engines), so it lives above them; the engine step
alone is ``evad-build-engine`` (an ONNX made once is never re-exported to get an engine).
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

from tqdm import tqdm

from evad.atomic import write_json_atomic
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
from evad.export.sizes import DEFAULT_OPSET, MAX_SIDE, validate_size
from evad.lazy import lazy_import
from evad.metadata import write_metadata
from evad.models.presets import PRESETS
from evad.plugins import library_path
from evad.runtime.backends import open_runner
from evad.serving.triton_repo import write_repository

if TYPE_CHECKING:
    import torch

    from evad import models
    from evad.engines import builder
    from evad.export import metadata as export_metadata
    from evad.export import onnx_export, parity
    from evad.models import flops
else:
    # torch, onnx and the exporter load only once the cheap checks passed: a missing
    # checkpoint or a machine without TensorRT is refused in a fraction of a second
    torch = lazy_import("torch", "pip install torch")
    models = lazy_import("evad.models", "pip install torch")
    flops = lazy_import("evad.models.flops", "pip install torch")
    builder = lazy_import("evad.engines.builder", "pip install onnx")
    export_metadata = lazy_import("evad.export.metadata", "pip install torch")
    onnx_export = lazy_import("evad.export.onnx_export", "pip install torch onnx onnxscript")
    parity = lazy_import("evad.export.parity", "pip install torch")

__all__ = ["ParityBar", "main"]

_EXPORT_EPILOG = """\
examples:
  evad-export --ckpt vitb_ktp.pth --onnx-only          # ONNX + parity check in ONNX Runtime
  evad-export --ckpt vitb_ktp.pth --keep-rate 0.6      # run a 0.7-trained model at 0.6
  evad-export --ckpt vitb_ktp.pth --fp16               # ... -> TensorRT fp16 engine
  evad-export --preset tiny --onnx-only                # random weights, for trying the tools
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


class ParityBar:
    """The parity progress bar: two steps per clip (the backend's run, then torch's), so it
    moves within a clip; use as ``compare(..., progress=bar.step)`` inside ``with``."""

    def __init__(self, clips: int, what: str, quiet: bool) -> None:
        self.bar = tqdm(total=2 * clips, desc="parity", unit="run", disable=quiet, leave=False)
        self.what = what
        self.bar.set_postfix_str(f"{what} on clip 1")

    def step(self, done: str) -> None:
        self.bar.update(1)
        clip = self.bar.n // 2 + 1
        nxt = "torch (forced to its decisions)" if done == "backend" else self.what
        if self.bar.n < self.bar.total:
            self.bar.set_postfix_str(f"{nxt} on clip {clip}")

    def __enter__(self) -> ParityBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


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


def _memory_check(p, height: int, width: int) -> None:
    """Refuse an input size whose attention alone would not fit in this machine's memory (the
    exporter and the parity run hold a (heads, N, N) score matrix per block)."""
    n = flops.token_counts(p, height, width)[0]
    need = 3 * 4 * max(p.num_heads, 1) * n * n  # scores, softmax, one copy; float32
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ConfigError(f"input {height}x{width} gives {n} tokens; one attention block needs "
                          f"about {need / 2**30:.0f} GiB and this machine has "
                          f"{have / 2**30:.0f} GiB: use a smaller --height/--width")


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
    if not args.onnx_only:
        missing = missing_message(precision)
        if missing:
            flag = "" if precision == "fp32" else f" --{precision}"
            raise EvadError(f"{missing}. Export the ONNX now with --onnx-only, and build the "
                            f"engine later on a machine with a GPU and TensorRT: "
                            f"evad-build-engine <out>/<name>.onnx{flag}")
    q = args.quiet
    t0 = _T0[0] = time.perf_counter()
    _log("export", f"loading {args.ckpt} ..." if args.ckpt is not None else
         f"building preset {args.preset} ...", q)
    if args.ckpt is not None:
        model, meta = models.load_checkpoint(args.ckpt, keep_rate=args.keep_rate)
        sha, stem = meta["sha256"], args.ckpt.stem
        _log("export", f"loaded {args.ckpt} ({meta['preset_source']}: preset "
             f"{meta['preset'].name}, weights {meta['dtype']}, trained keep rates "
             f"{meta['trained_keep_rates'] or 'none'}) in {time.perf_counter() - t0:.1f} s", q)
    else:
        torch.manual_seed(args.seed)
        model = models.build_model(args.preset, keep_rate=args.keep_rate).eval().calm()
        sha, stem = None, f"{args.preset}_random{args.seed}"
        _log("export", f"preset {args.preset} with RANDOM weights (seed {args.seed}, calmed: "
             "see EVAD.calm)", q)
    p = model.preset
    _memory_check(p, args.height, args.width)
    f = flops.flops(p, args.height, args.width)
    name = check_name(args.name or stem, "the file name")
    out = args.out / f"{name}.onnx"
    meta = export_metadata.build_metadata(
        p, args.height, args.width, args.opset, checkpoint_sha256=sha, precision=precision,
        exporter=f"torch.onnx dynamo (torch {torch.__version__})",
        random_weights=args.ckpt is None)
    if args.ckpt is None:
        meta["random_seed"] = args.seed
    rates = ", ".join(f"{r} at block {b}" for b, r in sorted(p.keep_rates.items())) or "none"
    _log("export", f"input {args.height}x{args.width} (H x W), keep {rates}, tokens (all, then "
         "after each pruning block) "
         f"{' -> '.join(map(str, meta['tokens']))}, {f['total']:.1f} GFLOPs/clip", q)

    t1 = time.perf_counter()
    _log("export", "trace (torch.export) and translate to ONNX: the dynamo exporter takes a "
         "while ...", q)
    proto = onnx_export.export_onnx(model, args.height, args.width, args.opset,
                        log=lambda m: _log("export", m, q))
    write_metadata(proto, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    # The ONNX is written into a staging folder and moved into place only once it passed
    # parity: a failed or interrupted export leaves no file that looks like a good one.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.export.", dir=args.out))
    try:
        staged = onnx_export.save_model(proto, staging / out.name)
        del proto
        size_mb = sum(x.stat().st_size for x in staging.iterdir()) / 1e6
        export_s = time.perf_counter() - t1
        _log("export", f"wrote {out} ({size_mb:.1f} MB, opset {args.opset}) in {export_s:.1f} s",
             q)

        report = None
        if args.parity_clips:
            ort_model, _ = open_runner("ort", onnx=staged, cuda=False)
            clips, sizes = parity.seeded_inputs(args.parity_clips, 1, p.num_frames, args.height,
                                         args.width, args.seed)
            with ParityBar(len(clips), "ONNX Runtime", q) as bar:
                report = parity.compare(model, ort_model, clips, sizes, progress=bar.step)
            del ort_model
            for line in report.lines():
                _log("parity", f"ORT CPU vs torch fp32: {line}", q)
            _log("parity", "PASS" if report.passed else "FAIL", q)
            if report.passed:  # beside the ONNX, moved into place with it
                write_json_atomic(staging / f"{name}.parity.json", {
                    "backend": "onnxruntime (CPU)", "reference": "torch fp32, forced to the "
                    "backend's kept tokens; oracle: the same in float64", "clips": len(clips),
                    "clip_seed": args.seed, "input_size": [args.height, args.width],
                    **report.to_dict()})
            if not report.passed:
                print(f"evad-export: error: the ONNX failed parity against torch (figures "
                      f"above), so {out} was not written; export with --parity-clips 0 to keep "
                      f"it, then inspect it with evad-parity --onnx {out}", file=sys.stderr)
                return 1
        for x in staging.iterdir():  # the .onnx last: its .data is in place before it
            if x.name != out.name:
                os.replace(x, args.out / x.name)
        os.replace(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

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

    print(f"\nsummary: {out}\n  preset {p.name}, classes {p.num_classes}, input "
          f"{args.height}x{args.width} (H x W), tokens {' -> '.join(map(str, meta['tokens']))}, "
          f"{f['total']:.1f} GFLOPs/clip, export {export_s:.1f} s"
          + (f"\n  parity (ORT CPU, {report.clips} clip): PASS; from the float64 oracle, as a "
             "ratio to torch fp32's own error: "
             + ", ".join(f"{o} {e.backend_max:.1e} ({e.ratio:.2g}x)"
                         for o, e in report.oracle.items())
             + f"; {out.with_suffix('.parity.json')}" if report else "")
          + (f"\n  engine: {engine_path} ({precision})" if engine_path else "")
          + (f"\n  triton repository: {repo}" if repo else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
