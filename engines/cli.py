"""``evad-build-engine``: an exported ONNX file -> a TensorRT engine (+ its ``.engine.json``),
without re-exporting: build as many engines (precisions, batch profiles, GPUs) from one ONNX as
you need."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from evad.command import ArgumentParser, check_input_file, check_output_file, number, run_command
from evad.engines.environment import missing_for_engine_build
from evad.errors import ConfigError, EvadError
from evad.lazy import lazy_import
from evad.runner import ENGINE_PRECISIONS

if TYPE_CHECKING:
    from evad.engines import builder
else:
    # the builder brings onnx (and TensorRT on use): loaded once the input file and the flags
    # passed, so a missing ONNX is refused before any of it (evad-export shares these helpers)
    builder = lazy_import("evad.engines.builder", "pip install onnx")

__all__ = ["add_engine_arguments", "add_precision_arguments", "engine_batch", "main",
           "missing_message", "precision_of"]

_PROG = "evad-build-engine"
_EPILOG = """\
examples:
  evad-build-engine exports/vitb_ktp.onnx --fp16                # -> exports/vitb_ktp.engine
  evad-build-engine exports/vitb_ktp.onnx --engine-batch 1,4,16 --out vitb_b16.engine
  evad-build-engine exports/vitb_ktp.onnx --plugins python      # the Python plugins (Triton)

Needs the full TensorRT (builder + ONNX parser) and a CUDA GPU; the engine is tied to that GPU
model and TensorRT version, which its .engine.json records (runners refuse a mismatch). The
evad nodes bind the evad plugins (evad-build-plugins builds the C++ ones). On TensorRT 11
(strongly typed) --fp16 / --bf16 build from a mixed-precision copy of the graph: LayerNorm,
softmax, reductions, TopK and the evad plugins stay fp32. Before TensorRT sees a graph it must
pass strict ONNX type inference and hold no TopK beyond TensorRT's K <= 3840; otherwise the
build is refused in one line naming the node.
"""


def engine_batch(text: str) -> tuple[int, int, int]:
    """``"1,2,8"`` -> (1, 2, 8); ConfigError unless 1 <= min <= opt <= max."""
    try:
        lo, opt, hi = (int(x) for x in text.split(","))
    except ValueError as e:
        raise ConfigError(f"--engine-batch {text!r}: give MIN,OPT,MAX, e.g. 1,1,8") from e
    return builder.check_batch_profile((lo, opt, hi), f"--engine-batch {text!r}")


def missing_message(precision: str) -> str | None:
    """What this machine lacks for a ``precision`` engine, as one sentence; None when nothing
    required is missing (the C++ plugin library is optional: the Python plugins serve)."""
    missing = [m for m in missing_for_engine_build() if not m.optional]
    if not missing:
        return None
    return f"the {precision} TensorRT engine step needs " + "; ".join(map(str, missing))


#: what each engine precision flag says in --help (the flags are the backend table's engine
#: precisions, ``evad.runner.ENGINE_PRECISIONS``, fp32 being the default)
_PRECISION_HELP = {"tf32": "let MatMul/Conv use TF32 (off by default: an fp32 engine is true "
                   "fp32)", "fp16": "fp16 engine", "bf16": "bf16 engine"}


def add_precision_arguments(ap: argparse.ArgumentParser) -> None:
    """One flag per engine precision but the default fp32: ``--tf32`` / ``--fp16`` /
    ``--bf16`` (default: true fp32, TF32 off), shared with ``evad-export``."""
    prec = ap.add_mutually_exclusive_group()
    for p in ENGINE_PRECISIONS[1:]:
        prec.add_argument(f"--{p}", action="store_true",
                          help=_PRECISION_HELP.get(p, f"{p} engine"))


def precision_of(args: argparse.Namespace) -> str:
    """The precision the flags of :func:`add_precision_arguments` ask for."""
    return next((p for p in ENGINE_PRECISIONS[1:] if getattr(args, p)), ENGINE_PRECISIONS[0])


def add_engine_arguments(ap: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The engine options shared with ``evad-export``."""
    ap.add_argument("--engine-batch", default="1,1,8", metavar="MIN,OPT,MAX",
                    help="optimisation profile, clips per run (default 1,1,8)")
    ap.add_argument("--plugins", choices=["cpp", "python"], default=None,
                    help="TensorRT plugins to bind (default cpp, python when libevad_plugins.so "
                    "is missing)")
    ap.add_argument("--timing-cache", type=Path, default=None,
                    help="TensorRT timing cache, reused across builds (default timing.cache "
                    "beside the engine)")
    ap.add_argument("--workspace", type=number(0, 1024, lo_open=True), default=4.0, metavar="GIB",
                    help="builder workspace limit, GiB (default 4)")


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Build a TensorRT engine from an ONNX model exported by "
        "evad-export.", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path, help="the .onnx from evad-export")
    add_precision_arguments(ap)
    ap.add_argument("--out", type=Path, default=None,
                    help="engine path (default: the ONNX path with .engine)")
    add_engine_arguments(ap)
    ap.add_argument("--quiet", action="store_true", help="only errors and the summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    precision = precision_of(args)

    def body() -> int:
        # the files first: they need no import (the batch check loads the builder and onnx)
        check_input_file(args.onnx, "ONNX model")
        out = args.out or args.onnx.with_suffix(".engine")
        check_output_file(out, "--out")
        batch = engine_batch(args.engine_batch)
        missing = missing_message(precision)
        if missing:
            raise EvadError(missing)
        path = builder.build(args.onnx, precision=precision, batch=batch,
                             timing_cache=args.timing_cache or out.parent / "timing.cache",
                             plugins=args.plugins, out=out, workspace_gib=args.workspace,
                             log=(lambda m: None) if args.quiet
                             else (lambda m: print(f"engine: {m}")))
        print(f"{_PROG}: {path} ({precision})")
        return 0

    return run_command(_PROG, body, interrupted=lambda: "interrupted; no engine was written")
