"""The one table of backend x precision x device (``evad.runner.BACKEND_TABLE``) and the runner
interface around it: every command's ``--backend`` / ``--precision`` choices, the engine
builder's precision flags and the benchmark paths come from the table; every runner closes
what it holds in a ``with`` block (a counting fake, the real ONNX Runtime session, and the
runner a command opens); inputs that do not fit the model's signature are one line before any
backend runs; and only ``evad.runtime.backends`` constructs a runner (an AST walk)."""

from __future__ import annotations

import argparse
import ast
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evad.errors import BackendError
from evad.export.ort_runner import OrtRunner
from evad.models.runner import TorchRunner
from evad.runner import (
    BACKEND_TABLE,
    ENGINE_PRECISIONS,
    RUN_PRECISIONS,
    ModelSpec,
    Runner,
    RunnerBase,
    backend_choices,
    precision_choices,
)
from evad.runtime.backends import open_runner

ROOT = Path(__file__).resolve().parents[1]
#: the package's folders (what tests/test_stage_imports.py walks)
PACKAGE = ("evad", "models", "export", "engines", "plugins", "runtime", "datasets",
           "training", "evaluation", "serving", "cli")
RUNNERS = {"TrtRunner", "OrtRunner", "OpenVinoRunner", "TorchRunner"}
#: where runners may be constructed: the one opener, and each runner's own module
OPENERS = {"runtime/backends.py", "engines/trt_runner.py", "export/ort_runner.py",
           "export/openvino_runner.py", "models/runner.py"}


def _choices(ap: argparse.ArgumentParser, flag: str) -> tuple[str, ...] | None:
    for action in ap._actions:
        if flag in action.option_strings:
            return tuple(action.choices) if action.choices is not None else None
    raise AssertionError(f"{ap.prog} has no {flag}")


def _flags(ap: argparse.ArgumentParser) -> set[str]:
    return {s for a in ap._actions for s in a.option_strings}


# --- the table and the commands -------------------------------------------------------------

def test_the_table_says_what_runs_where() -> None:
    """The table's rows as the README and docs/design.md describe them (values, not code)."""
    rows = {(r.backend, r.device): r for r in BACKEND_TABLE}
    assert list(rows) == [("trt", "cuda"), ("ort", "cuda"), ("torch", "cuda"),
                          ("openvino", "cpu"), ("ort", "cpu"), ("torch", "cpu")]
    assert RUN_PRECISIONS == ("fp32", "bf16", "bf16-int8w", "int8")
    assert ENGINE_PRECISIONS == ("fp32", "tf32", "fp16", "bf16")
    assert {b: r.model for (b, _), r in rows.items()} == {
        "trt": "engine", "ort": "onnx", "torch": "ckpt", "openvino": "onnx"}
    assert [b for (b, _), r in rows.items() if not r.torch_free] == ["torch", "torch"]
    # auto at bf16 on a CPU: OpenVINO, then torch; at fp32: ONNX Runtime, then torch
    cpu = [r for r in BACKEND_TABLE if r.device == "cpu"]
    assert [r.backend for r in cpu if "bf16" in r.auto] == ["openvino", "torch"]
    assert [r.backend for r in cpu if "fp32" in r.auto] == ["ort", "torch"]
    assert backend_choices() == ("auto", "trt", "ort", "torch", "openvino")


def test_design_doc_shows_the_table_as_the_code_has_it() -> None:
    """docs/design.md's backend table, row for row, is ``BACKEND_TABLE``."""
    text = (ROOT / "docs" / "design.md").read_text()
    head = "| backend | device | model file | precisions | set at | auto at | torch-free |"
    assert head in text
    lines = text[text.index(head):].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in lines[:lines.index("")]]
    want = [[r.backend, r.device, r.model, ", ".join(r.precisions), r.set_at, ", ".join(r.auto),
             "yes" if r.torch_free else "no"] for r in BACKEND_TABLE]
    assert rows == want


def test_every_command_takes_its_choices_from_the_table() -> None:
    from evad.cli.bench import _parser as bench_parser
    from evad.cli.parity import _parser as parity_parser
    from evad.cli.tokens import _parser as tokens_parser
    from evad.engines.cli import _parser as build_parser
    from evad.engines.cli import precision_of
    from evad.evaluation.cli import parser as eval_parser
    from evad.runtime.benchmark import PATHS
    from evad.runtime.cli import parser as run_parser

    run = run_parser()
    assert _choices(run, "--backend") == backend_choices()
    assert _choices(run, "--precision") == precision_choices() == RUN_PRECISIONS
    tokens = tokens_parser()
    assert _choices(tokens, "--backend") == backend_choices()
    # evad-eval runs a --ckpt or an --onnx: every backend but TensorRT
    ev = eval_parser()
    assert _choices(ev, "--backend") == backend_choices(("onnx", "ckpt"))
    assert _choices(ev, "--backend") == ("auto", "ort", "torch", "openvino")
    assert _choices(ev, "--precision") == RUN_PRECISIONS
    # evad-parity runs an --onnx in ORT or OpenVINO (an --engine in TensorRT)
    par = parity_parser()
    assert _choices(par, "--backend") == backend_choices(("onnx",), auto=False)
    assert _choices(par, "--backend") == ("ort", "openvino")
    assert _choices(par, "--precision") == precision_choices(("ort", "openvino"))
    # evad-build-engine: one flag per engine precision but the default
    build = build_parser()
    assert {f"--{p}" for p in ENGINE_PRECISIONS[1:]} <= _flags(build)
    for p in ENGINE_PRECISIONS:
        argv = ["x.onnx"] + ([f"--{p}"] if p != "fp32" else [])
        assert precision_of(build.parse_args(argv)) == p
    # evad-bench: one path per row x precision (an engine: one path at its built precision)
    want = {(r.backend, p if r.set_at == "run" else "engine", r.device, r.model)
            for r in BACKEND_TABLE for p in (r.precisions if r.set_at == "run" else ("-",))}
    assert {(p.backend, p.precision, p.device, p.needs) for p in PATHS.values()} == want
    assert {"torch-fp32", "torch-bf16", "ort-fp32", "openvino-fp32", "openvino-bf16",
            "openvino-bf16-int8w", "torch-cuda-fp32", "torch-cuda-bf16", "trt"} <= set(PATHS)
    assert "--paths" in _flags(bench_parser())


def test_one_batch_flag_and_one_keyframe_stride_range() -> None:
    from evad.cli.tokens import _parser as tokens_parser
    from evad.runtime.cli import parser as run_parser

    run = run_parser()
    assert run.parse_args(["v.mp4", "--batch", "3"]).batch_size == 3
    # the first spelling still parses, and --help shows one
    assert run.parse_args(["v.mp4", "--batch-size", "2"]).batch_size == 2
    assert run.parse_args(["v.mp4"]).batch_size == 0
    assert "--batch-size" not in run.format_help() and "--batch " in run.format_help()
    for ap in (run, tokens_parser()):
        assert ap.parse_args(["v.mp4", "--keyframe-stride", "3600"]).keyframe_stride == 3600
        for bad in ("0", "3600.5", "-1"):
            with pytest.raises(SystemExit):
                ap.parse_args(["v.mp4", "--keyframe-stride", bad])


def test_open_runner_refuses_what_the_table_does_not_run(tiny_onnx: Path) -> None:
    with pytest.raises(BackendError, match=r"--backend ort does not run --precision bf16; "
                       r"bf16 runs on torch \(cuda, --ckpt\), openvino \(cpu, --onnx\)"):
        open_runner("ort", onnx=tiny_onnx, precision="bf16")
    with pytest.raises(BackendError, match="an engine runs the precision it was built with"):
        open_runner("trt", onnx=tiny_onnx, precision="bf16")
    with pytest.raises(BackendError, match="--backend openvino runs on the CPU only"):
        open_runner("openvino", onnx=tiny_onnx, cuda=True)
    with pytest.raises(BackendError, match="--backend torch needs a checkpoint"):
        open_runner("torch", onnx=tiny_onnx)
    # auto at bf16-int8w from a checkpoint: only OpenVINO runs it
    with pytest.raises(BackendError, match=r"bf16-int8w runs on openvino \(cpu, --onnx\)$"):
        open_runner("auto", ckpt=tiny_onnx, precision="bf16-int8w")


# --- close() and with -----------------------------------------------------------------------

class CountingRunner(RunnerBase):
    """A runner that holds a counted resource: ``held`` goes 1 -> 0 on release."""

    def __init__(self) -> None:
        self.backend, self.precision, self.name, self.on_gpu = "fake", "fp32", "fake", False
        self.spec = ModelSpec("fake model", (4, 4), 2, 1, 4, 4, (0.0, 0.0, 0.0),
                              (1.0, 1.0, 1.0), 0.5)
        self.metadata: dict[str, Any] = {}
        self.clip_shape = (3, 2, 4, 4)
        self.held, self.released, self.calls = 1, 0, 0

    def _infer(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"boxes": np.zeros((clip.shape[0], 1, 4), np.float32)}

    def _release(self) -> None:
        self.held -= 1
        self.released += 1


def test_with_closes_a_counting_runner_once_also_on_error() -> None:
    clip, size = np.zeros((2, 3, 2, 4, 4), np.float32), np.full((2, 2), 4, np.int64)
    with CountingRunner() as runner:
        assert isinstance(runner, Runner)  # the protocol, as a fake implements it
        assert runner(clip, size)["boxes"].shape == (2, 1, 4)
        assert runner.held == 1
    assert (runner.held, runner.released, runner.calls) == (0, 1, 1)
    runner.close()  # idempotent
    assert runner.released == 1
    with pytest.raises(BackendError, match=r"^fake on fake model was closed: open the model "
                       r"again to run it$"):
        runner(clip, size)
    assert runner.calls == 1
    other = CountingRunner()
    with pytest.raises(RuntimeError), other:
        raise RuntimeError("a failure inside the block")
    assert (other.held, other.released) == (0, 1)


def test_with_releases_the_onnx_runtime_session(tiny_onnx: Path) -> None:
    clip = np.random.default_rng(0).standard_normal((1, 3, 16, 96, 192), dtype=np.float32)
    size = np.array([[96, 192]], np.int64)
    with open_runner("ort", onnx=tiny_onnx, cuda=False)[0] as runner:
        assert runner.backend == "ort" and runner.precision == "fp32"
        assert runner.metadata["input_size"] == [96, 192]
        out = runner(clip, size)
        assert out["boxes"].shape[0] == 1
        assert isinstance(runner, OrtRunner)
        session = weakref.ref(runner.session)
    assert session() is None, "the session outlived close()"
    assert not hasattr(runner, "session")
    with pytest.raises(BackendError) as info:
        runner(clip, size)
    assert str(info.value) == (f"ort (CPUExecutionProvider) on ONNX model {tiny_onnx} was "
                               "closed: open the model again to run it")


def test_a_command_closes_the_runner_it_opens(tiny_onnx: Path, sample_mp4: Path,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``evad-trt-run`` on a video: the ONNX Runtime session it opened is released when the
    run ends (counted on the real runner's release)."""
    from evad.runtime.cli import main

    released: list[OrtRunner] = []
    real = OrtRunner._release

    def counting(self: OrtRunner) -> None:
        released.append(self)
        real(self)

    monkeypatch.setattr(OrtRunner, "_release", counting)
    rc = main([str(sample_mp4), "--onnx", str(tiny_onnx), "--out", str(tmp_path / "o"),
               "--quiet", "--keyframe-stride", "2", "--batch", "2"])
    assert rc == 0
    assert len(released) == 1 and not hasattr(released[0], "session")


# --- the input check ------------------------------------------------------------------------

def test_ort_refuses_a_clip_that_does_not_fit_in_one_line(tiny_onnx: Path) -> None:
    size = np.array([[96, 160]], np.int64)
    with open_runner("ort", onnx=tiny_onnx, cuda=False)[0] as runner:
        # a 4:3 clip padded to 96 x 160 against the export's fixed 96 x 192
        with pytest.raises(BackendError) as info:
            runner(np.zeros((1, 3, 16, 96, 160), np.float32), size)
        assert str(info.value) == (
            f"clip of shape (1, 3, 16, 96, 160) does not fit: ort (CPUExecutionProvider) on "
            f"ONNX model {tiny_onnx} takes clip (B, 3, 16, 96, 192) float32 and image_size "
            "(B, 2) int64")
        with pytest.raises(BackendError, match=r"^clip is int64, not float: "):
            runner(np.zeros((1, 3, 16, 96, 192), np.int64), size)
        with pytest.raises(BackendError, match=r"^image_size of shape \(2,\) for 1 clip\(s\)"):
            runner(np.zeros((1, 3, 16, 96, 192), np.float32), np.array([96, 192]))
        with pytest.raises(BackendError, match=r"^clip of shape \(0, 3, 16, 96, 192\)"):
            runner(np.zeros((0, 3, 16, 96, 192), np.float32), np.zeros((0, 2), np.int64))


def test_torch_refuses_a_clip_that_does_not_fit_in_one_line(tiny_model) -> None:
    with open_runner("torch", model=tiny_model, model_name="tiny", cuda=False)[0] as runner:
        assert isinstance(runner, TorchRunner) and runner.metadata["preset_name"] == "tiny"
        frames = runner.spec.num_frames
        with pytest.raises(BackendError) as info:
            runner(np.zeros((1, 3, frames - 1, 96, 160), np.float32),
                   np.array([[96, 160]], np.int64))
        assert str(info.value) == (
            f"clip of shape (1, 3, {frames - 1}, 96, 160) does not fit: torch (cpu) on tiny "
            f"takes clip (B, 3, {frames}, any, any) float32 and image_size (B, 2) int64")
        with pytest.raises(BackendError, match=r"^image_size is float64, not an integer"):
            runner(np.zeros((1, 3, frames, 96, 160), np.float32), np.array([[96.0, 160.0]]))
        # any H x W runs in torch
        out = runner(torch.zeros(1, 3, frames, 96, 160).numpy(), np.array([[96, 160]]))
        assert out["boxes"].shape[0] == 1


# --- who constructs runners -----------------------------------------------------------------

def _package_files() -> list[Path]:
    return [p for folder in PACKAGE for p in sorted((ROOT / folder).rglob("*.py"))
            if "build" not in p.relative_to(ROOT).parts[1:-1]]


def _called_name(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr == "from_checkpoint" and \
            isinstance(f.value, (ast.Name, ast.Attribute)):
        f = f.value
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def test_only_open_runner_constructs_runners_and_no_call_site_casts_one() -> None:
    made, asserts, ignores = [], [], []
    for path in _package_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) in RUNNERS and \
                    rel not in OPENERS:
                made.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Assert) and isinstance(node.test, ast.Call) and \
                    isinstance(node.test.func, ast.Name) and node.test.func.id == "isinstance":
                shown = ast.unparse(node.test)
                if "runner" in shown.lower() or any(r in shown for r in RUNNERS):
                    asserts.append(f"{rel}:{node.lineno}: {shown}")
        for i, line in enumerate(text.splitlines(), 1):
            if "type: ignore" in line and "runner" in line.lower():
                ignores.append(f"{rel}:{i}")
    assert not made, f"runners constructed outside evad.runtime.backends: {made}"
    assert not asserts, f"assert isinstance on a runner: {asserts}"
    assert not ignores, f"type: ignore on a runner: {ignores}"
