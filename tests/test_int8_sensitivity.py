"""benchmarks/int8_sensitivity.py on the tiny INT8 export: its rows are what evad-parity's judge
says of the same graphs, and taking products back to float removes what it says it removes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evad.export import parity
from evad.runtime.backends import open_runner

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_sensitivity.py"


def _script():
    spec = importlib.util.spec_from_file_location("int8_sensitivity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tiny_onnx, tiny_int8_onnx, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sensitivity") / "rows.json"
    _script().main(["--int8-onnx", str(tiny_int8_onnx), "--fp32-onnx", str(tiny_onnx),
                    "--weights-seed", "0", "--seeds", "0", "--clips", "1",
                    "--variant", "block 0", r"block0\..*", "-",
                    "--variant", "weights of blocks 0-3", "-", r"block[0-3]\..*",
                    "--json", str(out)])
    return {r["variant"]: r for r in json.loads(out.read_text())["rows"]}


def test_the_file_as_calibrated_is_judged_as_evad_parity_judges_it(study, tiny_int8_onnx,
                                                                   tiny_model) -> None:
    clips, sizes = parity.seeded_inputs(1, 1, tiny_model.preset.num_frames, 96, 192, 0)
    runner, _ = open_runner("ort", onnx=tiny_int8_onnx, precision="int8")
    with runner:
        report = parity.compare(tiny_model, runner, clips, sizes,
                                parity.thresholds_for("int8"), oracle_clips=0, twins=0)
    row = study["as calibrated"]["seeds"]["0"]
    assert row["min_jaccard"] == {str(b): round(j, 4) for b, j in report.min_jaccard().items()}
    assert row["action_prob_max_abs"] == round(report.prob_max_abs, 4)
    # the tiny INT8 export's roundings do move kept tokens: the rows below can tell
    assert min(row["min_jaccard"].values()) < 1.0


def test_every_backbone_product_back_in_float_gives_the_fp32_decisions(study) -> None:
    control = next(r for name, r in study.items() if name.startswith("control"))
    # blocks 0-8: 8 activation pairs and 4 products each, 6 and 3 in the pruning blocks 3 and 6
    # (the qkv product that feeds the importance is float already)
    assert control["qdq_pairs_removed"] == 7 * 8 + 2 * 6 and \
        control["weights_restored"] == 7 * 4 + 2 * 3
    seed = control["seeds"]["0"]
    assert set(seed["min_jaccard"].values()) == {1.0}
    # blocks 9-11 and the heads still run int8: the probabilities are not fp32's
    assert seed["action_prob_max_abs"] > 0


def test_a_variant_removes_only_what_its_keys_name(study, tiny_int8_onnx) -> None:
    assert study["block 0"]["qdq_pairs_removed"] == 8
    assert study["block 0"]["weights_restored"] == 0
    assert study["weights of blocks 0-3"]["qdq_pairs_removed"] == 0
    assert study["weights of blocks 0-3"]["weights_restored"] == 3 * 4 + 3
    keys = {_script().key_of(n) for n in onnx.load(str(tiny_int8_onnx)).graph.node}
    assert {f"block0.{p}" for p, _, _ in _script().PARTS} <= keys


def _scoped(node: onnx.NodeProto, *scopes: str) -> onnx.NodeProto:
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", *scopes]))
    return node


def _qdq_model(w: np.ndarray) -> onnx.ModelProto:
    """x -> LayerNorm (block 0's norm1) -> Q -> one DequantizeLinear read by a MatMul with an
    int8 weight (its own DQ) and a second DequantizeLinear that is a graph output."""
    wq = np.clip(np.round(w / 0.01), -127, 127).astype(np.int8)
    nodes = [
        _scoped(helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1),
                "model", "model.blocks.0", "model.blocks.0.norm1", "layer_norm"),
        helper.make_node("QuantizeLinear", ["ln", "s", "z"], ["ln_q"]),
        helper.make_node("DequantizeLinear", ["ln_q", "s", "z"], ["ln_dq"]),
        helper.make_node("DequantizeLinear", ["ln_q", "s", "z"], ["ln_dq_out"]),
        helper.make_node("DequantizeLinear", ["w_quantized", "ws", "z"],
                         ["w_DequantizeLinear_Output"]),
        _scoped(helper.make_node("MatMul", ["ln_dq", "w_DequantizeLinear_Output"], ["y"]),
                "model", "model.blocks.0", "model.blocks.0.mlp", "model.blocks.0.mlp.fc1",
                "linear_2"),
    ]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
             numpy_helper.from_array(wq, "w_quantized")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("ln_dq_out", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_with_float_gives_the_float_product_and_keeps_a_pair_a_graph_output_reads() -> None:
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    model = _qdq_model(w)
    fp32 = {"w": numpy_helper.from_array(w, "w")}
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    # the pair's second DequantizeLinear is a graph output: taking the pair out would leave it
    # without an input, so the pair stays and the product is as quantized
    same, pairs, restored = _script().with_float(model, fp32, r"block0\.norm1", r"block0\..*")
    assert (pairs, restored) == (0, 1)
    y, _ = _run(same, x)
    ln_q = np.clip(np.round(ln / 0.05), -128, 127) * 0.05
    np.testing.assert_allclose(y, ln_q @ w, rtol=1e-5, atol=1e-5)
    # without that output the pair goes, and both products' inputs are float
    del model.graph.output[1]
    model.graph.node.remove(model.graph.node[3])
    float_model, pairs, restored = _script().with_float(model, fp32, r"block0\.norm1",
                                                        r"block0\..*")
    assert (pairs, restored) == (1, 1)
    (y,) = _run(float_model, x)
    np.testing.assert_allclose(y, ln @ w, rtol=1e-5, atol=1e-5)
    # activations only: the weight stays int8, as a float constant; left as DequantizeLinear +
    # MatMul, ONNX Runtime fuses the two into MatMulNBits, which missed this by 1 %
    act_only, _, _ = _script().with_float(model, fp32, r"block0\.norm1", "")
    (y,) = _run(act_only, x)
    np.testing.assert_allclose(y, ln @ (np.clip(np.round(w / 0.01), -127, 127) * 0.01),
                               rtol=1e-5, atol=1e-5)


def test_with_float_refuses_a_weight_of_another_shape() -> None:
    w = np.ones((4, 3), np.float32)
    with pytest.raises(SystemExit, match="with the shape \\[4, 3\\]"):
        _script().with_float(_qdq_model(w), {"w": numpy_helper.from_array(w.T.copy(), "w")},
                             "", r"block0\..*")
