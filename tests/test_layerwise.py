"""The layerwise comparison (evad.export.layerwise, evad-parity --layerwise[-against]): it must
name exactly the node that was altered, stay quiet on identical graphs and on noise under the
precision's tolerance, and tell near-ties from divergences. ONNX Runtime on the CPU; the
engine half is GPU-only (here: its refusal)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evad.cli.parity import main as parity_main
from evad.export.layerwise import (
    TOLERANCES,
    LayerRunner,
    compare_layers,
    engine_marks,
    layer_tensors,
    mark_outputs,
    merge_reports,
)

FP32, FP16 = TOLERANCES["fp32"], TOLERANCES["fp16"]
#: the chain's node outputs, in topological order
CHAIN = ["h1", "h1b", "r1", "logits", "probs", "top_v", "top_i", "picked", "best"]


def _chain(add_op: str = "Add", softmax_axis: int = -1,
           w2: np.ndarray | None = None) -> onnx.ModelProto:
    """x (4, 8) -> MatMul -> Add bias -> Relu -> MatMul -> Softmax -> TopK(3) -> GatherElements
    of the logits at the top-3 -> ArgMax. Seeded weights."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 6)).astype(np.float32) if w2 is None else w2
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node(add_op, ["h1", "b1"], ["h1b"], name="add1"),
        helper.make_node("Relu", ["h1b"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["logits"], name="mm2"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=softmax_axis),
        helper.make_node("TopK", ["probs", "k"], ["top_v", "top_i"], name="topk", axis=-1),
        helper.make_node("GatherElements", ["logits", "top_i"], ["picked"], name="gather",
                         axis=1),
        helper.make_node("ArgMax", ["picked"], ["best"], name="argmax", axis=1, keepdims=0),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([3], np.int64), "k")]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("best", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("top_v", TensorProto.FLOAT, [4, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _x() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}


def _run(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return LayerRunner(model)(_x())


def _assert_first_is(report, node: str, op_type: str, tensor: str) -> None:
    first = report.first
    assert first is not None, report.lines()
    assert (first.node, first.op_type, first.tensor) == (node, op_type, tensor), first
    before = [d for d in report.diffs if d.position < first.position]
    assert before and all(d.status == "equal" and d.max_abs == 0 for d in before), before
    assert not report.passed


def test_every_intermediate_tensor_is_returned_in_order() -> None:
    model = _chain()
    assert list(layer_tensors(model)) == CHAIN
    assert [o.name for o in mark_outputs(model, CHAIN).graph.output] == [
        "best", "top_v", "h1", "h1b", "r1", "logits", "probs", "top_i", "picked"]
    out = _run(model)
    assert list(out) == ["best", "top_v", "h1", "h1b", "r1", "logits", "probs", "top_i",
                         "picked"]
    x = _x()["x"]
    h1b = x @ numpy_helper.to_array(model.graph.initializer[0]) + numpy_helper.to_array(
        model.graph.initializer[1])
    np.testing.assert_allclose(out["h1b"], h1b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["r1"], np.maximum(out["h1b"], 0))
    assert out["top_i"].dtype == np.int64 and out["top_i"].shape == (4, 3)


def test_identical_graphs_do_not_diverge() -> None:
    model = _chain()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    report = compare_layers(model, _run(model), _run(copy), FP32, candidate_model=copy)
    assert report.passed and report.first is None and not report.near_ties
    assert [d.tensor for d in report.diffs] == CHAIN
    assert all(d.status == "equal" and d.max_abs == 0 for d in report.diffs)
    assert report.summary().startswith("no divergence: 9 tensors within the fp32 tolerance")


def test_one_changed_weight_names_its_matmul() -> None:
    model = _chain()
    ref = _run(model)
    w2 = numpy_helper.to_array(model.graph.initializer[2]).copy()
    # the weight that matters most: the largest |w| on the most active hidden unit
    j = int(np.argmax(ref["r1"].sum(axis=0)))
    k = int(np.argmax(np.abs(w2[j])))
    w2[j, k] *= 1 + 1e-2
    altered = _chain(w2=w2)
    report = compare_layers(model, ref, _run(altered), FP32, candidate_model=altered)
    _assert_first_is(report, "mm2", "MatMul", "logits")
    first = report.first
    assert first is not None and first.candidate_op_type is None
    # the change itself, as the report measures it: one column moves by r1[:, j] * dw
    want = float(np.abs(ref["r1"][:, j] * w2[j, k] * (1e-2 / (1 + 1e-2))).max())
    assert math.isclose(first.max_abs, want, rel_tol=1e-3)
    assert first.max_rel > 10 * FP32.rtol
    assert first.scale == pytest.approx(float(np.abs(ref["logits"]).max()))
    assert "MatMul mm2 -> 'logits'" in report.summary()
    # ... and an fp16 bar is too coarse to see a 1e-2 change of one weight
    assert compare_layers(model, ref, _run(altered), FP16).first is None


def test_add_swapped_for_sub_names_the_add() -> None:
    model, altered = _chain(), _chain(add_op="Sub")
    report = compare_layers(model, _run(model), _run(altered), FP32, candidate_model=altered)
    _assert_first_is(report, "add1", "Add", "h1b")
    first = report.first
    assert first is not None and first.candidate_op_type == "Sub"
    assert first.position == 1 and first.max_rel > 0.1
    assert "Add (candidate: Sub) add1 -> 'h1b'" in report.summary()


def test_softmax_axis_names_the_softmax() -> None:
    model, altered = _chain(), _chain(softmax_axis=0)
    report = compare_layers(model, _run(model), _run(altered), FP32, candidate_model=altered)
    _assert_first_is(report, "softmax", "Softmax", "probs")
    first = report.first
    assert first is not None and first.candidate_op_type is None and first.max_rel > 0.1


def _noisy(ref: dict[str, np.ndarray], noise) -> dict[str, np.ndarray]:
    return {k: noise(v) if v.dtype == np.float32 else v.copy() for k, v in ref.items()}


def test_fp16_noise_passes_the_fp16_bar_and_fails_the_fp32_one() -> None:
    model = _chain()
    ref = _run(model)
    # every float tensor rounded to fp16: the error a 10-bit mantissa makes, per layer
    halved = _noisy(ref, lambda v: v.astype(np.float16).astype(np.float32))
    report = compare_layers(model, ref, halved, FP16, "fp16")
    assert report.passed, report.lines()
    floats = [d for d in report.diffs if d.kind == "float"]
    assert all(d.status == "within" for d in floats)
    assert 1e-4 < max(d.max_rel for d in floats) <= 2.0**-11
    # the same noise is a divergence at fp32, at the first float tensor
    strict = compare_layers(model, ref, halved, FP32)
    assert strict.first is not None and strict.first.tensor == "h1"
    # fp32 rounding noise (one ulp here and there) stays within the fp32 bar
    rng = np.random.default_rng(2)
    ulp = _noisy(ref, lambda v: np.where(rng.random(v.shape) < 0.5, np.nextafter(v, np.inf),
                                         v).astype(np.float32))
    report = compare_layers(model, ref, ulp, FP32)
    assert report.passed and any(d.status == "within" for d in report.diffs)


def test_nan_must_match_in_place() -> None:
    model = _chain()
    ref = _run(model)
    ref["h1"][0, 0] = np.nan
    same = _noisy(ref, np.copy)
    assert compare_layers(model, ref, same, FP32).passed
    moved = _noisy(ref, np.copy)
    moved["h1"][0, 0], moved["h1"][0, 1] = 1.0, np.nan
    report = compare_layers(model, ref, moved, FP32)
    assert report.first is not None and report.first.tensor == "h1"
    assert report.first.max_abs == math.inf and report.to_dict()["first_divergence"][
        "max_abs"] is None


def _swap_ranks(ref: dict[str, np.ndarray], row: int = 0) -> dict[str, np.ndarray]:
    """The candidate picks the 2nd and 3rd of one row in the other order, and what follows
    from the indices (the gathered logits, the argmax) follows that decision."""
    cand = _noisy(ref, np.copy)
    cand["top_i"][row, [1, 2]] = cand["top_i"][row, [2, 1]]
    cand["picked"][row, [1, 2]] = cand["picked"][row, [2, 1]]
    cand["best"] = np.argmax(cand["picked"], axis=1)
    return cand


def test_an_index_swap_after_float_noise_is_a_near_tie() -> None:
    model = _chain()
    ref = _run(model)
    # floats moved within the fp32 bar (so near-equal scores may swap), indices swapped
    cand = _swap_ranks(_noisy(ref, lambda v: v * np.float32(1 + 1e-6)))
    report = compare_layers(model, ref, cand, FP32)
    assert report.passed, report.lines()
    assert [d.tensor for d in report.near_ties] == ["top_i"]
    status = {d.tensor: d.status for d in report.diffs}
    assert status["probs"] == "within" and status["top_i"] == "near-tie"
    # the node's other output and everything computed from the decision: not judged
    assert status["top_v"] == status["picked"] == "after-near-tie"
    assert "near-tie (not judged): TopK topk -> 'top_i'" in "\n".join(report.lines())


def test_an_index_change_with_identical_floats_is_a_divergence() -> None:
    model = _chain()
    ref = _run(model)
    report = compare_layers(model, ref, _swap_ranks(ref), FP32)
    _assert_first_is(report, "topk", "TopK", "top_i")
    first = report.first
    assert first is not None and first.kind == "int" and first.mismatched == 2


def test_an_index_changed_beyond_a_tie_is_a_divergence() -> None:
    model = _chain()
    ref = _run(model)
    cand = _noisy(ref, lambda v: v * np.float32(1 + 1e-6))
    for row in range(4):  # every row picks the three it did not pick: no near-tie does that
        cand["top_i"][row] = np.setdiff1d(np.arange(6), ref["top_i"][row])
    report = compare_layers(model, ref, cand, FP32)
    assert report.first is not None and report.first.tensor == "top_i"
    assert not report.near_ties


def test_clips_merge_to_the_worst() -> None:
    model, altered = _chain(), _chain(add_op="Sub")
    ref = _run(model)
    clean = compare_layers(model, ref, _run(model), FP32)
    bad = compare_layers(model, ref, _run(altered), FP32)
    merged = merge_reports([clean, bad, clean])
    assert merged.clips == 3 and merged.first is not None and merged.first.tensor == "h1b"
    assert [d.tensor for d in merged.diffs] == CHAIN


def test_engine_marks_leave_out_constants_and_shape_arithmetic() -> None:
    """What TensorRT folds at build time (Constant outputs, shapes computed from Shape) and
    what an engine cannot return (double) is not marked; device tensors are."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["minus1"],
                         value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Gather", ["shape", "zero"], ["n"]),
        helper.make_node("Concat", ["n", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["relu"]),
        helper.make_node("Greater", ["relu", "half"], ["mask"]),
        helper.make_node("Cast", ["relu"], ["wide"], to=TensorProto.DOUBLE),
        helper.make_node("ArgMax", ["relu"], ["arg"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "marks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("wide", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert list(layer_tensors(model)) == ["shape", "minus1", "n", "flat_shape", "flat", "relu",
                                          "mask", "wide", "arg"]
    assert engine_marks(model) == ["flat", "relu", "mask", "arg"]
    out = LayerRunner(model)({"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 6})
    assert out["flat"].shape == (2, 12) and out["arg"].tolist() == [[11], [11]]


# -- the command, on a real export -----------------------------------------------------------

def _middle_encoder_matmul(model: onnx.ModelProto) -> tuple[onnx.NodeProto, str]:
    """The middle MatMul of the encoder (before the first RoIAlign3D of the head) whose weight
    is an initializer used by that node alone; and the weight's name."""
    inits = {i.name for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    head = next(k for k, n in enumerate(model.graph.node) if n.op_type == "RoIAlign3D")
    found = [(n, w) for n in model.graph.node[:head] if n.op_type == "MatMul"
             for w in n.input if w in inits and uses[w] == 1]
    assert len(found) > 10
    return found[len(found) // 2]


def test_cli_names_the_altered_matmul_of_an_export(tiny_onnx, tmp_path, capsys) -> None:
    altered = tmp_path / "altered.onnx"
    node = _altered_export(tiny_onnx, altered)
    report = tmp_path / "layers.json"
    code = parity_main(["--onnx", str(tiny_onnx), "--layerwise-against", str(altered),
                        "--clips", "1", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "first divergence at node " in out and f"MatMul {node.name} -> " \
        f"'{node.output[0]}'" in out and out.rstrip().endswith("FAIL")
    got = json.loads(report.read_text())
    first = got["first_divergence"]
    assert (first["node"], first["op_type"], first["tensor"]) == (node.name, "MatMul",
                                                                   node.output[0])
    # every weight scaled by 1.01: the product moves by 1 % of its scale
    assert first["max_rel"] == pytest.approx(0.01, rel=0.05)
    before = [t for t in got["tensors"] if t["position"] < first["position"]]
    assert len(before) > 100 and all(t["status"] == "equal" for t in before)

    code = parity_main(["--onnx", str(tiny_onnx), "--layerwise-against", str(tiny_onnx),
                        "--clips", "1", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no divergence" in out and out.rstrip().endswith("PASS")
    got = json.loads(report.read_text())
    assert got["passed"] and got["first_divergence"] is None and got["compared"] > 1000
    assert all(t["status"] == "equal" for t in got["tensors"])


def test_cli_refuses_layerwise_engine_without_tensorrt_first(tmp_path, capfd) -> None:
    from evad.engines import missing_for_engine_build

    if not [m for m in missing_for_engine_build() if not m.optional]:
        pytest.skip("this machine builds engines")
    # the engine file does not even exist: the refusal comes before any file is read
    code = parity_main(["--engine", str(tmp_path / "m.engine"), "--layerwise"])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("evad-parity: error: --layerwise builds and runs a TensorRT "
                             "engine") and "TensorRT" in err[0] and "--layerwise-against" in err[0]
    assert list(tmp_path.iterdir()) == []


def _altered_export(tiny_onnx: Path, out: Path) -> onnx.NodeProto:
    """A copy of the export with one encoder MatMul's weight scaled by 1.01; that node."""
    model = onnx.load(str(tiny_onnx))
    node, weight = _middle_encoder_matmul(model)
    init = next(i for i in model.graph.initializer if i.name == weight)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01),
                                          weight))
    onnx.save(model, str(out))
    return node


def test_cli_engine_half_on_a_stand_in_engine(tiny_onnx, tmp_path, monkeypatch,
                                              capsys) -> None:
    """The --engine --layerwise plumbing without a GPU: the builder and the TensorRT runner
    replaced by stand-ins (the 'engine' is ONNX Runtime on an altered copy, returning, as
    TrtRunner does, each marked tensor's first batch row along axis 0). What the command
    asks the builder for, and that it names the altered MatMul, are checked."""
    import evad.cli.parity as cli
    from evad.engines.onnx_prep import for_parser
    from evad.fused_attention import decompose_fused_attention
    from evad.hashing import onnx_sha256
    from evad.runtime import backends

    altered = tmp_path / "altered.onnx"
    node = _altered_export(tiny_onnx, altered)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "m.engine.json").write_text(json.dumps({
        "format_version": 1, "precision": "fp32", "plugins": "python",
        "onnx_sha256": onnx_sha256(tiny_onnx)}))
    asked: dict = {}

    def build(onnx_path, **kw):
        asked.update(kw, onnx_path=Path(onnx_path))
        Path(kw["out"]).write_bytes(b"plan")  # as the real build, the plan is on disk
        return Path(kw["out"])

    class StandIn:
        def __init__(self, path) -> None:
            self.run = LayerRunner(decompose_fused_attention(onnx.load(str(altered))),
                                   asked["mark_outputs"])

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def __call__(self, clip, size):
            out = self.run({"clip": clip, "image_size": size})
            return {k: v[:1] if v.ndim else v for k, v in out.items()}

    monkeypatch.setattr(cli, "missing_for_engine_build", lambda: [])
    monkeypatch.setattr("evad.engines.builder.build", build)  # cli.builder loads it lazily
    monkeypatch.setattr(backends, "TrtRunner", StandIn)  # what open_runner("trt") makes
    code = cli.main(["--engine", str(engine), "--onnx", str(tiny_onnx), "--layerwise",
                     "--clips", "1"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 1, out + captured.err
    assert f"MatMul {node.name} -> '{node.output[0]}'" in out and "FAIL" in out
    # compared on first rows: the head's (20 * batch, ...) tensors; said so
    assert "tensors compared on their first rows only" in out
    assert asked["onnx_path"] == tiny_onnx and asked["precision"] == "fp32"
    assert asked["batch"] == (1, 1, 1) and asked["plugins"] == "python"
    marks = asked["mark_outputs"]
    parser = for_parser(onnx.load(str(tiny_onnx)))
    names = {o for n in parser.graph.node for o in n.output}
    constants = {o for n in parser.graph.node if n.op_type == "Constant" for o in n.output}
    assert node.output[0] in marks and set(marks) <= names and not set(marks) & constants
    assert len(marks) > 900

    # another ONNX than the engine's is refused; so is an engine with no ONNX beside it
    code = cli.main(["--engine", str(engine), "--onnx", str(altered), "--layerwise"])
    err = capsys.readouterr().err
    assert code == 2 and "is not the ONNX m.engine was built from" in err, err
    code = cli.main(["--engine", str(engine), "--layerwise"])
    err = capsys.readouterr().err
    assert code == 2 and "pass it with --onnx (there is no m.onnx beside m.engine)" in err, err


@pytest.mark.parametrize(("argv", "words"), [
    (["--onnx", "a.onnx", "--layerwise"], "give --engine"),
    (["--engine", "e.engine", "--layerwise-against", "b.onnx"], "not --engine"),
    (["--engine", "e.engine", "--layerwise", "--layerwise-against", "b.onnx"], "not --engine"),
    (["--onnx", "a.onnx", "--engine", "e.engine"], "not allowed with argument --onnx"),
    (["--onnx", "a.onnx", "--layerwise-against", "b.onnx", "--ckpt", "c.pth"], "--ckpt"),
    (["--onnx", "a.onnx", "--layerwise-against", "b.onnx", "--batch", "2"], "--batch"),
    (["--onnx", "a.onnx", "--top", "5"], "only with --layerwise"),
    (["--onnx", "a.onnx", "--layerwise-against", "b.onnx", "--rtol", "-1"], "--rtol"),
    ([], "one of the arguments --onnx --engine is required"),
])
def test_cli_refuses_flag_combinations_at_parse_time(argv, words, tmp_path, capfd) -> None:
    with pytest.raises(SystemExit) as e:
        parity_main([str(tmp_path / a) if a.endswith((".onnx", ".engine", ".pth")) else a
                     for a in argv])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and words in err[0], err
    assert err[0].startswith("evad-parity: error:")


def test_cli_refuses_graphs_it_cannot_feed(tiny_onnx, tmp_path, capfd) -> None:
    """A reference without evad metadata (no input size to make clips for), and a second graph
    whose inputs are not the reference's: one line each, before anything runs."""
    chain = tmp_path / "chain.onnx"
    onnx.save(_chain(), str(chain))
    code = parity_main(["--onnx", str(chain), "--layerwise-against", str(chain)])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "metadata" in err[0], err
    code = parity_main(["--onnx", str(tiny_onnx), "--layerwise-against", str(chain)])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "has inputs ['x'], the reference ['clip', 'image_size']" in err[0]


def test_the_json_report_is_plain_json(tmp_path: Path) -> None:
    model, altered = _chain(), _chain(add_op="Sub")
    d = compare_layers(model, _run(model), _run(altered), FP32, candidate_model=altered).to_dict()
    again = json.loads(json.dumps(d, allow_nan=False))
    assert again["first_divergence"]["tensor"] == "h1b" and again["tolerance"] == {
        "rtol": 1e-4, "atol": 1e-5} and len(again["tensors"]) == 9
