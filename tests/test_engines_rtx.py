"""The engine builder's own code (``evad.engines.builder.build_plan``: the parser's graph, the
strict checks, parse, plugin binding, math modes, profile, build) run with TensorRT-RTX, whose
ONNX parser and ahead-of-time builder work without a GPU.

Stand-ins for the plugin nodes only: RTX aborts the process on any node that resolves to a
plugin, and in our engines both ``evad`` ops are our plugins (their kernels are tested in
tests/test_kernels_*.py and tests/test_plugins*.py). Each stand-in is standard ops with the op's
output shapes and types (the type of the tensors it is fed), so the typing of the graph around
it is what the real graph has. The built plan cannot be deserialized without a GPU (RTX's
engine inspector needs an engine), so the layer precisions are read from the strongly typed
network the plan was built from: there a layer's output type is what the engine runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest
from conftest import IN_CI, ROOT
from onnx import helper

SCRIPT = ROOT / "tests" / "rtx_build_plan.py"
LOW = {"fp16": "HALF", "bf16": "BF16"}


@pytest.fixture(scope="module", autouse=True)
def _rtx() -> None:
    try:
        import tensorrt_rtx_bindings  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("CI must run this: pip install tensorrt-rtx-cu13-libs "
                        "tensorrt-rtx-cu13-bindings (.ci/plugins.sh)")
        pytest.skip("TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs "
                    "tensorrt-rtx-cu13-bindings)")


def stand_in_plugins(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an evad export with each ``evad`` node replaced by standard ops of the same
    output shapes and types: RoIAlign3D by zeros of the features' type, (R, C, T, oh, ow);
    KeyframeTopKPrune by the first K non-keyframe tokens and positions, K computed from the
    shapes as the op's contract computes it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []

    def const(name: str, vals: list[int]) -> None:
        out.graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.INT64,
                                                        [len(vals)], vals))

    for i, n in enumerate(out.graph.node):
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        p = f"_standin{i}_"
        if n.domain == "evad" and n.op_type == "RoIAlign3D":
            nodes += [
                helper.make_node("Shape", [n.input[0]], [p + "sf"]),
                helper.make_node("Shape", [n.input[1]], [p + "sr"]),
                helper.make_node("Slice", [p + "sr", p + "z", p + "o"], [p + "r"]),
                helper.make_node("Slice", [p + "sf", p + "o", p + "three"], [p + "ct"]),
                helper.make_node("Concat", [p + "r", p + "ct", p + "hw"], [p + "shape"], axis=0),
                helper.make_node("CastLike", [p + "zero", n.input[0]], [p + "zero_t"]),
                helper.make_node("Expand", [p + "zero_t", p + "shape"], [n.output[0]]),
            ]
            for name, vals in (("z", [0]), ("o", [1]), ("three", [3]),
                               ("hw", [a["output_height"], a["output_width"]])):
                const(p + name, vals)
            out.graph.initializer.append(helper.make_tensor(p + "zero", onnx.TensorProto.FLOAT,
                                                            [1], [0.0]))
        elif n.domain == "evad" and n.op_type == "KeyframeTopKPrune":
            q, _, x, idx = n.input
            nodes += [
                helper.make_node("Shape", [q], [p + "sq"]),
                helper.make_node("Shape", [x], [p + "sx"]),
                helper.make_node("Slice", [p + "sq", p + "two", p + "three"], [p + "n"]),
                helper.make_node("Slice", [p + "sx", p + "o", p + "two"], [p + "m"]),
                helper.make_node("Sub", [p + "n", p + "m"], [p + "s"]),
                helper.make_node("Mul", [p + "n", p + "num"], [p + "nn"]),
                helper.make_node("Add", [p + "nn", p + "den1"], [p + "up"]),
                helper.make_node("Div", [p + "up", p + "den"], [p + "keep"]),
                helper.make_node("Sub", [p + "keep", p + "s"], [p + "k"]),
                helper.make_node("Slice", [x, p + "z", p + "k", p + "o"], [n.output[0]]),
                helper.make_node("Slice", [idx, p + "z", p + "k", p + "o"], [n.output[1]]),
            ]
            for name, vals in (("z", [0]), ("o", [1]), ("two", [2]), ("three", [3]),
                               ("num", [a["keep_num"]]), ("den", [a["keep_den"]]),
                               ("den1", [a["keep_den"] - 1])):
                const(p + name, vals)
        else:
            nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    keep = [f for f in out.functions if f.domain != "evad"]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def _build(path: Path, precision: str, workdir: Path) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(path), precision, str(workdir)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stand_in_file(src: Path, dest: Path) -> Path:
    onnx.save(stand_in_plugins(onnx.load(str(src))), str(dest))
    return dest


def _precisions(layers: list) -> Counter:
    """(layer type, first output's data type) -> count."""
    return Counter((kind, types[0] if types else "") for kind, _, types in layers)


def _check_reduced(result: dict, fp32: dict, precision: str) -> None:
    """fp32 islands and reduced matrix products in the network, and the layer count: the
    network differs from the fp32 one by the converter's Casts, each one cast layer (the
    parser inserted none of its own for a type mix: the graph was typed)."""
    low = LOW[precision]
    got = _precisions(result["layers"])
    for kind in ("NORMALIZATION", "SOFTMAX", "REDUCE"):
        assert got[(kind, "FLOAT")] > 0 and not got[(kind, low)], (kind, got)
    matmuls = got[("MATRIX_MULTIPLY", low)] + got[("MATRIX_MULTIPLY", "FLOAT")]
    assert got[("MATRIX_MULTIPLY", low)] >= 0.9 * matmuls
    casts = sum(n for (kind, _), n in got.items() if kind == "CAST")
    fp32_casts = sum(n for (kind, _), n in _precisions(fp32["layers"]).items() if kind == "CAST")
    assert casts - fp32_casts == result["graph_casts"] - fp32["graph_casts"] > 0
    assert len(result["layers"]) >= result["graph_nodes"]
    assert result["modes"] == {"tf32": False, "fp16": precision == "fp16",
                               "bf16": precision == "bf16"}


def test_builder_parses_and_builds_tiny_in_tensorrt_rtx(tiny_onnx, tmp_path) -> None:
    """fp32, fp16 and bf16 plans of the tiny export through build_plan with TensorRT-RTX: every
    layer of the fp32 network is fp32 (TF32 off), and the reduced ones keep LayerNorm, softmax
    and reductions fp32."""
    path = _stand_in_file(tiny_onnx, tmp_path / "tiny_standin.onnx")
    results = {p: _build(path, p, tmp_path) for p in ("fp32", "fp16", "bf16")}
    fp32 = results["fp32"]
    assert fp32["strongly_typed"] and fp32["plan_bytes"] > 1_000_000
    kinds = _precisions(fp32["layers"])
    assert not [k for k in kinds if k[1] in ("HALF", "BF16")]
    assert kinds[("MATRIX_MULTIPLY", "FLOAT")] >= 100
    assert fp32["modes"] == {"tf32": False, "fp16": False, "bf16": False}
    for precision in ("fp16", "bf16"):
        _check_reduced(results[precision], fp32, precision)
        assert any("mixed-precision" in line for line in results[precision]["logs"])


@pytest.mark.slow
def test_builder_parses_and_builds_vit_b_ktp_fp16_in_tensorrt_rtx(exported_onnx,
                                                                  tmp_path) -> None:
    """The full-size graph (vit_b_ktp 288x512), fp16, through build_plan with TensorRT-RTX."""
    path = _stand_in_file(exported_onnx("vit_b_ktp", 288, 512), tmp_path / "vitb_standin.onnx")
    fp16 = _build(path, "fp16", tmp_path)
    got = _precisions(fp16["layers"])
    for kind in ("NORMALIZATION", "SOFTMAX"):
        assert got[(kind, "FLOAT")] > 0 and not got[(kind, "HALF")], (kind, got)
    assert got[("MATRIX_MULTIPLY", "HALF")] >= 0.9 * (got[("MATRIX_MULTIPLY", "HALF")]
                                                      + got[("MATRIX_MULTIPLY", "FLOAT")])
    assert got[("NORMALIZATION", "FLOAT")] >= 2 * 12  # two LayerNorms a block, 12 blocks
    assert fp16["plan_bytes"] > 100 * 2**20  # fp16 weights of ViT-B and the heads
