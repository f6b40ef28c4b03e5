"""save_model: atomic writes, and external data past protobuf's 2 GB limit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evad.export import onnx_export
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
