"""The demo model's held-out frame mAP in calibrated INT8 against fp32 (ONNX Runtime, OpenVINO).

    python benchmarks/int8_accuracy.py --json benchmarks/results/int8_accuracy.json

Runs the commands a user runs, one at a time (each as a child process, timed):

1. ``evad-train --make-data WORK/heldout --videos 40 --seed 100000``: the held-out set of the
   README's demo-model figures (seeds 100000-100039, 440 keyframes);
2. ``evad-train --make-data WORK/calib --videos 16 --seed 0``: calibration data from the demo's
   own training-set maker, its first 16 training videos (seeds 0-15; the held-out seeds are
   never among them);
3. ``evad-export --ckpt <demo checkpoint> --height 128 --width 256 --onnx-only --int8 --calib
   WORK/calib``: the demo ONNX (the size ``evad.export.demo.demo_onnx`` exports) and its
   calibrated Q/DQ twin ``demo.int8.onnx``, from the one export path;
4. ``evad-eval --data WORK/heldout --onnx FILE --backend B --precision P`` for ONNX Runtime and
   OpenVINO at fp32 and int8 (and OpenVINO bf16 with ``--bf16``).

The JSON holds each run's mAP and seconds, the int8 - fp32 delta per backend and whether it is
within ``--bar`` (issue #27: 0.01), the model files' SHA-256 and the INT8 metadata's calibration
record (clip count, data hash, nodes kept float). Sets already in WORK are reused (their
``annotations.csv`` is written last, so its presence means the set is whole).
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
import time
from pathlib import Path
from typing import Any

from evad.ava_csv import read_rows
from evad.hashing import file_sha256
from evad.metadata import read_metadata
from evad.models.demo import demo_checkpoint
from evad.runtime.benchmark import cpu_features, cpu_name

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = {"videos": 40, "seed": 100000}  # as README "Demo model" and demo_model_heldout.json
HEIGHT, WIDTH = 128, 256  # evad.export.demo.DEMO_INPUT


def _tool(name: str) -> str:
    """The console script ``name`` of this interpreter's environment."""
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        raise SystemExit(f"int8_accuracy: {path} is missing: pip install -e . in this venv")
    return str(path)


def _shown(cmd: list[str], work: Path) -> str:
    """``cmd`` as the JSON records it: the command's name, paths inside WORK relative to it."""
    text = " ".join([Path(cmd[0]).name, *cmd[1:]])
    return text.replace(f"{work}/", "").replace(str(ROOT) + "/", "")


def _run(cmd: list[str]) -> float:
    """Run ``cmd`` (output passed through), fail on a non-zero exit; its wall seconds."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise SystemExit(f"int8_accuracy: {cmd[0]} exited {rc}; see its output above")
    return time.monotonic() - t0


def _dataset(folder: Path, videos: int, seed: int) -> dict[str, Any]:
    """Generate the synthetic set (unless whole already) and describe it."""
    cmd = [_tool("evad-train"), "--make-data", str(folder), "--videos", str(videos),
           "--seed", str(seed)]
    seconds = None
    if not (folder / "annotations.csv").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted set: make it again
        seconds = round(_run(cmd), 1)
    found = sorted(p.name for p in (folder / "videos").glob("*.mp4"))
    want = [f"syn{seed + k:06d}.mp4" for k in range(videos)]
    if found != want:
        raise SystemExit(f"int8_accuracy: {folder} holds {len(found)} videos, not seeds "
                         f"{seed}-{seed + videos - 1}: remove it and run again")
    keyframes = {(row[0], row[1]) for row in read_rows(folder / "annotations.csv", False)}
    return {"command": _shown(cmd, folder.parent), "videos": videos,
            "seeds": f"{seed}-{seed + videos - 1}", "keyframes": len(keyframes),
            "annotations_sha256": file_sha256(folder / "annotations.csv"),
            "made_now": seconds is not None, "make_s": seconds}


def _evaluate(heldout: Path, onnx: Path, backend: str, precision: str, out: Path) -> dict:
    """One ``evad-eval --data`` run: its mAP, per-class AP and wall seconds."""
    js = out / f"eval_{backend}_{precision}.json"
    cmd = [_tool("evad-eval"), "--data", str(heldout), "--onnx", str(onnx), "--backend", backend,
           "--precision", precision, "--json", str(js)]
    seconds = _run(cmd)
    res = json.loads(js.read_text())
    return {"command": _shown(cmd, out), "mAP": res["mAP"],
            "per_class": {res["names"].get(c, c): r["ap"] for c, r in res["per_class"].items()},
            "keyframes": res["keyframes"], "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/evad-int8-accuracy"),
                    help="folder for the data sets, exports and per-run JSON (reused)")
    ap.add_argument("--calib-videos", type=int, default=16,
                    help="training videos to calibrate on (seeds --calib-seed ...; default 16)")
    ap.add_argument("--calib-seed", type=int, default=0,
                    help="first calibration seed (default 0: the demo's training set)")
    ap.add_argument("--calib-clips", type=int, default=32, help="evad-export --calib-clips")
    ap.add_argument("--bar", type=float, default=0.01, help="allowed |int8 - fp32| mAP")
    ap.add_argument("--bf16", action="store_true", help="also run OpenVINO bf16 (fp32 export)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    seeds = range(args.calib_seed, args.calib_seed + args.calib_videos)
    if HELDOUT["seed"] in seeds or HELDOUT["seed"] + HELDOUT["videos"] - 1 in seeds:
        raise SystemExit("int8_accuracy: the calibration seeds overlap the held-out ones "
                         f"({HELDOUT['seed']}-{HELDOUT['seed'] + HELDOUT['videos'] - 1}): "
                         "pick another --calib-seed")

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    heldout = _dataset(work / "heldout", HELDOUT["videos"], HELDOUT["seed"])
    calib = _dataset(work / "calib", args.calib_videos, args.calib_seed)

    ckpt = demo_checkpoint()
    exports = work / "exports"
    fp32, int8 = exports / f"{ckpt.stem}.onnx", exports / f"{ckpt.stem}.int8.onnx"
    export_cmd = [_tool("evad-export"), "--ckpt", str(ckpt), "--height", str(HEIGHT),
                  "--width", str(WIDTH), "--onnx-only", "--int8", "--calib", str(work / "calib"),
                  "--calib-clips", str(args.calib_clips), "--out", str(exports)]
    for p in (fp32, int8):  # evad-export refuses nothing here, but stale files must not count
        p.unlink(missing_ok=True)
    export_s = _run(export_cmd)
    q = read_metadata(int8)["quantization"]

    runs: dict[str, dict] = {}
    plan = [("ort", "fp32", fp32), ("ort", "int8", int8), ("openvino", "fp32", fp32),
            ("openvino", "int8", int8)] + ([("openvino", "bf16", fp32)] if args.bf16 else [])
    for backend, precision, onnx in plan:
        runs[f"{backend}_{precision}"] = _evaluate(work / "heldout", onnx, backend, precision,
                                                   work)
    deltas = {b: runs[f"{b}_int8"]["mAP"] - runs[f"{b}_fp32"]["mAP"] for b in ("ort", "openvino")}

    import onnxruntime
    import openvino

    result = {
        "what": "issue #27 bar 2 (first half): the demo model's held-out frame mAP@0.5 in "
                "calibrated INT8 (Q/DQ) against fp32, ONNX Runtime and OpenVINO",
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
        "versions": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                     "openvino": openvino.__version__},
        "checkpoint": {"path": str(ckpt.relative_to(ROOT)), "sha256": file_sha256(ckpt)},
        "export": {"command": _shown(export_cmd, work),
                   "seconds": round(export_s, 1),
                   "fp32_onnx": {"file": fp32.name, "sha256": file_sha256(fp32)},
                   "int8_onnx": {"file": int8.name, "sha256": file_sha256(int8)}},
        "heldout": heldout,
        "calibration": {"set": calib, "source": "the demo's training-set maker (evad-train "
                        "--make-data, the seeds the demo model was trained on), not held out",
                        "clips": q["calibration_clips"], "data_kind": q["calibration_data"],
                        "data_sha256": q["calibration_sha256"], "method": q["method"],
                        "activations": q["activations"], "weights": q["weights"],
                        "float_nodes": len(q["float_nodes"])},
        "runs": runs,
        "delta_int8_minus_fp32": deltas,
        "bar": args.bar,
        "within_bar": {b: abs(d) <= args.bar for b, d in deltas.items()},
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps({k: result[k] for k in ("delta_int8_minus_fp32", "within_bar")}, indent=1))
    for name, r in runs.items():
        print(f"{name:14s} mAP {r['mAP']:.4f}  {r['seconds']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
