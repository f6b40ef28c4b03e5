"""Peak memory of ``evad-trt-run`` on a long video: bounded, whatever the length?

    python examples/make_sample_video.py long.mp4 --seconds 600 --width 1280 --height 720 --fps 30
    python benchmarks/runtime_memory.py exports/tiny_random0.onnx long.mp4 --json r.json -- --render

Runs ``evad-trt-run VIDEO --onnx ONNX --out TMP --quiet [extra args]`` as a child process,
samples its resident set (``VmRSS``) every second and reports the peak (the kernel's
``ru_maxrss`` of the child, which sees every spike) with the RSS over time, so growth would show.
The JSON is rewritten every 30 s, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forward_cpu import cpu_name


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("video", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.epilog = "arguments after -- go to evad-trt-run"
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    out = Path(tempfile.mkdtemp(prefix="evad-mem-"))
    cmd = [str(Path(sys.executable).with_name("evad-trt-run")), str(args.video), "--onnx",
           str(args.onnx), "--out", str(out / "o"), "--quiet", *extra]
    print(" ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    trace: list[tuple[float, float]] = []
    peak = 0.0
    result: dict = {"command": " ".join(cmd), "device": f"CPU: {cpu_name()}",
                    "date": datetime.date.today().isoformat()}

    def dump(done: bool) -> None:
        result.update({"finished": done, "elapsed_s": round(time.monotonic() - t0, 1),
                       "peak_rss_sampled_mb": round(peak, 1),
                       "rss_mb_every_30s": [round(r, 1) for t, r in trace if t % 30 < 1]})
        if args.json:
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, args.json)

    last_dump = 0.0
    while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        if rss is not None:
            peak = max(peak, rss)
            trace.append((round(time.monotonic() - t0), rss))
        if time.monotonic() - last_dump > 30:
            dump(False)
            last_dump = time.monotonic()
        time.sleep(1.0)
    result["returncode"] = proc.returncode
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                                  1)
    run = out / "o" / "run.json"
    if run.is_file():
        result["summary"] = json.loads(run.read_text()).get("summary")
    dump(True)
    print(f"peak RSS {result['peak_rss_mb']} MB (sampled {peak:.0f} MB), "
          f"{time.monotonic() - t0:.0f} s, exit {proc.returncode}")


if __name__ == "__main__":
    main()
