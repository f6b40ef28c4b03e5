"""Runs tests/triton_interpreter_checks.py in a fresh Python process with TRITON_INTERPRET=1:
Triton's interpreter mode is fixed per process, so these checks must not share one with the
rest of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(os.environ.get("CI", "").lower() not in ("1", "true", "yes")
                    and __import__("importlib").util.find_spec("triton") is None,
                    reason="Triton not installed (pip install triton)")
def test_triton_kernels_under_the_interpreter() -> None:
    checks = Path(__file__).with_name("triton_interpreter_checks.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(checks)], env=env, capture_output=True, text=True, timeout=900,
                          cwd=checks.parent.parent)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
