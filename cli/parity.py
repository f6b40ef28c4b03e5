"""``evad-parity``: an exported ONNX model (ONNX Runtime) or a TensorRT engine against the
torch reference, on seeded clips, under the parity rules of ``docs/design.md``; and, with
``--layerwise`` / ``--layerwise-against``, layer by layer against ONNX Runtime
(:mod:`evad.export.layerwise`), to name where a backend parts ways."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.atomic import write_json_atomic
from evad.command import ArgumentParser, check_input_file, check_output_file, number, run_command
from evad.engines.environment import missing_for_engine_build
from evad.engines.metadata import read_engine_metadata
from evad.errors import BackendError, ConfigError, EvadError
from evad.hashing import onnx_sha256
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.runner import (
    INPUT_CLIP,
    INPUT_IMAGE_SIZE,
    ModelSpec,
    Runner,
    backend_choices,
    backend_row,
    precision_choices,
)
from evad.runtime.backends import open_runner

if TYPE_CHECKING:
    import onnx

    from evad import fused_attention, models
    from evad.engines import builder, onnx_prep
    from evad.export import layerwise, parity
    from evad.export import metadata as export_metadata
else:
    # torch (the reference, export metadata and parity rules) and onnx (the layerwise graphs)
    # load only once the flags and files passed their checks: a missing or unreadable model
    # file is refused in a fraction of a second, before ~1.5 s (warm) to ~10 s (cold) of torch
    onnx = lazy_import("onnx", "pip install onnx")
    fused_attention = lazy_import("evad.fused_attention", "pip install onnx")
    builder = lazy_import("evad.engines.builder", "pip install onnx")
    onnx_prep = lazy_import("evad.engines.onnx_prep", "pip install onnx")
    layerwise = lazy_import("evad.export.layerwise", "pip install onnx")
    export_metadata = lazy_import("evad.export.metadata", "pip install torch")
    parity = lazy_import("evad.export.parity", "pip install torch")
    models = lazy_import("evad.models", "pip install torch")

__all__ = ["main"]

_PROG = "evad-parity"
#: what runs an --onnx here (an --engine runs in TensorRT)
_BACKENDS = backend_choices(("onnx",), auto=False)


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Compare an exported EVAD model, run in ONNX Runtime or as a "
        "TensorRT engine, against the torch reference on seeded clips; exit 1 when a parity "
        "bar fails (fp32: kept tokens identical up to near-ties, boxes 1e-2 px, action "
        "probabilities 1e-4; fp16/bf16 engines and OpenVINO bf16: Jaccard >= 0.97, 98% of "
        "detections matched, mean probability difference <= 0.01).",
        epilog="Reported per pruning block: kept-token Jaccard, boundary flips and order swaps "
        "with the reference's score gaps; then box, person-score and action-probability "
        "differences and the detection match rate. The torch run is forced to the backend's "
        "decisions, so near-ties cannot hide continuous errors. docs/design.md has the rules. "
        "--layerwise / --layerwise-against name the first layer that diverges from ONNX "
        "Runtime instead (exit 1 when one does).")
    # --onnx and --engine exclude each other except under --layerwise (_check_flags)
    ap.add_argument("--onnx", type=Path, help="the exported .onnx (ONNX Runtime); with --engine "
                    "--layerwise: the ONNX the engine was built from (default: <engine>.onnx "
                    "beside it)")
    ap.add_argument("--engine", type=Path, help="a TensorRT engine from evad-build-engine")
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
    ap.add_argument("--backend", choices=_BACKENDS, default="ort",
                    help="what runs --onnx: ort (default) or openvino")
    ap.add_argument("--precision", choices=precision_choices(_BACKENDS), default="fp32",
                    help="the compute precision (bf16, bf16-int8w: --backend openvino; int8: "
                    "the calibrated INT8 export of evad-export --int8, ONNX Runtime or "
                    "OpenVINO); reduced precisions are judged by the reduced-precision rules")
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    lw = ap.add_argument_group(
        "layer by layer", "Mark every intermediate tensor as an output (as Polygraphy's "
        "'--onnx-outputs mark all' does), run both sides on the same seeded clips, one at a "
        "time, and name the first node whose output differs beyond the precision's tolerance "
        "(relative to each tensor's largest value: " + ", ".join(
            f"{name} rtol {t.rtol:g}" for name, t in layerwise.TOLERANCES.items())
        + "). Index tensors that differ after float noise are reported as near-ties, not judged.")
    lw.add_argument("--layerwise", action="store_true",
                    help="with --engine: build a copy of the engine from its ONNX with every "
                    "layer marked (same precision; needs TensorRT and a GPU) and compare it with "
                    "ONNX Runtime")
    lw.add_argument("--layerwise-against", type=Path, default=None, metavar="ONNX",
                    help="with --onnx: compare this second ONNX with it, both in ONNX Runtime "
                    "(--onnx is the reference; e.g. to bisect two exports)")
    lw.add_argument("--top", type=number(1, 1000, integer=True), default=None,
                    help="rows of the worst-tensor table (default 10)")
    lw.add_argument("--rtol", type=number(0), default=None,
                    help="relative tolerance instead of the precision's")
    lw.add_argument("--atol", type=number(0), default=None,
                    help="absolute tolerance instead of the precision's")
    return ap


def _check_flags(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The combinations argparse cannot express, refused before any work (exit 2)."""
    if args.onnx is None and args.engine is None:
        ap.error("one of the arguments --onnx --engine is required")
    if args.layerwise_against is not None:
        if args.engine is not None:
            ap.error("--layerwise-against compares two ONNX files in ONNX Runtime: give it with "
                     "--onnx, not --engine (an engine: --engine E --layerwise)")
        if args.layerwise:
            ap.error("--layerwise and --layerwise-against: choose one")
    if args.layerwise and args.engine is None:
        ap.error("--layerwise compares a TensorRT engine's layers with ONNX Runtime's: give "
                 "--engine (two ONNX files: --onnx A --layerwise-against B)")
    if args.onnx is not None and args.engine is not None and not args.layerwise:
        ap.error("argument --engine: not allowed with argument --onnx")
    if args.layerwise or args.layerwise_against is not None:
        unused = [flag for flag, given in (("--ckpt", args.ckpt is not None),
                                           ("--backend", args.backend != "ort"),
                                           ("--precision", args.precision != "fp32"))
                  if given]
        if unused:
            ap.error(f"{', '.join(unused)}: not used layer by layer (ONNX Runtime fp32 is the "
                     "reference; an engine's own precision sets the tolerance)")
        if args.batch != 1:
            ap.error("--batch: a layerwise comparison runs one clip at a time (use --clips)")
    else:
        alone = [flag for flag, value in (("--top", args.top), ("--rtol", args.rtol),
                                          ("--atol", args.atol)) if value is not None]
        if alone:
            ap.error(f"{', '.join(alone)}: only with --layerwise or --layerwise-against")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    _check_flags(ap, args)
    by_layer = args.layerwise or args.layerwise_against is not None
    return run_command(_PROG, lambda: _layerwise(args) if by_layer else _parity(args))


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
    # the model file before its backend loads (open_runner checks it too, after the import)
    if args.onnx is not None:
        check_input_file(args.onnx, "ONNX model")
    if args.engine is not None:
        check_input_file(args.engine, "TensorRT engine")
        runner, _ = open_runner("trt", engine=args.engine)
    elif args.backend == "openvino":
        runner, _ = open_runner("openvino", onnx=args.onnx, precision=args.precision)
    else:
        ort = backend_row("ort", "cpu")
        if args.precision not in ort.precisions:
            raise ConfigError(f"--precision {args.precision} runs on --backend openvino (ONNX "
                              f"Runtime runs {' and '.join(ort.precisions)}: int8 is the "
                              "calibrated export's, evad-export --int8)")
        runner, _ = open_runner("ort", onnx=args.onnx, cuda=args.provider == "cuda",
                                precision=args.precision)
    with runner:
        return _judge(args, runner)


def _judge(args: argparse.Namespace, runner: Runner) -> int:
    """The parity run of an open ``runner`` against the torch reference."""
    meta = runner.metadata
    preset = export_metadata.preset_of(meta)
    if args.ckpt is not None:
        model, cmeta = models.load_or_build(args.ckpt, preset)
        if meta.get("checkpoint_sha256") and meta["checkpoint_sha256"] != cmeta["sha256"]:
            raise EvadError(f"{runner.spec.name} was exported from another checkpoint (sha256 "
                            f"{meta['checkpoint_sha256'][:12]}..., {args.ckpt} is "
                            f"{cmeta['sha256'][:12]}...)")
    elif meta.get("random_seed") is not None:
        model, _ = models.load_or_build(preset=preset, seed=meta["random_seed"])
    else:
        raise ConfigError(f"{runner.spec.name} was exported from a checkpoint: pass it with "
                          "--ckpt")
    # an engine's precision is the one it was built with (judged by bf16's bars, the coarsest
    # float an engine computes in); the calibrated INT8 export's is int8, with its own k
    if runner.precision in ("fp32", "int8"):
        thresholds = parity.thresholds_for(runner.precision, runner.backend == "openvino")
    else:
        thresholds = parity.REDUCED_THRESHOLDS
    h, w = meta["input_size"]
    clips, sizes = parity.seeded_inputs(args.clips, args.batch, preset.num_frames, h, w,
                                        args.seed)
    with parity.ParityBar(len(clips), runner.name, False) as bar:
        report = parity.compare(model, runner, clips, sizes, thresholds, progress=bar.step)
    print(f"parity: {runner.spec.name} ({runner.name}) vs torch fp32 and its float64 oracle, "
          f"{report.clips} batch(es) of {args.batch} ({report.oracle_clips} with the oracle)")
    for line in report.lines():
        print(f"  {line}")
    print("PASS" if report.passed else "FAIL")
    if args.json:
        write_json_atomic(args.json, report.to_dict())
    return 0 if report.passed else 1


def _layerwise(args: argparse.Namespace) -> int:
    """``--engine E --layerwise`` or ``--onnx A --layerwise-against B``: both sides on the same
    seeded clips, every shared intermediate tensor compared in A's (the export's) order."""
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.engine is not None:
        # first, before any file is read: the engine side needs a builder and a GPU
        missing = [str(m) for m in missing_for_engine_build() if not m.optional]
        if missing:
            raise BackendError("--layerwise builds and runs a TensorRT engine with its layers "
                               "marked; this machine lacks " + "; ".join(missing) + " (two ONNX "
                               "files compare layer by layer on the CPU: --onnx A "
                               "--layerwise-against B)")
        engine = check_input_file(args.engine, "TensorRT engine")
        sidecar = read_engine_metadata(engine)
        onnx_path = _engine_onnx(args.onnx, engine, sidecar)
        precision = str(sidecar.get("precision", "fp32"))
    else:
        sidecar = {}
        onnx_path = check_input_file(args.onnx, "ONNX model")
        check_input_file(args.layerwise_against, "--layerwise-against ONNX model")
        precision = "fp32"
    if precision not in layerwise.TOLERANCES:
        raise EvadError(f"the engine's sidecar says precision {precision!r}, none of "
                        f"{', '.join(layerwise.TOLERANCES)}: rebuild it with evad-build-engine")
    base = layerwise.TOLERANCES[precision]
    tol = layerwise.Tolerance(rtol=base.rtol if args.rtol is None else args.rtol,
                              atol=base.atol if args.atol is None else args.atol)
    spec = ModelSpec.from_metadata(read_metadata(onnx_path), f"ONNX model {onnx_path}")
    assert spec.input_size is not None  # an export's metadata always has it
    h, w = spec.input_size
    clips, sizes = parity.seeded_inputs(args.clips, 1, spec.num_frames, h, w, args.seed)
    # the graph the TensorRT parser sees, with the evad functions kept so ONNX Runtime runs it
    reference = fused_attention.decompose_fused_attention(onnx.load(str(onnx_path)))
    cuda = args.provider == "cuda"
    notes: list[str] = []
    if args.engine is not None:
        report = _against_engine(args.engine, onnx_path, sidecar, reference, precision, tol,
                                 clips, sizes, cuda, notes)
        what = f"TensorRT {precision} engine {args.engine} (a marked rebuild)"
    else:
        report = _against_onnx(args.layerwise_against, reference, tol, clips, sizes, cuda)
        what = f"ONNX Runtime {args.layerwise_against}"
    print(f"layerwise: {what} vs ONNX Runtime {onnx_path}, {report.clips} clip(s), "
          f"{len(report.diffs)} tensors")
    for line in [*report.lines(args.top or 10), *notes]:
        print(f"  {line}")
    print("PASS" if report.passed else "FAIL")
    if args.json:
        write_json_atomic(args.json, report.to_dict())
    return 0 if report.passed else 1


def _engine_onnx(given: Path | None, engine: Path, sidecar: dict[str, Any]) -> Path:
    """The ONNX an engine was built from: ``given``, else ``<engine stem>.onnx`` beside it
    (evad-build-engine's default naming), checked against the sidecar's hash.

    Raises:
        EvadError: none found, or another ONNX than the engine's.
    """
    if given is None:
        given = engine.with_suffix(".onnx")
        if not given.is_file():
            raise ConfigError(f"--layerwise rebuilds the engine from its ONNX: pass it with "
                              f"--onnx (there is no {given.name} beside {engine.name})")
    path = check_input_file(given, "ONNX model")
    want = sidecar.get("onnx_sha256")
    if want and onnx_sha256(path) != want:
        raise EvadError(f"{path} is not the ONNX {engine.name} was built from (sha256 "
                        f"{onnx_sha256(path)[:12]}..., its sidecar says {str(want)[:12]}...): "
                        "pass that one with --onnx")
    return path


def _feeds(clip: np.ndarray, size: np.ndarray) -> dict[str, np.ndarray]:
    return {INPUT_CLIP: clip, INPUT_IMAGE_SIZE: size}


def _against_onnx(other: Path, reference: onnx.ModelProto, tol: layerwise.Tolerance,
                  clips: list[np.ndarray], sizes: list[np.ndarray],
                  cuda: bool) -> layerwise.LayerwiseReport:
    """A second ONNX, decomposed like the first, every tensor marked, in ONNX Runtime."""
    candidate = fused_attention.decompose_fused_attention(onnx.load(str(other)))
    want = sorted(i.name for i in reference.graph.input)
    have = sorted(i.name for i in candidate.graph.input)
    if have != want:
        raise EvadError(f"{other} has inputs {have}, the reference {want}: not the same model")
    ref_run = layerwise.LayerRunner(reference, cuda=cuda)
    cand_run = layerwise.LayerRunner(candidate, cuda=cuda)
    return layerwise.merge_reports([
        layerwise.compare_layers(reference, ref_run(_feeds(c, s)), cand_run(_feeds(c, s)), tol,
                                 "fp32", candidate)
        for c, s in zip(clips, sizes, strict=True)])


def _against_engine(engine: Path, onnx_path: Path, sidecar: dict[str, Any],
                    reference: onnx.ModelProto, precision: str, tol: layerwise.Tolerance,
                    clips: list[np.ndarray], sizes: list[np.ndarray], cuda: bool,
                    notes: list[str]) -> layerwise.LayerwiseReport:
    """A marked rebuild of the engine (same precision and plugins, batch 1) against ONNX
    Runtime. Marked: the tensors the engine can return (:func:`engine_marks`) under a name the
    parser's graph has too (TensorRT's parser names network tensors after the ONNX tensors).
    What the reader should know about the result is appended to ``notes``."""
    parser_names = {o for n in onnx_prep.for_parser(reference).graph.node for o in n.output}
    marks = [n for n in layerwise.engine_marks(reference, layerwise.layer_tensors(reference))
             if n in parser_names]
    ref_run = layerwise.LayerRunner(reference, marks, cuda=cuda)
    reports = []
    with tempfile.TemporaryDirectory(prefix="evad-layerwise-") as tmp:
        built = builder.build(onnx_path, precision=precision, batch=(1, 1, 1),
                              plugins=sidecar.get("plugins"), out=Path(tmp) / "marked.engine",
                              mark_outputs=marks, log=lambda line: print(f"  {line}"))
        partial = 0
        with open_runner("trt", engine=built)[0] as runner:
            for clip, size in zip(clips, sizes, strict=True):
                ref, cand = ref_run(_feeds(clip, size)), runner(clip, size)
                partial = max(partial, _first_rows(ref, cand))
                reports.append(layerwise.compare_layers(reference, ref, cand, tol, precision))
    if partial:
        notes.append(f"note: {partial} tensors compared on their first rows only (the runner "
                     "returns each output's batch rows along axis 0; theirs is not the batch)")
    notes.append(f"note: the marked rebuild may fuse less than {engine.name} does (a marked "
                 "tensor must exist), so it can miss an error of a fused kernel alone")
    return layerwise.merge_reports(reports)


def _first_rows(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> int:
    """Cut ONNX Runtime's tensors to the rows the engine runner returned: TrtRunner returns
    every output's first ``batch`` rows along axis 0 (right for the detector's batch-first
    outputs), so a marked tensor whose axis 0 is not the batch (ROIs, heads) comes back as its
    first row. Returns how many were cut."""
    cut = 0
    for name, c in cand.items():
        r = ref.get(name)
        if r is not None and r.ndim == c.ndim >= 1 and r.shape[1:] == c.shape[1:] and \
                c.shape[0] < r.shape[0]:
            ref[name] = r[:c.shape[0]]
            cut += 1
    return cut


if __name__ == "__main__":
    raise SystemExit(main())
