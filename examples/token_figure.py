"""Make the README's token picture and its figures: ``evad-tokens`` with the demo model on
every keyframe of the demo video; the 5 s strip goes to docs/images/tokens_demo.png and the
per-block figures (kept share, motion ratio of kept over dropped tokens, per keyframe and their
median) to benchmarks/results/tokens_demo.json.

    python examples/token_figure.py
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from evad.atomic import write_json_atomic
from evad.cli.tokens import main as tokens_main

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "tokens.json"
        argv = ["--out", tmp, "--json", str(report)]
        for t in range(20):  # the demo video: 20 s, a keyframe per second
            argv += ["--time", str(t)]
        code = tokens_main(argv)
        if code:
            return code
        data = json.loads(report.read_text())
        images = ROOT / "docs" / "images"
        images.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "tokens_5s.png", images / "tokens_demo.png")
    per_block: dict[int, list[float]] = {}
    for kf in data["keyframes"]:
        for b in kf["blocks"]:
            per_block.setdefault(b["block"], []).append(b["motion_ratio"])
    for kf in data["keyframes"]:
        kf.pop("png")
    data["model"] = "the demo model (models/weights/demo.pth, preset demo) as ONNX, 128x256"
    data["video"] = "the demo video (evad.datasets.synthetic.make_demo_video)"
    data["median_motion_ratio"] = {str(b): round(statistics.median(r), 3)
                                   for b, r in sorted(per_block.items())}
    data["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or
                       platform.machine(), "date": time.strftime("%Y-%m-%d")}
    data["command"] = "python examples/token_figure.py"
    write_json_atomic(ROOT / "benchmarks" / "results" / "tokens_demo.json", data)
    print("median motion ratio (kept / dropped) per block:", data["median_motion_ratio"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
