"""``evad-triton-repo`` serves only what the runners would run: an ONNX file that is cut short,
carries broken evad metadata, or is another graph wearing copied evad metadata is refused in one
line naming the file (it used to write a repository for the latter and fail with
``DecodeError`` / ``ValueError: invalid literal for int()`` on the others), and nothing is
written. The check is ``evad.metadata.load_detector``, the one reading of an export for
serving."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from evad.cli.triton_repo import main
from evad.metadata import load_detector, read_metadata, write_metadata


def _add_graph_with(meta: dict) -> onnx.ModelProto:
    """A one-node Add graph (x + y) carrying ``meta`` as its evad metadata."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])],
                                                "add", [x, y], [z]))
    write_metadata(model, meta)
    return model


@pytest.mark.parametrize("case", ["foreign graph", "broken metadata", "cut short"])
def test_what_is_not_an_evad_detector_is_refused_in_one_line(tmp_path, capfd, tiny_onnx, case):
    path = tmp_path / "m.onnx"
    meta = read_metadata(tiny_onnx)
    if case == "foreign graph":
        onnx.save(_add_graph_with(meta), str(path))
        want = "carries evad metadata but is not an evad detector: its graph has no input 'clip'"
    elif case == "broken metadata":
        model = onnx.load(str(tiny_onnx), load_external_data=False)
        write_metadata(model, {**meta, "num_frames": "sixteen"})
        onnx.save(model, str(path))
        want = "has broken evad metadata: num_frames = 'sixteen' is not an integer"
    else:
        path.write_bytes(tiny_onnx.read_bytes()[:5000])
        want = "is not a readable ONNX file"
    rc = main(["--onnx", str(path), "--out", str(tmp_path / "repo"), "--cpu"])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and want in err[0] and str(path) in err[0], err
    assert not (tmp_path / "repo").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no half-written repository


def test_an_export_loads_with_its_spec(tiny_onnx):
    model, meta, spec = load_detector(tiny_onnx)
    assert meta == read_metadata(model)
    assert spec.input_size == tuple(meta["input_size"]) and spec.num_frames == meta["num_frames"]
    assert json.loads(json.dumps(meta)) == meta
