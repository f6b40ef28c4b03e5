"""The graph rewrites OpenVINO is given (``evad.export.openvino_graph``), checked without OpenVINO:
the int8 MatMul weights run in ONNX Runtime within their quantization bound, a patch convolution
becomes its matrix product (same values, in ONNX Runtime), a RoIAlign3D that pools a clip
becomes two products with its bilinear weights (the torch reference's values, the contract's
batch-index rule), and a tensor without a declared shape is refused in one line. (The unrolled
pruning is checked against the op in tests/test_export_attention.py.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_roi_align_3d import EDGE_ROIS, _rois

from evad.errors import ConfigError
from evad.export.openvino_graph import (
    int8_matmul_weights,
    is_clip_pooling_layer,
    patchify_convolutions,
    separable_clip_pooling,
    tensor_dims,
)
from evad.models.roi_align_3d import roi_align_3d


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


def _pooling_model(c: int, t: int, h: int, w: int, opset: int = 18,
                   **attrs: Any) -> onnx.ModelProto:
    """One evad RoIAlign3D node: features (B, c, t, h, w), rois (R, 5), batch and R symbolic."""
    node = helper.make_node("RoIAlign3D", ["features", "rois"], ["output"], domain="evad",
                            **attrs)
    graph = helper.make_graph(
        [node], "pool",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", c, t, h, w]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["R", 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["R", c, t, "oh", "ow"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("evad", 1)])


def _pool(model: onnx.ModelProto, features: np.ndarray, rois: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"features": features, "rois": rois})[0]


@pytest.mark.parametrize(("b", "t", "h", "w", "attrs"), [
    (1, 8, 18, 32, {}),  # the action pooler's map at 288 x 512, the contract's defaults
    (2, 8, 6, 10, {}),
    (3, 2, 10, 6, {}),   # portrait: H > W
    (2, 3, 9, 7, dict(output_height=3, output_width=5, spatial_scale=0.25, sampling_ratio=3)),
])
def test_a_clip_pooling_becomes_two_products(b: int, t: int, h: int, w: int,
                                             attrs: dict[str, Any]) -> None:
    """A RoIAlign3D over T > 1 slices becomes products with each RoI's bilinear weights and
    gives the torch reference's values (within 1e-5, ONNX Runtime): RoIs partly or wholly
    outside the map, degenerate and sub-pixel ones, every batch element; every tensor it
    writes is named for OpenVINO's f32 marks (``is_clip_pooling_layer``)."""
    full = {"output_height": 7, "output_width": 7, "spatial_scale": 1 / 16,
            "sampling_ratio": 2, **attrs}
    gen = torch.Generator().manual_seed(b * 100 + t * 10 + h)
    feat = torch.randn(b, 5, t, h, w, generator=gen)
    stride = round(1 / full["spatial_scale"])
    edge = EDGE_ROIS.clone()
    edge[:, 0] = edge[:, 0] % b
    rois = torch.cat((edge, _rois(20, b, (h * stride, w * stride), gen)))
    model = _pooling_model(5, t, h, w, **attrs)
    pooled = separable_clip_pooling(model)
    assert "RoIAlign3D" not in {n.op_type for n in pooled.graph.node}
    assert all(is_clip_pooling_layer(o) for n in pooled.graph.node for o in n.output
               if o != "output")
    got = _pool(pooled, feat.numpy(), rois.numpy())
    want = roi_align_3d(feat, rois, full["output_height"], full["output_width"],
                        full["spatial_scale"], full["sampling_ratio"], True).numpy()
    assert got.shape == want.shape == (len(rois), 5, t, full["output_height"],
                                       full["output_width"])
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(want).max() > 0.5  # the RoIs do sample the map


def test_a_clip_pooling_gives_zeros_for_an_invalid_batch_index() -> None:
    """The contract's batch-index rule in the products: a RoI whose index is not finite, not
    an integer value or outside [0, B) gives zeros, even with NaN coordinates; the valid RoIs
    around it still match the torch reference."""
    gen = torch.Generator().manual_seed(31)
    b, t, h, w = 2, 3, 6, 10
    feat = torch.randn(b, 4, t, h, w, generator=gen)
    nan, inf = float("nan"), float("inf")
    bad = torch.tensor([[v, 10.0, 20.0, 100.0, 80.0] for v in
                        (-1.0, 2.0, 0.5, 1.5, -0.5, nan, inf, -inf, 1e30, -1e30)])
    bad[5, 1:] = nan
    bad[7, 3] = inf
    good = _rois(6, b, (h * 16, w * 16), gen)
    rois = torch.cat((good[:2], bad, good[2:]))
    invalid = np.zeros(len(rois), bool)
    invalid[2:2 + len(bad)] = True
    got = _pool(separable_clip_pooling(_pooling_model(4, t, h, w)), feat.numpy(), rois.numpy())
    want = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, True).numpy()
    assert np.all(got[invalid] == 0) and np.all(want[invalid] == 0)
    assert np.abs(got - want).max() <= 1e-5 and np.abs(got[~invalid]).max() > 0.5


@pytest.mark.parametrize("opset", [17, 18])
def test_a_clip_pooling_of_no_rois_is_empty(opset: int) -> None:
    """R = 0 gives an empty (0, C, T, oh, ow) output (the contract's edge case), at the
    exporter's lowest opset as at its default (a valid graph at both)."""
    model = separable_clip_pooling(_pooling_model(5, 3, 6, 10, opset=opset))
    onnx.checker.check_model(model)
    feat = np.random.default_rng(0).standard_normal((2, 5, 3, 6, 10)).astype(np.float32)
    assert _pool(model, feat, np.zeros((0, 5), np.float32)).shape == (0, 5, 3, 7, 7)


@pytest.mark.parametrize(("dims", "attrs"), [
    (["B", 5, 1, 18, 32], {}),             # one slice: the actor localization's levels
    (["B", 5, 8, "H", 32], {}),            # a map size that is not static
    (["B", 5, 8, 18, 32], {"aligned": 0}),  # the legacy alignment
])
def test_other_poolings_are_left_alone(dims: list[int | str], attrs: dict[str, Any]) -> None:
    """What the products are not for stays a RoIAlign3D node (its function body, inlined):
    a single slice, a map whose size is not static, the legacy alignment."""
    model = _pooling_model(5, 8, 18, 32, **attrs)
    del model.graph.input[0].type.tensor_type.shape.dim[:]
    model.graph.input[0].type.tensor_type.shape.dim.extend(
        [onnx.TensorShapeProto.Dimension(dim_param=d) if isinstance(d, str)
         else onnx.TensorShapeProto.Dimension(dim_value=d) for d in dims])
    assert [n.op_type for n in separable_clip_pooling(model).graph.node] == ["RoIAlign3D"]
