"""The stage graph, read from the code: every module's imports (function bodies included, and
``lazy_import("evad.<stage>...")`` calls) against the table of allowed arrows, plus the rules
that make the arrows visible (cross-stage imports at module top, heavy packages loaded lazily)
and the torch-free paths importing no torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: folder -> the stage it is (``evad/`` holds the core: errors, runner interface, contracts)
STAGES = {"evad": "core", "models": "models", "export": "export", "engines": "engines",
          "plugins": "plugins", "runtime": "runtime", "datasets": "datasets",
          "training": "training", "evaluation": "evaluation", "serving": "serving",
          "cli": "cli"}
#: stage -> the stages it may import. models -> export -> engines -> runtime; plugins is used
#: by engines and runtime and uses none; datasets, training, evaluation consume; cli composes.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "export": {"core", "models"},
    "plugins": {"core"},
    "engines": {"core", "plugins"},
    "runtime": {"core", "models", "export", "engines", "plugins"},
    "datasets": {"core", "models"},
    "evaluation": {"core", "models", "export", "engines", "plugins", "runtime", "datasets"},
    "training": {"core", "models", "datasets", "evaluation", "runtime"},
    "serving": {"core", "engines", "runtime"},
    "cli": set(STAGES.values()),
}
#: third-party packages that must load lazily (``evad.lazy.lazy_import``) wherever they are used
LAZY = {"tensorrt", "onnxruntime", "triton", "cv2", "av", "openvino", "tensorrt_lean_bindings",
        "tensorrt_dispatch_bindings", "ray", "tritonclient", "triton_python_backend_utils",
        "cuda"}  # cuda-python (cuda.bindings): the TensorRT runner's device memory
#: modules that are themselves the lazy boundary (they import a heavy package at their top and
#: are only ever loaded through ``lazy_import``): Triton kernels must be decorated at import
LAZY_MODULES = {"evad.plugins.triton_kernels"}
#: modules that must import without torch (a CPU/ORT deployment needs none)
TORCH_FREE = ["evad", "evad.errors", "evad.lazy", "evad.op_contracts", "evad.runner",
              "evad.command", "evad.atomic", "evad.run_lock", "evad.runtime.tokens",
              "evad.metadata", "evad.hashing", "evad.plugins",
              "evad.plugins.build", "evad.engines.metadata", "evad.engines.environment",
              "evad.engines.cuda_memory", "evad.engines.trt_runner", "evad.engines.cli",
              "evad.export.ort_runner", "evad.runtime.backends", "evad.runtime.cli",
              "evad.runtime.outputs", "evad.runtime.pipeline", "evad.runtime.render",
              "evad.video", "evad.live", "evad.opencv", "evad.sampling", "evad.preprocess",
              "evad.runtime.detection", "evad.evaluation.detect", "evad.datasets.clips",
              "evad.cache", "evad.datasets.demo", "evad.export.demo", "evad.export.exporter",
              "evad.cli.trt_run", "evad.models.presets", "evad.models.labels",
              "evad.models.demo", "evad.datasets.synthetic", "evad.export.attention",
              "evad.export.layerwise", "evad.export.sizes", "evad.op_schemas", "evad.cli.export",
              "evad.serving.cli",
              "evad.fused_attention", "evad.export.openvino_runner", "evad.engines.onnx_prep",
              "evad.export.openvino_graph", "evad.models.checkpoint_cfg",
              "evad.runtime.bench_report", "evad.export.int8", "evad.runtime.calibration",
              "evad.runtime.benchmark", "evad.runtime.gemm_rate", "evad.cli.bench",
              "evad.runtime.job",
              "evad.runtime.video_run", "evad.runtime.source", "evad.runtime.ray_job",
              "evad.runtime.staging", "evad.serving.triton_repo", "evad.serving.triton_model",
              "evad.serving.triton_server", "evad.serving.triton_client", "evad.cli.triton_repo"]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, stage in STAGES.items():
        out += [(stage, p) for p in sorted((ROOT / folder).rglob("*.py")) if "build" not in
                p.relative_to(ROOT).parts[1:-1]]
    return out


def _module_name(path: Path) -> str:
    """``runtime/cli.py`` -> ``evad.runtime.cli``; ``evad/runner.py`` -> ``evad.runner``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts[0] == "evad" else ".".join(["evad", *parts])


def _stage_of(module: str) -> str | None:
    """``evad.runtime.cli`` -> ``runtime``; ``evad.errors`` -> ``core``; third-party -> None."""
    parts = module.split(".")
    if parts[0] != "evad":
        return None
    if len(parts) > 1 and parts[1] in STAGES and parts[1] != "evad":
        return parts[1]
    return "core"


class _Imports(ast.NodeVisitor):
    """Every import with the line, whether it sits in a function body or under
    ``if TYPE_CHECKING:``, and every ``lazy_import("name", ...)``."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int, bool, bool, bool]] = []  # module, line, in_func,
        self._func = 0  # typing_only, lazy
        self._typing = 0

    def _add(self, module: str, line: int, lazy: bool = False) -> None:
        self.found.append((module, line, self._func > 0, self._typing > 0, lazy))

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._func += 1
        self.generic_visit(node)
        self._func -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        typing_only = isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        self._typing += typing_only
        for n in node.body:
            self.visit(n)
        self._typing -= typing_only
        for n in node.orelse:
            self.visit(n)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._add(a.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            self._add(node.module, node.lineno)
            if node.module == "evad":  # ``from evad import runner``: submodules by name
                for a in node.names:
                    self._add(f"evad.{a.name}", node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in ("lazy_import", "import_module") and node.args and isinstance(
                node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node.lineno, lazy=True)
        self.generic_visit(node)


def _scan() -> list[tuple[str, Path, str, int, bool, bool, bool]]:
    rows = []
    for stage, path in _modules():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        rows += [(stage, path, *f) for f in visitor.found]
    return rows


def test_the_scan_sees_every_kind_of_import() -> None:
    """The visitor itself: function-level, TYPE_CHECKING, lazy and ``from evad import x``."""
    v = _Imports()
    v.visit(ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                      "x = lazy_import('evad.models.runner', 'pip install torch')\n"
                      "from evad import runner\n"
                      "def f():\n    from evad.engines import builder\n"))
    got = {(m, fn, t, lz) for m, _, fn, t, lz in v.found}
    assert ("torch", False, True, False) in got
    assert ("evad.models.runner", False, False, True) in got
    assert ("evad.runner", False, False, False) in got
    assert ("evad.engines", True, False, False) in got


def test_every_arrow_is_allowed() -> None:
    bad = []
    for stage, path, module, line, *_ in _scan():
        target = _stage_of(module)
        if target is not None and target != stage and target not in ALLOWED[stage]:
            bad.append(f"{path.relative_to(ROOT)}:{line} {stage} -> {target} ({module})")
    assert not bad, "imports against the stage graph:\n" + "\n".join(bad)


def test_cross_stage_imports_stand_at_module_top() -> None:
    """A reader sees a module's arrows at its top: no first-party import of another stage
    inside a function body."""
    bad = [f"{path.relative_to(ROOT)}:{line} {module}"
           for stage, path, module, line, in_func, _, _ in _scan()
           if in_func and _stage_of(module) not in (None, stage)]
    assert not bad, "cross-stage imports inside functions:\n" + "\n".join(bad)


def test_heavy_packages_load_lazily() -> None:
    """tensorrt, onnxruntime, triton and OpenCV are never imported directly at run time: only
    through ``lazy_import`` (or under ``TYPE_CHECKING`` for the type checker)."""
    bad = [f"{path.relative_to(ROOT)}:{line} {module}"
           for _, path, module, line, _, typing_only, lazy in _scan()
           if module.split(".")[0] in LAZY and not typing_only and not lazy
           and _module_name(path) not in LAZY_MODULES]
    bad += [f"{path.relative_to(ROOT)}:{line} {module} (load it with lazy_import)"
            for _, path, module, line, _, typing_only, lazy in _scan()
            if module in LAZY_MODULES and not typing_only and not lazy]
    assert not bad, "heavy packages imported directly:\n" + "\n".join(bad)


def test_torch_free_modules_import_without_torch_and_heavy_packages() -> None:
    blocked = sorted({"torch", *LAZY})
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "import importlib\n"
            + "".join(f"importlib.import_module({m!r})\n" for m in TORCH_FREE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("command", ["evad-export", "evad-build-engine", "evad-parity",
                                     "evad-trt-run", "evad-eval", "evad-train", "evad-flops",
                                     "evad-build-plugins", "evad-tokens", "evad-bench"])
def test_help_works_without_heavy_packages(command: str) -> None:
    """Every --help prints with TensorRT, onnxruntime, Triton, OpenCV and PyAV unavailable."""
    from importlib.metadata import entry_points

    ep = next(e for e in entry_points(group="console_scripts") if e.name == command)
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in sorted(LAZY))
            + f"from {ep.module} import {ep.attr} as main\n"
            + "sys.argv = [" + repr(command) + ", '--help']\nmain()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_the_tensorrt_runner_needs_no_onnx() -> None:
    """A deployment that runs engines reads their JSON sidecar; it needs no onnx package."""
    code = ("import sys\nfor m in ('onnx', 'onnxscript', 'torch', 'tensorrt', 'cuda'):\n"
            "    sys.modules[m] = None\n"
            "import evad.engines.trt_runner, evad.engines.metadata, evad.runtime.backends\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr


def test_the_core_install_pulls_in_no_scale_out_extra() -> None:
    """``pip install -e .`` brings neither Ray nor Triton's server or client: they are the
    ``ray`` and ``triton`` extras, loaded lazily where used."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for name in ("ray", "tritonclient", "pytriton"):
        assert name not in core, name
    extras = project["optional-dependencies"]
    assert any(d.startswith("ray[data]") for d in extras["ray"])
    assert any(d.startswith("tritonclient") for d in extras["triton"])
    code = ("import sys; import evad.runtime.cli, evad.cli.triton_repo, evad.serving.triton_repo;"
            " bad = [m for m in ('ray', 'tritonclient', 'pytriton') if m in sys.modules];"
            " assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
