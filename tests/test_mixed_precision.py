"""The graphs the engine builder hands a TensorRT parser, checked on the CPU: strict type
inference at fp32, fp16 and bf16 (a strongly typed parser refuses any Half/Float mix), the fp32
islands, the refusal of a graph that is not type-consistent, the attention scale that keeps fp16
logits finite, and TensorRT's TopK limit (no builtin TopK whose K grows with the input).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

from evad.engines.builder import parser_graph
from evad.engines.mixed_precision import FP32_OPS, to_mixed_precision
from evad.engines.onnx_prep import TOPK_MAX_K, check_topk, check_types, for_parser
from evad.errors import ConfigError
from evad.fused_attention import decompose_fused_attention
from evad.metadata import read_metadata
from evad.models.evad import ascending_positions

REDUCED = {"fp16": TP.FLOAT16, "bf16": TP.BFLOAT16}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = check_types(model, "test graph").graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _check_parser_graphs(path) -> None:
    """Every graph the builder would hand a strongly typed parser passes strict inference, with
    the IO types of the export, fp32 islands and reduced-precision matrix products."""
    model = onnx.load(str(path))
    size = tuple(read_metadata(path)["input_size"])
    io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    for precision in ("fp32", "tf32", "fp16", "bf16"):
        graph = parser_graph(model, precision, True, size, log=lambda m: None)
        types = _types(graph)  # strict: raises on any inconsistency
        assert {v.name: types[v.name] for v in (*graph.graph.input, *graph.graph.output)} == io
        nodes = list(graph.graph.node)
        assert {n.op_type for n in nodes if n.domain == "evad"} == {"RoIAlign3D",
                                                                  "KeyframeTopKPrune"}
        if precision not in REDUCED:
            assert TP.FLOAT16 not in types.values() and TP.BFLOAT16 not in types.values()
            continue
        low = REDUCED[precision]
        islands = [n for n in nodes if n.op_type in FP32_OPS]
        assert len(islands) > 10
        for n in islands:  # fed and producing fp32 (index outputs aside)
            floats = [types[x] for x in (*n.input, *n.output) if x and types[x] in
                      (TP.FLOAT, TP.FLOAT16, TP.BFLOAT16)]
            assert set(floats) == {TP.FLOAT}, (n.op_type, n.name)
        matmuls = [types[n.output[0]] for n in nodes if n.op_type in ("MatMul", "Gemm")]
        assert matmuls.count(low) >= 0.9 * len(matmuls), (precision, matmuls.count(low))
        casts = [n for n in nodes if n.op_type == "Cast"]
        for n in casts:  # the defect that was: Cast(to=FLOAT) declared fp16
            to = next(a.i for a in n.attribute if a.name == "to")
            assert types[n.output[0]] == to, n.name


def test_parser_graphs_are_strictly_typed_tiny(tiny_onnx) -> None:
    _check_parser_graphs(tiny_onnx)


@pytest.mark.slow
def test_parser_graphs_are_strictly_typed_vit_b_ktp(exported_onnx) -> None:
    _check_parser_graphs(exported_onnx("vit_b_ktp", 288, 512))


def test_builder_refuses_a_graph_that_is_not_type_consistent(tiny_onnx) -> None:
    """A Cast whose ``to`` says FLOAT16 while its consumer mixes it with an fp32 tensor: the
    builder's graph step refuses it in one line naming the problem, before any TensorRT."""
    model = onnx.load(str(tiny_onnx))
    cast = next(n for n in model.graph.node if n.op_type == "Cast"
                and next(a.i for a in n.attribute if a.name == "to") == TP.FLOAT)
    next(a for a in cast.attribute if a.name == "to").i = TP.FLOAT16
    size = tuple(read_metadata(tiny_onnx)["input_size"])
    for precision in ("fp32", "fp16"):
        with pytest.raises(ConfigError, match="not type-consistent") as info:
            parser_graph(model, precision, True, size, log=lambda m: None)
        assert "\n" not in str(info.value)


def test_reduced_weights_are_rounded_not_truncated() -> None:
    """fp16 / bf16 weights: round to nearest even (bf16 by its bit pattern), fp16 saturating."""
    w = np.array([[1.0, 1 + 2**-8, 1 + 3 * 2**-9, 7e4, -7e4, np.pi]], np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TP.FLOAT, [1, 6])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.ones((1, 1), np.float32)
    got16 = ort.InferenceSession(to_mixed_precision(model, "fp16").SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got16, np.clip(w, -65504, 65504).astype(np.float16)
                                  .astype(np.float32))
    bf16 = to_mixed_precision(model, "bf16")
    init = next(t for t in bf16.graph.initializer if t.data_type == TP.BFLOAT16)
    bits = np.frombuffer(init.raw_data, np.uint16).astype(np.uint32) << 16
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1); 1 + 3 * 2^-9 rounds up
    np.testing.assert_array_equal(bits.view(np.float32)[:3], [1.0, 1.0, 1 + 2**-7])
    assert bits.view(np.float32)[5] == np.float32(3.140625)


def _attention_model(old_order: bool) -> onnx.ModelProto:
    """One fused attention node (B 1, N 4, 2 heads of d 64) decomposed the builder's way, or
    (``old_order``) the way it was: MatMul(q, k^T) first, scale after."""
    b, n, heads, d = 1, 4, 2, 64
    inputs = [helper.make_tensor_value_info(x, TP.FLOAT, [b, n, heads * d]) for x in "qkv"]
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"],
                            domain="com.microsoft", num_heads=heads, scale=d**-0.5)
    model = helper.make_model(
        helper.make_graph([node], "attention", inputs,
                          [helper.make_tensor_value_info("o", TP.FLOAT, [b, n, heads * d])]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model = decompose_fused_attention(model)
    if old_order:
        nodes = list(model.graph.node)
        mul = next(x for x in nodes if x.op_type == "Mul")
        matmul = next(x for x in nodes if x.op_type == "MatMul")
        softmax = next(x for x in nodes if x.op_type == "Softmax")
        q, scale = mul.input
        matmul.input[0] = q
        mul.input[:] = [matmul.output[0], scale]
        mul.output[0] = "scaled_logits"
        softmax.input[0] = "scaled_logits"
        order = [x for x in nodes if x is not mul]
        order.insert(order.index(matmul) + 1, mul)
        del model.graph.node[:]
        model.graph.node.extend(order)
    return model


def test_fp16_attention_stays_finite_where_the_old_order_overflows() -> None:
    """q and k of ~40 over d 64: q k^T ~ 1e5 overflows fp16 (65504) before the 1/8 scale; with the
    scale on q first, the fp16 graph's logits are finite and ONNX Runtime gives the fp32 result
    to fp16 accuracy. (Key 0 dominates by ~1300 in the scaled logits, far beyond fp16's spacing
    of 8 at 1e4, so both precisions attend to it alone.)"""
    rng = np.random.default_rng(0)
    q = (40 + rng.standard_normal((1, 4, 128))).astype(np.float32)
    k = q[:, :1] * np.array([1.0, 0.9, 0.8, 0.7], np.float32)[None, :, None]
    feeds = {"q": q, "k": k, "v": rng.standard_normal((1, 4, 128)).astype(np.float32)}

    def run(model: onnx.ModelProto, logits_type: int) -> tuple[np.ndarray, np.ndarray]:
        """The output and the logits (the product q k^T, with or without the scale)."""
        model.graph.output.append(helper.make_tensor_value_info("o/logits", logits_type, None))
        # no graph optimisation: ORT would fuse MatMul + scale into one fp32-accumulating
        # kernel, hiding what an engine without that fusion computes
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        out, logits = ort.InferenceSession(model.SerializeToString(), opts,
                                           providers=["CPUExecutionProvider"]).run(None, feeds)
        return out, logits

    assert (feeds["q"][0, 0, :64] * feeds["k"][0, 0, :64]).sum() > 65504  # unscaled: too big
    want, _ = run(_attention_model(old_order=False), TP.FLOAT)
    got, logits = run(to_mixed_precision(_attention_model(old_order=False), "fp16"), TP.FLOAT16)
    assert logits.dtype == np.float16 and np.isfinite(logits).all()
    np.testing.assert_allclose(got, want, atol=2e-3)
    _, old_logits = run(to_mixed_precision(_attention_model(old_order=True), "fp16"), TP.FLOAT16)
    assert old_logits.dtype == np.float16 and np.isinf(old_logits).all()  # why the order matters


def test_kept_positions_need_no_sort() -> None:
    """ascending_positions equals torch.sort on distinct positions, K up to n."""
    g = torch.Generator().manual_seed(0)
    for b, n, k in ((1, 10, 3), (3, 4608, 1006), (2, 5, 5), (2, 7, 1), (2, 20000, 4466)):
        idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)])
        assert torch.equal(ascending_positions(idx, n), torch.sort(idx, dim=1).values)


def test_no_builtin_topk_beyond_tensorrts_limit(exported_onnx) -> None:
    """At 640x1024 the tiny model keeps 4466 tokens after block 9, beyond TopK's 3840: its
    export has no TopK (the kept positions are placed without a sort) and the builder's checks
    pass at every precision."""
    path = exported_onnx("tiny", 640, 1024)
    model = onnx.load(str(path))
    kept = {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in model.graph.output
            if o.name.startswith("kept_idx_")}
    assert kept["kept_idx_9"] == 4466 > TOPK_MAX_K
    assert not [n for n in for_parser(model).graph.node if n.op_type == "TopK"]
    for precision in ("fp32", "fp16"):
        parser_graph(model, precision, True, (640, 1024), log=lambda m: None)


def test_a_topk_beyond_the_limit_is_refused_naming_the_size() -> None:
    def topk_model(k: int) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)], "g",
            [helper.make_tensor_value_info("x", TP.FLOAT, ["batch", 5000])],
            [helper.make_tensor_value_info("v", TP.FLOAT, None),
             helper.make_tensor_value_info("i", TP.INT64, None)],
            [onnx.numpy_helper.from_array(np.array([k], np.int64), "k")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    check_topk(check_types(topk_model(TOPK_MAX_K), "g"), (288, 512))
    with pytest.raises(ConfigError, match=r"input 384x640: TopK .* keeps 3841 > 3840") as info:
        check_topk(check_types(topk_model(TOPK_MAX_K + 1), "g"), (384, 640))
    assert "\n" not in str(info.value)
