"""``evad-parity``: an exported ONNX model (ONNX Runtime) or a TensorRT engine against the
torch reference, on seeded clips, under the parity rules of ``docs/design.md``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from evad.atomic import write_json_atomic
from evad.cli.export import ParityBar
from evad.command import ArgumentParser, check_input_file, check_output_file, number, run_command
from evad.engines.trt_runner import TrtRunner
from evad.errors import ConfigError, EvadError
from evad.export.metadata import preset_of
from evad.export.openvino_runner import OpenVinoRunner
from evad.export.ort_runner import OrtRunner
from evad.export.parity import (
    FP32_THRESHOLDS,
    OPENVINO_FP32_THRESHOLDS,
    REDUCED_THRESHOLDS,
    compare,
    seeded_inputs,
)
from evad.models import build_model, load_checkpoint
from evad.runtime.backends import open_runner

__all__ = ["main"]

_PROG = "evad-parity"


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Compare an exported EVAD model, run in ONNX Runtime or as a "
        "TensorRT engine, against the torch reference on seeded clips; exit 1 when a parity "
        "bar fails (fp32: kept tokens identical up to near-ties, boxes 1e-2 px, action "
        "probabilities 1e-4; fp16/bf16 engines and OpenVINO bf16: Jaccard >= 0.97, 98%% of "
        "detections matched, mean probability difference <= 0.01).",
        epilog="Reported per pruning block: kept-token Jaccard, boundary flips and order swaps "
        "with the reference's score gaps; then box, person-score and action-probability "
        "differences and the detection match rate. The torch run is forced to the backend's "
        "decisions, so near-ties cannot hide continuous errors. docs/design.md has the rules.")
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", type=Path, help="the exported .onnx (ONNX Runtime)")
    model.add_argument("--engine", type=Path, help="a TensorRT engine from evad-build-engine")
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="the checkpoint it was exported from (required unless it was exported "
                    "from a --preset with random weights)")
    ap.add_argument("--clips", type=number(1, 1000, integer=True), default=2,
                    help="seeded clips (default 2)")
    ap.add_argument("--batch", type=number(1, 256, integer=True), default=1,
                    help="clips per run (default 1)")
    ap.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0)
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                    help="ONNX Runtime execution provider (default cpu)")
    ap.add_argument("--backend", choices=["ort", "openvino"], default="ort",
                    help="what runs --onnx: ort (default) or openvino")
    ap.add_argument("--precision", choices=["fp32", "bf16", "bf16-int8w"], default="fp32",
                    help="with --backend openvino: its compute precision; bf16 is judged by "
                    "the reduced-precision rules")
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(_PROG, lambda: _parity(args))


def _parity(args: argparse.Namespace) -> int:
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.ckpt is not None:
        check_input_file(args.ckpt, "checkpoint")
    if args.engine is not None and (args.backend != "ort" or args.precision != "fp32"):
        raise ConfigError("--backend and --precision are for --onnx: an engine runs the "
                          "precision it was built with")
    if args.backend == "openvino" and args.provider != "cpu":
        raise ConfigError("--provider is ONNX Runtime's; OpenVINO runs on the CPU here")
    if args.engine is not None:
        runner, _ = open_runner("trt", engine=args.engine)
    elif args.backend == "openvino":
        runner, _ = open_runner("openvino", onnx=args.onnx, precision=args.precision)
    else:
        if args.precision != "fp32":
            raise ConfigError(f"--precision {args.precision} runs on --backend openvino (ONNX "
                              "Runtime's CPU kernels are fp32)")
        runner, _ = open_runner("ort", onnx=args.onnx, cuda=args.provider == "cuda")
    assert isinstance(runner, (OrtRunner, TrtRunner, OpenVinoRunner))
    meta = runner.metadata
    preset = preset_of(meta)
    if args.ckpt is not None:
        model, cmeta = load_checkpoint(args.ckpt, preset=preset)
        if meta.get("checkpoint_sha256") and meta["checkpoint_sha256"] != cmeta["sha256"]:
            raise EvadError(f"{runner.spec.name} was exported from another checkpoint (sha256 "
                            f"{meta['checkpoint_sha256'][:12]}..., {args.ckpt} is "
                            f"{cmeta['sha256'][:12]}...)")
    elif meta.get("random_seed") is not None:
        torch.manual_seed(meta["random_seed"])
        model = build_model(preset).eval().calm()
    else:
        raise ConfigError(f"{runner.spec.name} was exported from a checkpoint: pass it with "
                          "--ckpt")
    reduced = (meta.get("precision", "fp32") != "fp32" and args.engine is not None) or \
        getattr(runner, "precision", "fp32") != "fp32"
    thresholds = REDUCED_THRESHOLDS if reduced else (
        OPENVINO_FP32_THRESHOLDS if isinstance(runner, OpenVinoRunner) else FP32_THRESHOLDS)
    h, w = meta["input_size"]
    clips, sizes = seeded_inputs(args.clips, args.batch, preset.num_frames, h, w, args.seed)
    with ParityBar(len(clips), runner.name, False) as bar:
        report = compare(model, runner, clips, sizes, thresholds, progress=bar.step)
    print(f"parity: {runner.spec.name} ({runner.name}) vs torch fp32, {report.clips} batch(es) "
          f"of {args.batch}")
    for line in report.lines():
        print(f"  {line}")
    print("PASS" if report.passed else "FAIL")
    if args.json:
        write_json_atomic(args.json, report.to_dict())
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
