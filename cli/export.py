"""``evad-export``: checkpoint -> ONNX (-> TensorRT engine), parity checked on the way.

It spans three stages (models -> export -> engines), so it lives above them; the engine step
alone is ``evad-build-engine`` (an ONNX made once is never re-exported to get an engine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from evad.engines.builder import build as build_engine
from evad.engines.cli import (
    add_engine_arguments,
    add_precision_arguments,
    engine_batch,
    missing_message,
    precision_of,
)
from evad.errors import ConfigError, EvadError
from evad.export.metadata import build_metadata
from evad.export.onnx_export import DEFAULT_OPSET, export_onnx, save_model, validate_size
from evad.export.parity import compare, seeded_inputs
from evad.metadata import write_metadata
from evad.models import build_model, keep_fraction, load_checkpoint
from evad.models.flops import flops
from evad.runtime.backends import open_runner

__all__ = ["main", "progress"]

_EXPORT_EPILOG = """\
examples:
  evad-export --ckpt vitb_ktp.pth --onnx-only          # ONNX + parity check in ONNX Runtime
  evad-export --ckpt vitb_ktp.pth --keep-rate 0.6      # run a 0.7-trained model at 0.6
  evad-export --ckpt vitb_ktp.pth --fp16               # ... -> TensorRT fp16 engine
  evad-export --preset tiny --onnx-only                # random weights, for trying the tools

The ONNX graph: inputs clip (B, 3, 16, H, W) float32 normalised and zero padded, image_size
(B, 2) int64 unpadded (h, w); outputs boxes (B, n, 4) input pixels, person_scores (B, n),
action_probs (B, n, classes), kept_idx_<block> (B, K) per pruning block. The batch is dynamic.
Custom ops are nodes in domain 'evad' with model-local functions, so plain onnxruntime runs it.
"""


def _log(stage: str, msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"{stage}: {msg}", flush=True)


def progress(items, desc: str, quiet: bool):
    """A clip-loop progress bar (off with ``quiet``)."""
    return tqdm(items, desc=desc, unit="clip", disable=quiet, leave=False)


def _export_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="evad-export", description="Export an EVAD checkpoint to ONNX (and a TensorRT "
        "engine), checking parity against the torch reference on the way.",
        epilog=_EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="checkpoint (.pth/.pyth, the released layout)")
    src.add_argument("--preset", help="export a randomly initialised preset instead (tiny, "
                     "vit_b_ktp, ...), seeded by --seed")
    ap.add_argument("--keep-rate", type=float, default=None,
                    help="override the trained keep rate of every pruning block (0 < r <= 1)")
    ap.add_argument("--height", type=int, default=288, help="input height, multiple of 32 "
                    "(default 288: the released short side)")
    ap.add_argument("--width", type=int, default=512, help="input width, multiple of 32 "
                    "(default 512: 16:9 video at short side 288)")
    ap.add_argument("--out", type=Path, default=Path("exports"), help="output folder "
                    "(default ./exports)")
    ap.add_argument("--name", default=None, help="file stem (default: the checkpoint's)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                    help=f"ONNX opset (default {DEFAULT_OPSET}, >= 17)")
    add_precision_arguments(ap)
    ap.add_argument("--onnx-only", action="store_true", help="stop after the ONNX file")
    add_engine_arguments(ap.add_argument_group("engine step (as evad-build-engine)"))
    ap.add_argument("--parity-clips", type=int, default=1,
                    help="seeded clips for the ONNX Runtime parity check (0 skips it)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --preset weights and clips")
    ap.add_argument("--quiet", action="store_true", help="only errors and the summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _export_parser().parse_args(argv)
    try:
        return _export(args)
    except (EvadError, OSError) as e:
        print(f"evad-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evad-export: interrupted; nothing half-written was left", file=sys.stderr)
        return 130


def _export(args: argparse.Namespace) -> int:
    # Validate everything cheap before any slow work.
    validate_size(args.height, args.width)
    if args.keep_rate is not None:
        keep_fraction(args.keep_rate)
    if args.ckpt is not None and not args.ckpt.is_file():
        raise EvadError(f"checkpoint {args.ckpt} does not exist")
    if args.parity_clips < 0:
        raise ConfigError("--parity-clips must be >= 0")
    batch = engine_batch(args.engine_batch)
    precision = precision_of(args)
    q = args.quiet
    t0 = time.perf_counter()
    if args.ckpt is not None:
        model, meta = load_checkpoint(args.ckpt, keep_rate=args.keep_rate)
        sha, stem = meta["sha256"], args.ckpt.stem
        _log("export", f"loaded {args.ckpt} ({meta['preset_source']}: preset "
             f"{meta['preset'].name}, trained keep rates {meta['trained_keep_rates'] or 'none'})"
             f" in {time.perf_counter() - t0:.1f} s", q)
    else:
        torch.manual_seed(args.seed)
        model = build_model(args.preset, keep_rate=args.keep_rate).eval().calm()
        sha, stem = None, f"{args.preset}_random{args.seed}"
        _log("export", f"preset {args.preset} with RANDOM weights (seed {args.seed}, calmed: "
             "see EVAD.calm)", q)
    p = model.preset
    f = flops(p, args.height, args.width)
    out = args.out / f"{args.name or stem}.onnx"
    meta = build_metadata(p, args.height, args.width, args.opset, checkpoint_sha256=sha,
                          precision=precision,
                          exporter=f"torch.onnx dynamo (torch {torch.__version__})")
    if args.ckpt is None:
        meta["random_seed"] = args.seed
    rates = ", ".join(f"{r} at block {b}" for b, r in sorted(p.keep_rates.items())) or "none"
    _log("export", f"input {args.height}x{args.width}, keep {rates}, tokens "
         f"{' -> '.join(map(str, meta['tokens']))}, {f['total']:.1f} GFLOPs/clip", q)

    t1 = time.perf_counter()
    _log("export", "tracing and converting (the dynamo exporter takes a while) ...", q)
    proto = export_onnx(model, args.height, args.width, args.opset)
    write_metadata(proto, meta)
    save_model(proto, out)
    size_mb = sum(x.stat().st_size for x in out.parent.glob(out.name + "*")) / 1e6
    export_s = time.perf_counter() - t1
    _log("export", f"wrote {out} ({size_mb:.1f} MB, opset {args.opset}) in {export_s:.1f} s", q)

    report = None
    if args.parity_clips:
        ort_model, _ = open_runner("ort", onnx=out, cuda=False)
        clips, sizes = seeded_inputs(args.parity_clips, 1, p.num_frames, args.height,
                                     args.width, args.seed)
        report = compare(model, ort_model, clips, sizes,
                         progress=lambda xs: progress(xs, "parity", q))
        for line in report.lines():
            _log("parity", f"ORT CPU vs torch fp32: {line}", q)
        _log("parity", "PASS" if report.passed else "FAIL", q)

    engine_msg = None
    engine_path = None
    if not args.onnx_only:
        missing = missing_message(precision)
        if missing:
            flag = "" if precision == "fp32" else f" --{precision}"
            engine_msg = (f"not built: {missing}. The ONNX is written ({out}); on a machine with "
                          f"a GPU and TensorRT run: evad-build-engine {out}{flag}")
            _log("engine", engine_msg, False)
        else:
            engine_path = build_engine(out, precision=precision, batch=batch,
                                       timing_cache=args.timing_cache or args.out
                                       / "timing.cache", plugins=args.plugins,
                                       workspace_gib=args.workspace,
                                       log=lambda m: _log("engine", m, q))

    print(f"\nsummary: {out}\n  preset {p.name}, classes {p.num_classes}, input "
          f"{args.height}x{args.width}, tokens {' -> '.join(map(str, meta['tokens']))}, "
          f"{f['total']:.1f} GFLOPs/clip, export {export_s:.1f} s"
          + (f"\n  parity (ORT CPU, {report.clips} clip): "
             f"{'PASS' if report.passed else 'FAIL'}, boxes {report.box_max_abs:.1e} px, "
             f"probs {report.prob_max_abs:.1e}" if report else "")
          + (f"\n  engine: {precision}, not built" if engine_msg else "")
          + (f"\n  engine: {engine_path} ({precision})" if engine_path else ""))
    if report is not None and not report.passed:
        return 1
    return 3 if engine_msg else 0


if __name__ == "__main__":
    raise SystemExit(main())
