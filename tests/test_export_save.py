"""save_model: atomic writes, and external data past protobuf's 2 GB limit (written by
``evad.export.external_data``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evad.export import onnx_export
from evad.export.external_data import initializers, save_with_weights_file
from evad.export.onnx_export import save_model


def _model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.ones((2, 3), np.float32)})[0]


def test_small_model_is_one_file(tmp_path) -> None:
    out = save_model(_model(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    np.testing.assert_array_equal(_run(out), np.ones((2, 3)) @ np.arange(12).reshape(3, 4))


def test_large_model_gets_external_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "_TWO_GB", 16)  # pretend the model is past the limit
    out = save_model(_model(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_array_equal(_run(out), np.ones((2, 3)) @ np.arange(12).reshape(3, 4))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(_model(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_large_model_saves_from_a_folder_holding_an_older_one(tmp_path, monkeypatch) -> None:
    """Re-exporting past the limit from the folder that holds the last export: onnx's own
    external-data writer refuses when ``m.onnx.data`` exists in the current folder (it checks
    the name there, not in the model's folder); ours writes beside the model, and the old file
    in the current folder stays as it was."""
    monkeypatch.setattr(onnx_export, "_TWO_GB", 16)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx.data").write_bytes(b"an older export's weights")
    out = save_model(_model(), tmp_path / "exports" / "m.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_array_equal(_run(out), np.ones((2, 3)) @ np.arange(12).reshape(3, 4))
    assert (tmp_path / "m.onnx.data").read_bytes() == b"an older export's weights"


def test_weights_file_holds_subgraph_initializers_and_leaves_the_rest_inline(tmp_path) -> None:
    """``save_with_weights_file``: an ``If`` branch's initializer goes to the file as the main
    graph's does; a tensor under ``min_bytes`` or held as ``float_data`` stays in the graph;
    ONNX Runtime runs the result; a second write over the data file is refused."""
    big = numpy_helper.from_array(np.arange(300, dtype=np.float32).reshape(1, 300), "big")
    small = numpy_helper.from_array(np.full((1, 300), 2.0, np.float32), "small")
    small.ClearField("raw_data")
    small.float_data.extend([2.0] * 300)
    then = numpy_helper.from_array(np.full((1, 300), 5.0, np.float32), "then_w")
    branch = helper.make_graph([helper.make_node("Add", ["x", "then_w"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 300])],
                               initializer=[then])
    other = helper.make_graph([helper.make_node("Mul", ["x", "small"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 300])])
    nodes = [helper.make_node("Add", ["x0", "big"], ["x"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 300]),
                     helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300])],
        initializer=[big, small])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    out = tmp_path / "m.onnx"
    data = save_with_weights_file(model, out, min_bytes=1024)
    assert data == tmp_path / "m.onnx.data" and data.stat().st_size == 2 * 1200
    kept = onnx.load(str(out), load_external_data=False)
    located = {t.name: t.data_location for t in initializers(kept.graph)}
    assert located == {"big": TensorProto.EXTERNAL, "small": TensorProto.DEFAULT,
                       "then_w": TensorProto.EXTERNAL}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x0 = np.ones((1, 300), np.float32)
    for cond, want in ((True, x0 + np.arange(300) + 5.0), (False, (x0 + np.arange(300)) * 2)):
        np.testing.assert_array_equal(sess.run(None, {"x0": x0, "c": np.array(cond)})[0], want)
    with pytest.raises(FileExistsError, match="m.onnx.data exists"):
        save_with_weights_file(_model(), out, min_bytes=0)


def test_commit_leaves_a_working_folder_behind(tmp_path) -> None:
    """A folder in the staging folder (a step's working folder whose removal failed) is not
    moved into the destination; it goes with the staging folder."""
    with onnx_export.Staging(tmp_path / "m.onnx") as staging:
        (staging.folder / ".int8-weights-x").mkdir()
        (staging.folder / ".int8-weights-x" / "fp32.onnx.data").write_bytes(b"weights")
        staging.write(_model())
        staging.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
