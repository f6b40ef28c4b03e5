"""``evad-eval``: frame mAP@0.5 of an AVA-format detection CSV against ground truth.

Every input is read, and every output checked, before anything slow runs or anything is
written: a bad file or flag is one line on stderr (``evad-eval: error: ...``) naming the file
(and line) and the fix, with exit code 2. The JSON and the ``--write-det`` CSV appear whole or
not at all (``evad.atomic``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from evad.atomic import write_json_atomic
from evad.ava_csv import read_excluded, read_rows, write_csv_atomic
from evad.command import (
    ArgumentParser,
    check_input_dir,
    check_input_file,
    check_output_file,
    number,
    run_command,
)
from evad.datasets.ava import check_dataset, read_label_map
from evad.datasets.clips import ClipDataset
from evad.errors import ConfigError
from evad.evaluation.ava_eval import evaluate
from evad.evaluation.detect import dataset_rows
from evad.runner import backend_choices, precision_choices
from evad.runtime.backends import open_runner

__all__ = ["main", "parser"]

_PROG = "evad-eval"
#: the backends that run a --ckpt or an --onnx (evad-eval takes no engine)
_BACKENDS = backend_choices(("onnx", "ckpt"))


def parser() -> ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Frame-level mAP at IoU 0.5 (the AVA evaluation protocol) "
        "of detections against ground truth, per class and mean.",
        epilog="examples:\n"
        "  evad-eval --gt data/heldout/annotations.csv --det out/detections.csv \\\n"
        "      --labelmap data/heldout/label_map.pbtxt --json eval.json\n"
        "  evad-eval --data data/heldout --onnx exports/demo.onnx   # run a model, then score\n\n"
        "Both CSVs are AVA rows: video, seconds, x1, y1, x2, y2 (normalised), action id,\n"
        "then person id (ground truth) or score (detections).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", type=Path, default=None,
                    help="ground-truth CSV (default: DATA/annotations.csv)")
    ap.add_argument("--det", type=Path, default=None, help="detections CSV (with scores)")
    ap.add_argument("--data", type=Path, default=None,
                    help="instead of --det: run a model on the annotated keyframes of DATA "
                    "(videos/ + annotations.csv), with --ckpt (torch) or --onnx (ONNX Runtime)")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint for --data")
    ap.add_argument("--onnx", type=Path, default=None, help="exported ONNX for --data")
    ap.add_argument("--backend", choices=_BACKENDS, default="auto",
                    help="with --data: what runs the model; auto (default): ONNX Runtime for "
                    "--onnx at fp32 (CUDA when installed), OpenVINO at bf16, torch for --ckpt")
    ap.add_argument("--precision", choices=precision_choices(_BACKENDS), default="fp32",
                    help="with --data: fp32 (default; ONNX Runtime or torch) or bf16 (OpenVINO "
                    "for --onnx, torch autocast for --ckpt)")
    ap.add_argument("--write-det", type=Path, default=None,
                    help="with --data: also write the detections CSV here")
    ap.add_argument("--labelmap", type=Path, default=None,
                    help="pbtxt label map: the classes to score (default: those in --gt)")
    ap.add_argument("--exclusions", type=Path, default=None,
                    help="CSV of excluded (video, timestamp) keyframes")
    ap.add_argument("--iou", type=number(0, 1, lo_open=True), default=0.5,
                    help="IoU threshold in (0, 1] (default 0.5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(_PROG, lambda: _run(args))


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _run(args: argparse.Namespace) -> int:
    # 1. the flags fit together
    if (args.det is None) == (args.data is None):
        raise ConfigError("pass either --det CSV or --data DIR with --ckpt/--onnx")
    if args.data is None:
        if args.ckpt is not None or args.onnx is not None:
            raise ConfigError("--ckpt / --onnx run a model on --data DIR: pass --data DIR "
                              "instead of --det, or drop them")
        if args.write_det is not None:
            raise ConfigError("--write-det writes the detections of a --data DIR run: pass "
                              "--data DIR instead of --det, or drop it")
    elif (args.ckpt is None) == (args.onnx is None):
        raise ConfigError("with --data pass exactly one of --ckpt (torch) and --onnx (ORT)")

    # 2. every input exists and every output can be written (nothing is written yet)
    annotations = None
    if args.data is not None:
        check_input_dir(args.data, "--data")
        annotations = check_input_file(args.data / "annotations.csv", "annotations of --data")
        check_input_file(args.ckpt or args.onnx, "checkpoint" if args.ckpt else "ONNX model")
    gt_path = args.gt if args.gt is not None else annotations
    if gt_path is None:
        raise ConfigError("pass --gt (the ground-truth CSV)")
    labelmap = args.labelmap
    if labelmap is None and args.data is not None and (args.data / "label_map.pbtxt").is_file():
        labelmap = args.data / "label_map.pbtxt"
    inputs = [(p, flag) for p, flag in ((gt_path, "--gt"), (args.det, "--det"),
                                        (labelmap, "--labelmap"),
                                        (args.exclusions, "--exclusions"),
                                        (args.ckpt, "--ckpt"), (args.onnx, "--onnx"))
              if p is not None]
    outputs = [(p, flag) for p, flag in ((args.json, "--json"), (args.write_det, "--write-det"))
               if p is not None]
    for out, flag in outputs:
        check_output_file(out, flag)
        for src, src_flag in inputs:
            if _same(out, src):
                raise ConfigError(f"{flag} {out} is the {src_flag} input: writing it would "
                                  "overwrite that file; give another file name")
    if len(outputs) == 2 and (args.json.resolve() == args.write_det.resolve()):
        raise ConfigError(f"--json and --write-det are the same file {args.json}: give two "
                          "file names")

    # 3. read every input before the model runs
    names = read_label_map(labelmap) if labelmap is not None else {}
    gt = read_rows(gt_path, scores=False, what="ground-truth CSV")
    excluded = read_excluded(args.exclusions)
    if args.det is not None:
        det = read_rows(args.det, scores=True, what="detections CSV")
    else:
        check_dataset(args.data, "--data")  # every annotated video there, before the model
        det = _run_model(args)

    res = evaluate(gt, det, class_ids=names or None, excluded=excluded, iou=args.iou)
    print(f"{'id':>4}  {'class':<40}{'AP':>8}{'GT':>7}{'det':>8}")
    for c, r in res["per_class"].items():
        ap_s = "    n/a" if r["ap"] is None else f"{r['ap']:8.4f}"
        print(f"{c:>4}  {names.get(c, str(c))[:39]:<40}{ap_s}{r['num_gt']:>7}{r['num_det']:>8}")
    mean = res["mAP"]
    print(f"frame mAP@{args.iou}: {'n/a' if math.isnan(mean) else f'{mean:.4f}'} over "
          f"{sum(r['ap'] is not None for r in res['per_class'].values())} classes, "
          f"{res['keyframes']} keyframes")
    if args.json is not None:
        res["mAP"] = None if math.isnan(mean) else mean  # JSON has no NaN: null, as per class
        res["names"] = {str(k): v for k, v in names.items()}
        res["per_class"] = {str(k): v for k, v in res["per_class"].items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)  # checked creatable above
        write_json_atomic(args.json, res)
    return 0


def _run_model(args: argparse.Namespace) -> list[tuple]:
    # open_runner chooses (auto: --onnx runs in ONNX Runtime at fp32, OpenVINO at bf16;
    # --ckpt in torch), among the backends this command offers
    runner, _ = open_runner(args.backend, onnx=args.onnx, ckpt=args.ckpt,
                            precision=args.precision, auto_among=_BACKENDS)
    with runner:
        # the clips are made for this model (its input size, resize and normalisation)
        rows = dataset_rows(runner, ClipDataset(args.data, runner.spec), progress=True)
    if args.write_det is not None:
        args.write_det.parent.mkdir(parents=True, exist_ok=True)  # checked creatable
        write_csv_atomic(rows, args.write_det)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
