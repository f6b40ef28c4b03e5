"""The INT8 Q/DQ graph (``evad.export.exporter.write_int8``) as the TensorRT builder gets it:
prepared by the builder's own ``parser_graph`` (attention decomposed, ``evad`` functions
stripped), strict type inference, then parsed and ahead-of-time built with TensorRT-RTX on the
CPU through ``build_plan``, with the plugin nodes replaced by the stand-ins of
tests/test_engines_rtx.py (RTX aborts on a plugin node).

Explicit quantization needs no precision flag: the network is strongly typed and the Q/DQ say
where int8 is, so the graph is built at ``fp32`` (TF32 off) and everything outside the Q/DQ runs
fp32. Which kernel each fused DQ -> MatMul/Conv -> Q group runs is chosen when the plan is
deserialized (RTX compiles its kernels on the GPU), so what the CPU can check is the network the
plan is built from: int8 Quantize layers, int8 weight constants, every quantized product fed by
Dequantize layers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import skip_or_fail
from test_engines_rtx import _build, _stand_in_file

from evad.datasets.synthetic import generate_dataset
from evad.engines.builder import parser_graph
from evad.engines.onnx_prep import check_types
from evad.export import int8
from evad.export.exporter import write_int8
from evad.metadata import read_metadata
from evad.runtime.calibration import calibration_clips

#: Q/DQ of the tiny export (96 x 192): one activation QuantizeLinear / DequantizeLinear pair on
#: the input of each quantized MatMul (NNCF's placement, TensorRT's recommended one: no Q/DQ on
#: the outputs) and one DequantizeLinear of its int8 weight: 56 MatMuls (the encoder's and the
#: action decoder's linear layers; the patch embedding, the importance's qkv and the actor
#: localization, with its activation-by-activation products, stay float: ``int8.float_nodes``)
QUANTIZE, DEQUANTIZE, INT8_WEIGHTS = 56, 112, 56


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory, tiny_onnx) -> Path:
    """The tiny export quantized on the 8 clips of two 4 s synthetic videos (~5 s)."""
    root = tmp_path_factory.mktemp("int8rtx")
    data = generate_dataset(root / "calib", 2, seed=100, width=320, height=180, fps=10.0,
                            duration=4.0, progress=False)
    plan = int8.plan_calibration(data / "videos", 8)
    out = root / "tiny.int8.onnx"
    write_int8(tiny_onnx, out, int8.Calibration(plan, calibration_clips))
    return out


def _qdq(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def test_int8_graph_for_tensorrt_passes_strict_types(int8_onnx) -> None:
    """The builder's graph of the INT8 file keeps every Q/DQ, passes strict type inference, and
    follows TensorRT's explicit-quantization rules: DequantizeLinear of int8 only (no int32
    bias, which TensorRT's parser refuses), zero points 0, every quantized product fed by
    Dequantize on both inputs."""
    model = onnx.load(str(int8_onnx))
    meta = read_metadata(int8_onnx)
    graph = parser_graph(model, "fp32", True, tuple(meta["input_size"]), log=lambda _: None)
    inferred = check_types(graph, "the int8 graph")  # raises ConfigError when inconsistent
    assert _qdq(model) == _qdq(graph) == {"QuantizeLinear": QUANTIZE,
                                         "DequantizeLinear": DEQUANTIZE}
    assert not [n for n in graph.graph.node if n.domain == "com.microsoft"]
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    init = {t.name: t for t in graph.graph.initializer}
    types.update({name: t.data_type for name, t in init.items()})
    dq_in = Counter(types[n.input[0]] for n in graph.graph.node
                    if n.op_type == "DequantizeLinear")
    assert dq_in == {onnx.TensorProto.INT8: DEQUANTIZE}
    weights = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in init]
    assert len(weights) == INT8_WEIGHTS
    for n in graph.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = onnx.numpy_helper.to_array(init[n.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), n.name
    producer = {o: n.op_type for n in graph.graph.node for o in n.output}
    kept = meta["quantization"]["float_nodes"]
    fed = Counter(n.op_type for n in graph.graph.node if n.op_type in int8.QUANTIZED_OPS
                  and n.name not in kept
                  and all(producer.get(i) == "DequantizeLinear" for i in n.input[:2]))
    assert fed == {"MatMul": 56}


def test_int8_graph_parses_and_builds_in_tensorrt_rtx(int8_onnx, tmp_path) -> None:
    """build_plan parses the INT8 graph with TensorRT-RTX and builds a plan: one int8 Quantize
    layer per QuantizeLinear, one Dequantize layer per DequantizeLinear, the int8 weights kept
    as int8 constants (not folded to float by the parser), no fp16/bf16 and TF32 off."""
    try:
        import tensorrt_rtx_bindings  # noqa: F401
    except ImportError:
        skip_or_fail("TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs "
                     "tensorrt-rtx-cu13-bindings)")
    result = _build(_stand_in_file(int8_onnx, tmp_path / "int8_standin.onnx"), "fp32",
                    tmp_path)
    print(f"int8 plan (tiny 96x192): {result['plan_bytes'] / 2**20:.1f} MiB, "
          f"{len(result['layers'])} layers, built in {result['seconds']} s")
    kinds = Counter((kind, types[0] if types else "") for kind, _, types in result["layers"])
    assert result["strongly_typed"] and result["plan_bytes"] > 1_000_000
    assert result["modes"] == {"tf32": False, "fp16": False, "bf16": False}
    assert kinds[("QUANTIZE", "INT8")] == QUANTIZE
    assert kinds[("DEQUANTIZE", "FLOAT")] == DEQUANTIZE
    assert kinds[("CONSTANT", "INT8")] == INT8_WEIGHTS
    assert not [k for k in kinds if k[1] in ("HALF", "BF16")]
    assert kinds[("MATRIX_MULTIPLY", "FLOAT")] >= 62 and kinds[("CONVOLUTION", "FLOAT")] == 9
