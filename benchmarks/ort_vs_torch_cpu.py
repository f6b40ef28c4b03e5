"""ONNX Runtime (CPU) vs torch (CPU) latency of one exported EVAD model, in one process.

    evad-export --preset vit_b_ktp --out exports --onnx-only      # or --ckpt ...
    python benchmarks/ort_vs_torch_cpu.py exports/vit_b_ktp_random0.onnx --runs 5

The torch model is rebuilt from the ONNX metadata (the checkpoint with --ckpt, else the seeded
calmed random weights the export used). Runs alternate between the backends after one warm-up
each; prints each backend's runs and median, ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from forward_cpu import cpu_name

from evad.export import preset_of, seeded_inputs
from evad.metadata import read_metadata
from evad.models import load_or_build
from evad.models.runner import TorchRunner
from evad.runtime.backends import open_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    meta = read_metadata(args.onnx)
    preset = preset_of(meta)
    model, _ = load_or_build(args.ckpt, preset, seed=0 if args.ckpt else meta["random_seed"])
    t0 = time.perf_counter()
    ort_model, _ = open_runner("ort", onnx=args.onnx)
    torch_model = TorchRunner(model, "reference", "cpu")
    session_s = time.perf_counter() - t0
    h, w = meta["input_size"]
    (clip,), (size,) = seeded_inputs(1, args.batch, preset.num_frames, h, w)

    def run_torch() -> None:
        torch_model(clip, size)

    def run_ort() -> None:
        ort_model(clip, size)

    times: dict[str, list[float]] = {"torch": [], "ort": []}
    run_torch()
    run_ort()
    for _ in range(args.runs):
        for name, fn in (("torch", run_torch), ("ort", run_ort)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    result = {
        "onnx": args.onnx.name, "preset": preset.name, "input": [args.batch, 3,
                                                                  preset.num_frames, h, w],
        "tokens": meta["tokens"], "ort_session_create_s": round(session_s, 2),
        **{f"{k}_runs_s": [round(t, 3) for t in v] for k, v in times.items()},
        **{f"{k}_median_s": round(statistics.median(v), 3) for k, v in times.items()},
        "device": f"CPU: {cpu_name()}", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "date": datetime.date.today().isoformat(),
    }
    for k in ("torch", "ort"):
        print(f"{k:>5}: runs {', '.join(f'{t:.2f}' for t in times[k])} s; median "
              f"{result[f'{k}_median_s']:.2f} s")
    print(f"ORT session created in {session_s:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
