"""Wall time of one full EVAD forward on the CPU (torch reference), e.g. vit_b_ktp at 288x512.

    python benchmarks/forward_cpu.py --preset vit_b_ktp --height 288 --width 512 --runs 3

Prints the token counts, the analytic GFLOPs, each run's wall time and the median; ``--json PATH``
also writes them (machine, torch version, threads, date) for ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import numpy as np
import torch

from evad.models import PRESETS, build_model
from evad.models.flops import flops
from evad.models.runner import TorchRunner
from evad.runner import kept_blocks, kept_idx_name
from evad.runtime.benchmark import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vit_b_ktp", choices=list(PRESETS))
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up run")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    torch.manual_seed(0)
    runner = TorchRunner(build_model(args.preset), args.preset, "cpu")
    frames = runner.model.preset.num_frames
    clip = torch.randn(args.batch, 3, frames, args.height, args.width).numpy()
    size = np.tile(np.array([[args.height, args.width]], np.int64), (args.batch, 1))
    times = []
    t0 = time.perf_counter()
    out = runner(clip, size)
    warm = time.perf_counter() - t0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        runner(clip, size)
        times.append(time.perf_counter() - t0)
    s = (args.height // 16) * (args.width // 16)
    tokens = [frames // 2 * s] + [out[kept_idx_name(b)].shape[1] + s for b in kept_blocks(out)]
    gflops = flops(args.preset, args.height, args.width)["total"]
    result = {
        "preset": args.preset, "height": args.height, "width": args.width, "batch": args.batch,
        "tokens": tokens, "gflops_per_clip": round(gflops, 1),
        "warmup_s": round(warm, 3), "runs_s": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        "device": f"CPU: {cpu_name()}",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    print(f"{args.preset} {args.batch}x3x{frames}x{args.height}x{args.width}: tokens "
          f"{' -> '.join(map(str, tokens))}, {gflops:.1f} GFLOPs/clip, {result['threads']} threads")
    print(f"warm-up {warm:.2f} s; runs {', '.join(f'{t:.2f}' for t in times)} s; "
          f"median {result['median_s']:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
