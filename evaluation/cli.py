"""``evad-eval``: frame mAP@0.5 of an AVA-format detection CSV against ground truth."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from evad.datasets.ava import read_excluded, read_label_map
from evad.datasets.clips import ClipDataset
from evad.errors import EvadError
from evad.evaluation.ava_eval import evaluate, read_rows
from evad.evaluation.detect import detect
from evad.export.metadata import preset_of
from evad.runtime.backends import open_runner
from evad.runtime.outputs import write_csv_atomic

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="evad-eval", description="Frame-level mAP at IoU 0.5 (the AVA evaluation protocol) "
        "of detections against ground truth, per class and mean.",
        epilog="Both CSVs are AVA rows: video, seconds, x1, y1, x2, y2 (normalised), action id, "
        "then person id (ground truth) or score (detections). Example: evad-eval --gt "
        "data/heldout/annotations.csv --det out/detections.csv --labelmap "
        "data/heldout/label_map.pbtxt --json eval.json")
    ap.add_argument("--gt", type=Path, default=None,
                    help="ground-truth CSV (default: DATA/annotations.csv)")
    ap.add_argument("--det", type=Path, default=None, help="detections CSV (with scores)")
    ap.add_argument("--data", type=Path, default=None,
                    help="instead of --det: run a model on the annotated keyframes of DATA "
                    "(videos/ + annotations.csv), with --ckpt (torch) or --onnx (ONNX Runtime)")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint for --data")
    ap.add_argument("--onnx", type=Path, default=None, help="exported ONNX for --data")
    ap.add_argument("--write-det", type=Path, default=None,
                    help="with --data: also write the detections CSV here")
    ap.add_argument("--labelmap", type=Path, default=None,
                    help="pbtxt label map: the classes to score (default: those in --gt)")
    ap.add_argument("--exclusions", type=Path, default=None,
                    help="CSV of excluded (video, timestamp) keyframes")
    ap.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    try:
        if (args.det is None) == (args.data is None):
            raise EvadError("pass either --det CSV or --data DIR with --ckpt/--onnx")
        gt_path = args.gt or (args.data / "annotations.csv" if args.data else None)
        if gt_path is None:
            raise EvadError("pass --gt (the ground-truth CSV)")
        labelmap = args.labelmap or (args.data / "label_map.pbtxt"
                                     if args.data and (args.data / "label_map.pbtxt").is_file()
                                     else None)
        names = read_label_map(labelmap) if labelmap else {}
        det = read_rows(args.det, scores=True) if args.det else _run_model(args)
        res = evaluate(read_rows(gt_path, scores=False), det, class_ids=names or None,
                       excluded=read_excluded(args.exclusions), iou=args.iou)
    except (EvadError, OSError) as e:
        print(f"evad-eval: error: {e}", file=sys.stderr)
        return 2
    print(f"{'id':>4}  {'class':<40}{'AP':>8}{'GT':>7}{'det':>8}")
    for c, r in res["per_class"].items():
        ap_s = "    n/a" if r["ap"] is None else f"{r['ap']:8.4f}"
        print(f"{c:>4}  {names.get(c, str(c))[:39]:<40}{ap_s}{r['num_gt']:>7}{r['num_det']:>8}")
    mean = res["mAP"]
    print(f"frame mAP@{args.iou}: {'n/a' if math.isnan(mean) else f'{mean:.4f}'} over "
          f"{sum(r['ap'] is not None for r in res['per_class'].values())} classes, "
          f"{res['keyframes']} keyframes")
    if args.json:
        res["names"] = {str(k): v for k, v in names.items()}
        res["per_class"] = {str(k): v for k, v in res["per_class"].items()}
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, args.json)
    return 0


def _run_model(args: argparse.Namespace) -> list[tuple]:
    if (args.ckpt is None) == (args.onnx is None):
        raise EvadError("with --data pass exactly one of --ckpt (torch) and --onnx (ORT)")
    if args.onnx is not None:
        runner, _ = open_runner("ort", onnx=args.onnx)
        preset = preset_of(runner.metadata)  # type: ignore[attr-defined]
    else:
        runner, _ = open_runner("torch", ckpt=args.ckpt)
        preset = runner.model.preset  # type: ignore[attr-defined]
    rows = detect(runner, ClipDataset(args.data, preset), progress=True)
    if args.write_det:
        write_csv_atomic(rows, args.write_det)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
