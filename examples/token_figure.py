"""Make the README's token picture and its figures: ``evad-tokens`` with the demo model on
every keyframe of the demo video (20 s, one keyframe a second). The 5 s strip is written as
``tokens_demo.png`` and the per-block figures (kept share, motion ratio of kept over dropped
tokens, per keyframe and their median) as ``tokens_demo.json``.

By default both go to a folder of your own (``--out``, default ``runs/token_figure``), so a run
never touches a tracked file. Only ``--update-committed`` replaces the committed figure and
its numbers, ``docs/images/tokens_demo.png`` and ``benchmarks/results/tokens_demo.json`` (the
README shows the one and quotes the other; ``tests/test_readme_figures.py`` checks them)::

    python examples/token_figure.py                       # -> runs/token_figure/
    python examples/token_figure.py --out /tmp/tokens     # -> /tmp/tokens/
    python examples/token_figure.py --update-committed    # the README's figure and JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evad.atomic import write_bytes_atomic, write_json_atomic
from evad.command import ArgumentParser, check_output_dir, run_command

ROOT = Path(__file__).resolve().parents[1]
#: the tracked files that --update-committed replaces
COMMITTED_PNG = ROOT / "docs" / "images" / "tokens_demo.png"
COMMITTED_JSON = ROOT / "benchmarks" / "results" / "tokens_demo.json"
_PROG = "token_figure.py"


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Run evad-tokens with the demo model on the demo video's 20 "
        "keyframes; write the 5 s strip (tokens_demo.png) and the per-block figures "
        "(tokens_demo.json) into --out. Tracked files are replaced only with "
        "--update-committed.")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=Path("runs") / "token_figure",
                       help="folder for tokens_demo.png and tokens_demo.json (default "
                       "runs/token_figure)")
    where.add_argument("--update-committed", action="store_true",
                       help=f"replace the committed {COMMITTED_PNG.relative_to(ROOT)} and "
                       f"{COMMITTED_JSON.relative_to(ROOT)} (the README's figure) instead")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.update_committed:
        png, report = COMMITTED_PNG, COMMITTED_JSON
    else:
        png, report = args.out / "tokens_demo.png", args.out / "tokens_demo.json"
    return run_command(_PROG, lambda: _make(png, report, args.update_committed))


def _make(png: Path, report: Path, committed: bool) -> int:
    """Run evad-tokens into a temporary folder, then write ``png`` and ``report`` (atomically:
    an interrupted run leaves the earlier files as they were)."""
    for path in (png, report):
        check_output_dir(path.parent, "the output folder")
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.json"
        argv = ["--out", tmp, "--json", str(tokens)]
        for t in range(20):  # the demo video: 20 s, a keyframe per second
            argv += ["--time", str(t)]
        # the installed command, as a user runs it (examples use commands, not their modules)
        code = subprocess.run(["evad-tokens", *argv], check=False).returncode
        if code:
            return code
        data = json.loads(tokens.read_text())
        strip = (Path(tmp) / "tokens_5s.png").read_bytes()
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
    data["command"] = "python examples/token_figure.py" + (" --update-committed" if committed
                                                           else "")
    for path in (png, report):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(png, strip)
    write_json_atomic(report, data)
    print("median motion ratio (kept / dropped) per block:", data["median_motion_ratio"])
    print(f"{_PROG}: wrote {png} and {report}"
          + ("" if committed else " (the committed figure: --update-committed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
