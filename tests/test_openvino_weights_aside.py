"""OpenVinoRunner rewrites the export with its weights set aside (the memory fix of #27) and
gives exactly the outputs of compiling the whole rewritten export; its performance counters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import TINY_H, TINY_W, require

from evad.export.parity import seeded_inputs


@pytest.fixture(scope="module")
def ov():
    return require("openvino", "openvino")


def test_large_initializers_become_inputs(tiny_onnx) -> None:
    from evad.export.openvino_runner import _WEIGHT_BYTES, _weights_to_inputs

    model = onnx.load(str(tiny_onnx))
    before = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = _weights_to_inputs(model)
    large = {n for n, v in before.items() if v.nbytes >= _WEIGHT_BYTES}
    assert large and set(weights) == large
    assert {t.name for t in model.graph.initializer} == set(before) - large
    inputs = {i.name: i for i in model.graph.input}
    for name, value in weights.items():
        assert np.array_equal(value, before[name])
        dims = [d.dim_value for d in inputs[name].type.tensor_type.shape.dim]
        assert dims == list(value.shape)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_runner_outputs_equal_the_whole_export_compiled(ov, tiny_onnx, precision,
                                                        monkeypatch) -> None:
    """The weights given back as Constants compile to the same kernels: bit-identical outputs
    to the export rewritten with its weights inside (how the runner compiled before), both
    compiled for one clip."""
    from evad.export import openvino_runner
    from evad.export.openvino_graph import openvino_graph
    from evad.export.openvino_runner import OpenVinoRunner, cpu_has_bf16

    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")  # compiled here, not loaded from a cache
    # the action pooler's f32 mark exists only in an IR file (test_openvino_compile tests it);
    # the whole export below is compiled in memory, so the runner's IR goes unmarked here
    monkeypatch.setattr(openvino_runner, "_keep_at_f32", lambda ir, layers: None)
    graph = openvino_graph(onnx.load(str(tiny_onnx)))
    core = ov.Core()
    model = core.read_model(graph.SerializeToString(), ov.Tensor(np.empty(0, np.uint8)))
    model.reshape({"clip": [1, 3, 16, TINY_H, TINY_W], "image_size": [1, 2]})
    whole = core.compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]})
    names = [o.get_any_name() for o in whole.outputs]
    clips, sizes = seeded_inputs(2, 1, 16, TINY_H, TINY_W, seed=3)
    with OpenVinoRunner(tiny_onnx, precision) as runner:
        for clip, size in zip(clips, sizes, strict=True):
            got = runner(clip, size)
            want = whole.create_infer_request().infer({"clip": clip, "image_size": size})
            assert sorted(got) == sorted(names)
            for name, out in zip(names, whole.outputs, strict=True):
                assert np.array_equal(got[name], np.asarray(want[out])), name


def test_perf_count_reports_executed_layers(ov, tiny_onnx, monkeypatch) -> None:
    from evad.export.openvino_runner import OpenVinoRunner

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")
    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=3)
    with OpenVinoRunner(tiny_onnx, "fp32", perf_count=True) as runner:
        runner(clips[0], sizes[0])
        done = [p for p in runner.request.get_profiling_info()
                if p.status == p.Status.EXECUTED]
    types = {p.node_type for p in done}
    assert {"FullyConnected", "ROIAlign"} <= types, types
    assert sum(p.real_time.total_seconds() for p in done) > 0
