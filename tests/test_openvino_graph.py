"""The graph rewrites OpenVINO is given (``evad.export.openvino_graph``), checked without OpenVINO:
the int8 MatMul weights run in ONNX Runtime within their quantization bound, a patch convolution
becomes its matrix product (same values, in ONNX Runtime), and a tensor without a declared shape
is refused in one line. (The unrolled pruning is checked against the op in
tests/test_export_attention.py.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evad.errors import ConfigError
from evad.export.openvino_graph import int8_matmul_weights, patchify_convolutions, tensor_dims


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


def _conv_model(x_shape: list, w: np.ndarray, b: np.ndarray | None,
                **attrs: Any) -> onnx.ModelProto:
    """y = Conv(x, w, b), x a graph input of shape x_shape (its batch symbolic)."""
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")]
                                                 if b is not None else [])
    node = helper.make_node("Conv", ["x", "w", "b"] if b is not None else ["x", "w"], ["y"],
                            **attrs)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(("spatial", "kernel", "bias"), [
    ((4, 12, 20), (2, 4, 5), True),   # the patch embedding's form: a tubelet per token
    ((6, 8), (3, 2), False),           # 2-D, no bias
])
def test_a_patch_convolution_becomes_its_matrix_product(spatial: tuple[int, ...],
                                                        kernel: tuple[int, ...],
                                                        bias: bool) -> None:
    """A convolution whose kernel is its stride is rewritten as patches times the weight and
    gives the convolution's values and layout, batch 2 (the batch stays symbolic)."""
    rng = np.random.default_rng(len(spatial))
    w = rng.standard_normal((5, 3, *kernel)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32) if bias else None
    model = _conv_model(["B", 3, *spatial], w, b, kernel_shape=list(kernel),
                        strides=list(kernel))
    patched = patchify_convolutions(model)
    assert "Conv" not in {n.op_type for n in patched.graph.node}
    x = rng.standard_normal((2, 3, *spatial)).astype(np.float32)
    want, got = _run(model, x), _run(patched, x)
    grid = [d // k for d, k in zip(spatial, kernel, strict=True)]
    assert got.shape == want.shape == (2, 5, *grid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [1, 1]},                      # overlapping windows
    {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [2, 2]},
    {"kernel_shape": [4, 4], "strides": [4, 4]},                      # 6 is not a multiple of 4
    {"kernel_shape": [2, 2], "strides": [2, 2], "group": 3},
    {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
])
def test_other_convolutions_are_left_alone(attrs: dict[str, Any]) -> None:
    c_in = 3 // attrs.get("group", 1)
    model = _conv_model(["B", 3, 6, 8],
                        np.ones((6, c_in, *attrs["kernel_shape"]), np.float32), None, **attrs)
    assert [n.op_type for n in patchify_convolutions(model).graph.node] == ["Conv"]


def test_a_convolution_of_a_computed_tensor_is_left_alone() -> None:
    """Only a graph input is cut into patches: a graph that computes something from the clip
    first (quantizes it, say) keeps its Conv."""
    model = _conv_model(["B", 3, 6, 8], np.ones((5, 3, 2, 2), np.float32), None,
                        kernel_shape=[2, 2], strides=[2, 2])
    model.graph.node[0].input[0] = "xr"
    model.graph.node.insert(0, helper.make_node("Relu", ["x"], ["xr"]))
    assert [n.op_type for n in patchify_convolutions(model).graph.node] == ["Relu", "Conv"]


def test_a_weight_fed_as_a_graph_input_is_reshaped_in_the_graph() -> None:
    """The runner sets the weights aside as graph inputs before the rewrite: the weight's
    (C_out, C_in * prod(k)) layout is then computed in the graph, not read from an
    initializer, and the product still equals the Conv."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    model = _conv_model(["B", 2, 6, 10], w, None, kernel_shape=[3, 5], strides=[3, 5])
    del model.graph.initializer[:]
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape))
    patched = patchify_convolutions(model)
    assert "Conv" not in {n.op_type for n in patched.graph.node}
    x = rng.standard_normal((1, 2, 6, 10)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x, "w": w})[0]

    np.testing.assert_allclose(run(patched), run(model), rtol=1e-5, atol=1e-5)
