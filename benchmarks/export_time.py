"""Wall time per stage and peak memory of ``evad-export`` as a user runs it, e.g.

    python benchmarks/export_time.py --preset vit_b_ktp --height 288 --width 512 \\
        --json benchmarks/results/export_vit_b_ktp_288x512.json

Runs ``evad-export --preset P --onnx-only`` in a child process (into a temporary folder),
reads the elapsed time printed on each stage line, and takes the child's peak RSS from
``getrusage``; ``--json`` writes them with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

import onnxruntime
import torch
from forward_cpu import cpu_name

_STAGE = re.compile(r"^\[\s*([0-9.]+) s\] (\w+): (.*)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vit_b_ktp")
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmd = ["evad-export", "--preset", args.preset, "--height", str(args.height), "--width",
               str(args.width), "--onnx-only", "--out", out]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"evad-export failed: {proc.stderr.strip()[-500:]}")
    stages = []
    for line in proc.stdout.splitlines():
        m = _STAGE.match(line)
        if m:
            stages.append({"at_s": float(m[1]), "stage": m[2], "line": m[3][:160]})
            print(line[:140])
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    print(f"wall {wall:.1f} s (process start to exit), peak RSS {peak_gb:.2f} GB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(cmd[:-2]), "wall_s": round(wall, 1),
                       "peak_rss_gb": round(peak_gb, 2), "stages": stages,
                       "cpu": cpu_name(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                       "python": platform.python_version(),
                       "date": datetime.date.today().isoformat()}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
