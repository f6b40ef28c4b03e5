"""The graph rewrites OpenVINO is given (``evad.export.openvino_graph``), checked without OpenVINO:
the int8 MatMul weights run in ONNX Runtime within their quantization bound, and a tensor
without a declared shape is refused in one line. (The unrolled pruning is checked against the
op in tests/test_export_attention.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evad.errors import ConfigError
from evad.export.openvino_graph import int8_matmul_weights, tensor_dims


def _matmul_model(w: np.ndarray) -> onnx.ModelProto:
    """y (B, out) = x (B, in) @ w (in, out), w a constant initializer."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", w.shape[1]])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_int8_weights_stay_within_half_a_step_per_column() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    model = _matmul_model(w)
    q = int8_matmul_weights(model)
    stored = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert stored["w"].dtype == np.int8
    scale = np.abs(w).max(axis=0) / 127.0
    np.testing.assert_allclose(stored["w/scale"], scale, rtol=1e-6)
    # each weight moved by at most scale / 2, so each output by at most sum|x| * scale / 2
    assert np.abs(stored["w"] * scale - w).max() <= scale.max() / 2 + 1e-7
    bound = np.abs(x).sum(axis=1, keepdims=True) * scale / 2 + 1e-5
    assert (np.abs(_run(q, x) - _run(model, x)) <= bound).all()
    assert [n.op_type for n in q.graph.node] == ["DequantizeLinear", "MatMul"]
    assert numpy_helper.to_array(model.graph.initializer[0]).dtype == np.float32  # a copy


def test_tensor_dims_reads_the_signature_and_refuses_an_undeclared_tensor() -> None:
    model = _matmul_model(np.zeros((16, 8), np.float32))
    assert tensor_dims(model, "x") == [None, 16]
    assert tensor_dims(model, "y") == [None, 8]
    with pytest.raises(ConfigError, match="no shape for 'z': re-export the model"):
        tensor_dims(model, "z")
