"""The refusals a user meets first come before anything heavy loads. Every command that takes
a model file (checkpoint, ONNX, TensorRT engine) refuses a missing or unreadable one, and a
machine without TensorRT (or a GPU) for an engine step, with exit code 2 and one line naming
the file, in a fresh process where torch cannot be imported (an import hook refuses it and
counts the tries: a refusal that needed torch would fail, one that tried it and carried on is
counted). Each must take under 2 s of wall time, Python's own start included (torch alone
takes 1-2 s warm and ~10 s from a cold disk).

Measured (``python tests/test_fail_fast.py --record``, which writes
``benchmarks/results/fail_fast.json``): every case in a fresh process of the command's main,
torch importable, right after the page cache of the standard library, site-packages and the
checkout was dropped (``posix_fadvise(DONTNEED)``; torch's own files were left alone), on the
2-core Intel Xeon development VM, 2026-12-06: 0.19-0.96 s per case (the slowest: a runner's
missing-TensorRT refusal, which loads the CUDA bindings to say so); evad-bench, which asked
torch for a GPU before its file checks (2.0-2.4 s), now checks its files first."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from evad.engines.environment import missing_for_engine_build

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "results" / "fail_fast.json"

#: command -> the module whose ``main`` it runs (pyproject.toml's [project.scripts])
ENTRY = {"evad-export": "evad.cli.export", "evad-build-engine": "evad.engines.cli",
         "evad-parity": "evad.cli.parity", "evad-trt-run": "evad.cli.trt_run",
         "evad-tokens": "evad.cli.tokens", "evad-eval": "evad.evaluation.cli",
         "evad-bench": "evad.cli.bench", "evad-triton-repo": "evad.cli.triton_repo",
         "evad-train": "evad.training.cli"}


@dataclass(frozen=True)
class Case:
    """One refusal: ``command`` run with ``args`` in the inputs folder says ``says`` (one line,
    exit 2). ``engine_step``: a missing-TensorRT case, skipped where the machine has it."""

    command: str
    case: str
    args: tuple[str, ...]
    says: str
    engine_step: bool = False

    @property
    def id(self) -> str:
        return f"{self.command}:{self.case}"


_NO_ENGINE = "the fp16 TensorRT engine step needs"  # evad-export / evad-build-engine
_NO_TRT = "the trt backend needs"  # a runner: no TensorRT, or no CUDA GPU for it
CASES = [
    Case("evad-export", "missing checkpoint", ("--ckpt", "missing.pth", "--onnx-only"),
         "checkpoint missing.pth does not exist"),
    Case("evad-export", "empty checkpoint", ("--ckpt", "empty.pth", "--onnx-only"),
         "checkpoint empty.pth is empty"),
    Case("evad-export", "missing TensorRT", ("--preset", "tiny", "--fp16"), _NO_ENGINE, True),
    Case("evad-build-engine", "missing ONNX", ("missing.onnx",),
         "ONNX model missing.onnx does not exist"),
    Case("evad-build-engine", "missing TensorRT", ("model.onnx", "--fp16"), _NO_ENGINE, True),
    Case("evad-parity", "missing ONNX", ("--onnx", "missing.onnx"),
         "ONNX model missing.onnx does not exist"),
    Case("evad-parity", "empty ONNX", ("--onnx", "empty.onnx"), "ONNX model empty.onnx is empty"),
    Case("evad-parity", "missing checkpoint", ("--onnx", "model.onnx", "--ckpt", "missing.pth"),
         "checkpoint missing.pth does not exist"),
    Case("evad-parity", "missing engine", ("--engine", "missing.engine"),
         "TensorRT engine missing.engine does not exist"),
    Case("evad-parity", "missing layerwise ONNX",
         ("--onnx", "model.onnx", "--layerwise-against", "missing.onnx"),
         "--layerwise-against ONNX model missing.onnx does not exist"),
    Case("evad-parity", "missing TensorRT", ("--engine", "model.engine"), _NO_TRT, True),
    Case("evad-trt-run", "missing ONNX", ("clip.mp4", "--onnx", "missing.onnx"),
         "ONNX model missing.onnx does not exist"),
    Case("evad-trt-run", "missing checkpoint", ("clip.mp4", "--ckpt", "missing.pth"),
         "checkpoint missing.pth does not exist"),
    Case("evad-trt-run", "missing engine", ("clip.mp4", "--engine", "missing.engine"),
         "TensorRT engine missing.engine does not exist"),
    Case("evad-trt-run", "empty engine", ("clip.mp4", "--engine", "empty.engine"),
         "TensorRT engine empty.engine is empty"),
    Case("evad-trt-run", "missing TensorRT", ("clip.mp4", "--engine", "model.engine"), _NO_TRT,
         True),
    Case("evad-tokens", "missing ONNX", ("clip.mp4", "--onnx", "missing.onnx"),
         "ONNX model missing.onnx does not exist"),
    Case("evad-tokens", "missing checkpoint", ("clip.mp4", "--ckpt", "missing.pth"),
         "checkpoint missing.pth does not exist"),
    Case("evad-tokens", "missing engine", ("clip.mp4", "--engine", "missing.engine"),
         "TensorRT engine missing.engine does not exist"),
    Case("evad-eval", "missing ONNX", ("--data", "data", "--onnx", "missing.onnx"),
         "ONNX model missing.onnx does not exist"),
    Case("evad-eval", "missing checkpoint", ("--data", "data", "--ckpt", "missing.pth"),
         "checkpoint missing.pth does not exist"),
    Case("evad-eval", "empty checkpoint", ("--data", "data", "--ckpt", "empty.pth"),
         "checkpoint empty.pth is empty"),
    Case("evad-bench", "missing ONNX", ("--onnx", "missing.onnx"),
         "ONNX model missing.onnx does not exist"),
    Case("evad-bench", "missing checkpoint", ("--ckpt", "missing.pth"),
         "checkpoint missing.pth does not exist"),
    Case("evad-bench", "missing engine", ("--preset", "tiny", "--engine", "missing.engine"),
         "TensorRT engine missing.engine does not exist"),
    Case("evad-triton-repo", "missing ONNX", ("--onnx", "missing.onnx", "--out", "repo"),
         "ONNX model missing.onnx does not exist"),
    Case("evad-triton-repo", "missing engine",
         ("--onnx", "model.onnx", "--engine", "missing.engine", "--out", "repo"),
         "TensorRT engine missing.engine does not exist"),
    Case("evad-train", "missing data", ("--data", "missing", "--out", "run"),
         "--data folder missing does not exist"),
    Case("evad-train", "empty checkpoint to resume", ("--data", "data", "--out", "run",
                                                      "--resume"),
         "checkpoint run/last.pth is empty"),
]


def make_inputs(folder: Path) -> Path:
    """The files the cases name, in ``folder``: a readable 2 s video, placeholder model files
    (the refusals come before any is parsed), empty ones, an AVA folder, an empty
    ``run/last.pth``."""
    import cv2  # the test's own video; the commands under test never get this far
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    video = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                            (64, 48))
    for i in range(20):
        video.write(np.full((48, 64, 3), 10 * i, np.uint8))
    video.release()
    for name in ("model.onnx", "model.engine"):
        (folder / name).write_bytes(b"placeholder")
    (folder / "model.engine.json").write_text('{"format_version": 1, "precision": "fp32"}')
    for name in ("empty.pth", "empty.onnx", "empty.engine"):
        (folder / name).write_bytes(b"")
    (folder / "data" / "videos").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "videos" / "clip.mp4").write_bytes((folder / "clip.mp4").read_bytes())
    (folder / "data" / "annotations.csv").write_text("clip,1,0.1,0.1,0.5,0.9,1,0\n")
    (folder / "run").mkdir(exist_ok=True)
    (folder / "run" / "last.pth").write_bytes(b"")
    return folder


#: the command's ``main`` in a fresh interpreter, behind an import hook that notes every import
#: of torch (and, with BLOCK, refuses it). A hook, not ``sys.modules['torch'] = None``: code
#: that imports torch when it can and carries on without it is seen too.
_WRAPPER = """\
import sys
class Watch:
    tried = set()
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] == 'torch':
            self.tried.add(name)
            if BLOCK:
                raise ModuleNotFoundError(f'torch is blocked here ({name})', name=name)
        return None
watch = Watch()
sys.meta_path.insert(0, watch)
from MODULE import main
try:
    code = main(sys.argv[1:])
finally:
    print('torch imports:', len(watch.tried))
sys.exit(code)
"""


def _wrapped(command: str, block: bool = True) -> list[str]:
    """``command``'s main in a fresh interpreter; it prints ``torch imports: N`` last on
    stdout; ``block``: torch cannot be imported."""
    code = _WRAPPER.replace("MODULE", ENTRY[command]).replace("BLOCK", str(block))
    return [sys.executable, "-c", code]


def _torch_imports(stdout: str) -> int:
    """How many torch modules the wrapped command tried to import."""
    return int(stdout.strip().splitlines()[-1].removeprefix("torch imports:"))


#: commands known to import torch before their file checks (still under 2 s when torch is
#: warm, ~10 s cold), with why; each case of theirs is an expected failure of that check only
#: commands allowed to try torch before they refuse a file (none: each checks its files first)
TORCH_FIRST: dict[str, str] = {}


def _run(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``argv`` in ``cwd``; the result and its wall time in seconds."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)
    return r, time.perf_counter() - t0


def _can_run_engines() -> bool:
    return not [m for m in missing_for_engine_build() if not m.optional]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("fail_fast"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refuses_before_torch_loads(case: Case, inputs: Path) -> None:
    if case.engine_step and _can_run_engines():
        pytest.skip("this machine can build and run TensorRT engines")
    before = sorted(p.name for p in inputs.iterdir())
    r, seconds = _run([*_wrapped(case.command), *case.args], inputs)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{case.command}: error: ") and case.says in lines[0], lines[0]
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert sorted(p.name for p in inputs.iterdir()) == before  # nothing was written
    if case.command in TORCH_FIRST and _torch_imports(r.stdout):
        pytest.xfail(TORCH_FIRST[case.command])
    assert _torch_imports(r.stdout) == 0, "the refusal tried to import torch"


def test_every_command_with_a_model_file_is_covered() -> None:
    """Each command that takes a model file has its missing-file cases here."""
    covered = {(c.command, c.case) for c in CASES}
    for command in ENTRY:
        assert any(cmd == command and "missing" in what for cmd, what in covered), command


def _evict_page_cache() -> int:
    """Drop the page cache of the standard library's and site-packages' files (not torch's,
    which no case reads), so the next process reads them from disk as on a cold start.
    Returns the number of files."""
    n = 0
    paths = sysconfig.get_paths()
    for root in {paths["stdlib"], paths["purelib"], paths["platlib"], str(ROOT)}:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(("torch", "nvidia", ".git"))]
            for name in files:
                try:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    n += 1
                finally:
                    os.close(fd)
    return n


def record(out: Path, machine: str, date: str) -> None:
    """Time every case as a user meets it (the installed command, torch importable) on a cold
    page cache, and write the table to ``out``."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_inputs(Path(tmp))
        for case in CASES:
            if case.engine_step and _can_run_engines():
                continue
            files = _evict_page_cache()
            # the wrapper is the installed script's own two lines (import main, call it), with
            # the hook that tells whether torch was imported
            r, seconds = _run([*_wrapped(case.command, block=False), *case.args], folder)
            line = r.stderr.strip()
            assert r.returncode == 2 and case.says in line, (case.id, r.stderr)
            rows.append({"command": case.command, "case": case.case,
                         "argv": " ".join([case.command, *case.args]),
                         "seconds": round(seconds, 2), "exit_code": r.returncode,
                         "message": line, "torch_imported": _torch_imports(r.stdout) > 0,
                         "evicted_files": files})
            print(f"{case.id:45} {seconds:5.2f} s  torch {rows[-1]['torch_imported']}")
    data = {
        "what": "wall time of each refusal in tests/test_fail_fast.py, as a user meets it: "
                "the command's main in a fresh process, torch importable, right after the "
                "page cache of the standard library, site-packages (torch's files excepted) "
                "and the checkout was dropped with posix_fadvise(POSIX_FADV_DONTNEED); "
                "torch_imported: whether the refusal imported torch (then its time is with "
                "torch warm: add ~10 s on a cold disk)",
        "command": "python tests/test_fail_fast.py --record",
        "machine": {"description": machine, "python": platform.python_version(),
                    "date": date},
        "bar_seconds": 2.0,
        "torch_first": TORCH_FIRST,
        "max_seconds": max(r["seconds"] for r in rows),
        "cases": rows,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}: max {data['max_seconds']} s over {len(rows)} cases")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Measure the refusals on a cold page cache.")
    ap.add_argument("--record", action="store_true", help=f"write {RECORD.relative_to(ROOT)}")
    ap.add_argument("--machine", default="2-core Intel Xeon VM (the development machine)")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    a = ap.parse_args()
    if a.record:
        record(RECORD, a.machine, a.date)
