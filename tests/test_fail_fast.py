"""The refusals a user meets first come before anything heavy loads: ``evad-export`` on a
machine without TensorRT, or with a checkpoint that is not there, exits 2 with one line in a
fraction of a second, in a fresh process, with torch never imported (measured: 0.2 s wall on the
2-core development VM, Python's own start included; torch alone takes 1-2 s warm, ~10 s from a
cold disk)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from evad.engines.environment import missing_for_engine_build

#: the export command in a fresh interpreter, with torch made unimportable: a refusal that
#: needed torch would turn into an ImportError here
_CMD = [sys.executable, "-c",
        "import sys; sys.modules['torch'] = None\n"
        "from evad.cli.export import main; sys.exit(main(sys.argv[1:]))"]


@pytest.mark.parametrize(("args", "says"), [
    (["--ckpt", "missing.pth", "--onnx-only"], "checkpoint missing.pth does not exist"),
    (["--preset", "tiny", "--fp16"], "the fp16 TensorRT engine step needs"),
])
def test_export_refuses_before_torch_loads(args, says, tmp_path) -> None:
    if "--fp16" in args and not [m for m in missing_for_engine_build() if not m.optional]:
        pytest.skip("this machine can build TensorRT engines")
    t0 = time.perf_counter()
    r = subprocess.run([*_CMD, *args, "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert not (tmp_path / "out").exists()
