"""Fused attention in the export (``com.microsoft.MultiHeadAttention``), its decomposition for
other parsers, and the OpenVINO variant of the graph (pruning unrolled), all run for real."""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_H, TINY_W
from onnx import TensorProto, helper, numpy_helper
from test_keyframe_topk_prune import _inputs

from evad.export.ops import ROW_CHUNK, function_protos
from evad.export.parity import (
    FP32_THRESHOLDS,
    OPENVINO_FP32_THRESHOLDS,
    REDUCED_THRESHOLDS,
    compare,
    seeded_inputs,
)
from evad.fused_attention import MS_DOMAIN, decompose_fused_attention, fused_attention_nodes
from evad.models.keyframe_topk_prune import keyframe_topk_prune

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _feeds(seed: int = 3) -> dict[str, np.ndarray]:
    clip = np.random.default_rng(seed).standard_normal((2, 3, 16, TINY_H, TINY_W), np.float32)
    return {"clip": clip, "image_size": np.array([[TINY_H, TINY_W], [TINY_H - 20, TINY_W]])}


def test_every_attention_is_one_fused_node(tiny_onnx, tiny_model) -> None:
    from evad.models.vit import Attention

    model = onnx.load(str(tiny_onnx))
    nodes = fused_attention_nodes(model)
    attentions = [m for m in tiny_model.modules()
                  if isinstance(m, (Attention, torch.nn.MultiheadAttention))]
    assert len(nodes) == len(attentions)  # the ViT blocks' and the head stages' attention
    heads = sorted(helper.get_attribute_value(a) for n in nodes for a in n.attribute
                   if a.name == "num_heads")
    assert heads == sorted(m.num_heads for m in attentions)
    scales = {helper.get_attribute_value(a) for n in nodes for a in n.attribute
              if a.name == "scale"}
    d = tiny_model.preset.loc_hidden // tiny_model.preset.loc_heads
    assert sorted(scales) == pytest.approx(sorted({1.0, d ** -0.5}))  # the ViT's q is scaled
    # before (the pruning reads the scaled q); nn.MultiheadAttention's SDPA scales inside
    assert MS_DOMAIN in {o.domain for o in model.opset_import}


def test_decomposed_attention_runs_the_same(tiny_onnx) -> None:
    model = onnx.load(str(tiny_onnx))
    plain = decompose_fused_attention(model)
    assert not fused_attention_nodes(plain)
    assert MS_DOMAIN not in {o.domain for o in plain.opset_import}
    onnx.checker.check_model(plain, full_check=True)
    feeds = _feeds()
    fused_out = _session(model).run(None, feeds)
    plain_out = _session(plain).run(None, feeds)
    for a, b in zip(fused_out, plain_out, strict=True):
        if a.dtype == np.int64:
            assert np.array_equal(a, b)
        else:
            assert np.abs(a - b).max() <= 1e-4


def test_fused_export_matches_torch_at_fp32_rules(tiny_onnx, tiny_model) -> None:
    from evad.export.ort_runner import OrtRunner

    clips, sizes = seeded_inputs(1, 2, 16, TINY_H, TINY_W, seed=5)
    report = compare(tiny_model, OrtRunner(tiny_onnx, cuda=False), clips, sizes,
                     FP32_THRESHOLDS)
    assert report.passed, report.lines()


def _static_prune_model(n: int, s: int, d: int = 4, c: int = 3) -> onnx.ModelProto:
    def vi(name, dtype, dims):
        return helper.make_tensor_value_info(name, dtype, dims)

    node = helper.make_node("KeyframeTopKPrune", ["q", "k", "x", "idx"], ["xk", "ik"],
                            domain="evad", keep_num=7, keep_den=10, keyframe_weight=4.0)
    kk = math.ceil(0.7 * n) - s
    graph = helper.make_graph(
        [node], "prune", [vi("q", TensorProto.FLOAT, ["b", 2, n, d]),
                          vi("k", TensorProto.FLOAT, ["b", 2, n, d]),
                          vi("x", TensorProto.FLOAT, ["b", n - s, c]),
                          vi("idx", TensorProto.INT64, ["b", n - s])],
        [vi("xk", TensorProto.FLOAT, ["b", kk, c]), vi("ik", TensorProto.INT64, ["b", kk])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("evad", 1)],
                             functions=[f for f in function_protos()
                                        if f.name == "KeyframeTopKPrune"])


@pytest.mark.parametrize(("n", "s"), [(2500, 1100), (ROW_CHUNK + 7, 300)])
def test_unrolled_pruning_equals_the_op(n: int, s: int) -> None:
    """OpenVINO's variant of KeyframeTopKPrune (chunks unrolled, cut where the keyframe rows
    end) keeps the op's tokens in the op's order, run here in ONNX Runtime."""
    from evad.export.openvino_graph import unroll_pruning

    model = _static_prune_model(n, s)
    unrolled = unroll_pruning(model)
    assert not [x for x in unrolled.graph.node if x.domain == "evad"]
    assert "Loop" not in {x.op_type for x in unrolled.graph.node}
    q, k, x, idx = _inputs(2, 2, n, 4, s, 3, seed=n, spread=0.02, ladder=0.05)
    feeds = {"q": q.numpy(), "k": k.numpy(), "x": x.numpy(), "idx": idx.numpy()}
    xk, ik = _session(unrolled).run(None, feeds)
    ref_x, ref_idx = keyframe_topk_prune(q, k, x, idx, 7, 10, 4.0)
    assert np.array_equal(ik, ref_idx.numpy())
    assert np.array_equal(xk, ref_x.numpy())


@pytest.mark.parametrize(("n", "s"), [(2500, 1100), (ROW_CHUNK + 7, 300)])
def test_is_pruning_logits_names_each_chunks_logits_product(n: int, s: int) -> None:
    """The layers OpenVINO's int8 path leaves at bf16 (``is_pruning_logits``): each chunk's
    q k^T, the first MatMul of its chunk, fed by the chunk's q slice; none of the row sums
    or anything else of the pruning."""
    from evad.export import openvino_graph
    from evad.export.openvino_graph import is_pruning_layer, is_pruning_logits, unroll_pruning

    unrolled = unroll_pruning(_static_prune_model(n, s))
    produced = {o: node for node in unrolled.graph.node for o in node.output}
    matmuls = [o for node in unrolled.graph.node if node.op_type == "MatMul" for o in node.output]
    logits = [o for node in unrolled.graph.node for o in node.output if is_pruning_logits(o)]
    chunks = len({*range(0, n, openvino_graph.ROW_CHUNK), s, n}) - 1  # its chunks, not the op's
    assert len(logits) == chunks and len(matmuls) == 2 * chunks
    assert all(produced[o].op_type == "MatMul" and produced[o].input[0].endswith("_q")
               for o in logits)
    sums = [o for o in matmuls if o not in logits]
    assert all(o.endswith("_sum4") and is_pruning_layer(o) for o in sums)
    assert not is_pruning_logits("_prune0_c0_logits_f32_bf16__prune0_c0_probs")  # a reorder


def _openvino():
    try:
        import openvino
    except ImportError:
        if IN_CI:
            pytest.fail("CI installs openvino (the dev extra): the fast CPU path must be tested")
        pytest.skip("openvino not installed (pip install 'evad-deploy[openvino]')")
    return openvino


def test_openvino_fp32_passes_fp32_parity(tiny_onnx, tiny_model) -> None:
    _openvino()
    from evad.export.openvino_runner import OpenVinoRunner

    runner = OpenVinoRunner(tiny_onnx, "fp32")
    clips, sizes = seeded_inputs(2, 1, 16, TINY_H, TINY_W, seed=7)
    report = compare(tiny_model, runner, clips, sizes, OPENVINO_FP32_THRESHOLDS)
    assert report.passed, report.lines()
    assert runner.spec.input_size == (TINY_H, TINY_W)


def test_openvino_bf16_passes_reduced_parity(tiny_onnx, tiny_model) -> None:
    _openvino()
    from evad.export.openvino_runner import OpenVinoRunner, cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")

    clips, sizes = seeded_inputs(2, 1, 16, TINY_H, TINY_W, seed=7)
    report = compare(tiny_model, OpenVinoRunner(tiny_onnx, "bf16"), clips, sizes,
                     REDUCED_THRESHOLDS)
    assert report.passed, report.lines()
    # bf16 is not fp32: the continuous outputs do move (else the precision was not applied)
    assert report.prob_max_abs > 1e-4


def test_openvino_refuses_unknown_precision(tiny_onnx) -> None:
    _openvino()
    from evad.errors import ConfigError
    from evad.export.openvino_runner import OpenVinoRunner

    with pytest.raises(ConfigError, match="precision 'int4'"):
        OpenVinoRunner(tiny_onnx, "int4")


def test_torch_runner_bf16_is_autocast_and_close(tiny_model) -> None:
    from evad.models.runner import TorchRunner

    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=9)
    runner = TorchRunner(tiny_model, "tiny", "cpu", "bf16")
    assert runner.name == "torch (cpu, bf16)"
    report = compare(tiny_model, runner, clips, sizes, REDUCED_THRESHOLDS)
    assert report.passed, report.lines()
    assert report.prob_max_abs > 1e-4
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16  # untouched default


def test_each_importance_chunk_sums_its_transposed_probabilities_with_a_computed_column() -> None:
    """The row-sum form OpenVINO runs fastest (``export/openvino_graph.py``), checked in the
    graph, whatever the platform compiles it to: each chunk's sum is a MatMul of the Transpose
    of its Softmax with a (1, 1, rows, 1) ones column that is computed (an Add), not a constant
    (a FullyConnected in OpenVINO) nor a ones row in front (a slower fused kernel)."""
    from evad.export.openvino_graph import ROW_CHUNK as CHUNK
    from evad.export.openvino_graph import unroll_pruning

    n, s = 2 * CHUNK + 10, 300
    unrolled = unroll_pruning(_static_prune_model(n, s))
    producer = {o: node for node in unrolled.graph.node for o in node.output}
    constants = {t.name: numpy_helper.to_array(t) for t in unrolled.graph.initializer}
    sums = [node for node in unrolled.graph.node if node.output[0].endswith("_sum4")]
    cuts = sorted({*range(0, n, CHUNK), s, n})
    assert len(sums) == len(cuts) - 1
    for node, rows in zip(sums, np.diff(cuts), strict=True):
        assert node.op_type == "MatMul"
        probs_t, ones = (producer[x] for x in node.input)
        assert probs_t.op_type == "Transpose" and list(probs_t.attribute[0].ints) == [0, 1, 3, 2]
        assert producer[probs_t.input[0]].op_type == "Softmax"
        assert ones.op_type == "Add" and node.input[1] not in constants
        column = next(constants[x] for x in ones.input if x in constants)
        assert column.shape == (1, 1, rows, 1) and (column == 1).all()
