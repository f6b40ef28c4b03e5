"""TensorRT on a GPU: single-op engines with the C++ plugin vs the Python plugin vs ONNX Runtime
(the local function), the whole model's engines (fp32, fp16, bf16) against the torch reference
under the design's thresholds, and an engine whose metadata names another GPU refused.
Run: ``pytest -m gpu`` on a machine with TensorRT (pip install tensorrt) and a CUDA GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from evad.export.ops import function_protos


def _have_tensorrt_builder() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")  # tensorrt-stubs import as an empty package


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(not _have_tensorrt_builder(),
                       reason="needs TensorRT with a builder (pip install tensorrt)"),
]

H, W = 96, 160
OPS = {
    "RoIAlign3D": {
        "inputs": [("features", TensorProto.FLOAT, [2, 16, 4, 12, 20]),
                   ("rois", TensorProto.FLOAT, [24, 5])],
        "outputs": [("output", TensorProto.FLOAT, None)],
        "attrs": {"output_height": 7, "output_width": 7, "spatial_scale": 1 / 16,
                  "sampling_ratio": 2, "aligned": 1}},
    "KeyframeTopKPrune": {
        "inputs": [("q", TensorProto.FLOAT, [2, 4, 300, 32]),
                   ("k", TensorProto.FLOAT, [2, 4, 300, 32]),
                   ("x_nonkey", TensorProto.FLOAT, [2, 240, 48]),
                   ("idx", TensorProto.INT64, [2, 240])],
        "outputs": [("x_kept", TensorProto.FLOAT, None), ("idx_kept", TensorProto.INT64, None)],
        "attrs": {"keep_num": 7, "keep_den": 10, "keyframe_weight": 2.0}},
}


def _single_op_model(op: str) -> onnx.ModelProto:
    spec = OPS[op]
    node = helper.make_node(op, [n for n, _, _ in spec["inputs"]],
                            [n for n, _, _ in spec["outputs"]], domain="evad", **spec["attrs"])
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(n, t, s) for n, t, s in spec["inputs"]],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in spec["outputs"]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("evad", 1)])
    model.functions.extend(f for f in function_protos() if f.name == op)
    return model


def _inputs(op: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if op == "RoIAlign3D":
        boxes = rng.uniform(-40, 300, (24, 4)).astype(np.float32)
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 160, (24, 2)).astype(np.float32)
        batch = rng.integers(0, 2, (24, 1)).astype(np.float32)
        return {"features": rng.standard_normal((2, 16, 4, 12, 20), dtype=np.float32),
                "rois": np.concatenate([batch, boxes], axis=1)}
    # ranked importances (gaps >> 1e-4), as tests/test_kernels_cpu.py
    b, h, n, s, d = 2, 4, 300, 60, 32
    q = 0.1 * rng.standard_normal((b, h, n, d), dtype=np.float32)
    q[..., 0] = 1.0
    k = rng.standard_normal((b, h, n, d), dtype=np.float32)
    ranks = np.stack([rng.permutation(n - s) for _ in range(b)])
    k[:, :, s:, :] = 0.0
    k[:, :, s:, 0] = np.log1p(4.0 * ranks[:, None, :] / (n - s))
    return {"q": q, "k": k, "x_nonkey": rng.standard_normal((b, n - s, 48), dtype=np.float32),
            "idx": np.stack([rng.permutation(n - s) for _ in range(b)]).astype(np.int64)}


_RUN_ENGINE = textwrap.dedent("""
    import sys, numpy as np, onnx, tensorrt as trt, torch
    from evad.engines.onnx_prep import strip_evad_functions
    from evad.plugins import load
    kind, model_path, inputs_path, out_path = sys.argv[1:5]
    load(kind)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    stripped = strip_evad_functions(onnx.load(model_path))
    assert parser.parse(stripped.SerializeToString()), [str(parser.get_error(i))
                                                        for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(network, config))
    ctx = engine.create_execution_context()
    feeds = dict(np.load(inputs_path))
    keep = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            keep[name] = torch.from_numpy(feeds[name]).cuda()
        else:
            dt = {trt.float32: torch.float32, trt.int64: torch.int64}[engine.get_tensor_dtype(name)]
            keep[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dt, device="cuda")
        ctx.set_tensor_address(name, keep[name].data_ptr())
    stream = torch.cuda.Stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    np.savez(out_path, **{n: t.cpu().numpy() for n, t in keep.items() if n not in feeds})
""")


@pytest.mark.parametrize("op", sorted(OPS))
def test_single_op_cpp_vs_python_vs_ort(op: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _single_op_model(op)
    model_path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(model_path))
    feeds = _inputs(op)
    np.savez(tmp_path / "inputs.npz", **feeds)
    got = {}
    for kind in ("cpp", "python"):  # one plugin set per process
        out = tmp_path / f"{kind}.npz"
        proc = subprocess.run([sys.executable, "-c", _RUN_ENGINE, kind, str(model_path),
                               str(tmp_path / "inputs.npz"), str(out)], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[kind] = dict(np.load(out))
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    for kind, outs in got.items():
        for name, want in ref.items():
            if want.dtype == np.int64 or op == "KeyframeTopKPrune":
                assert np.array_equal(outs[name], want), (kind, name)
            else:
                assert np.abs(outs[name] - want).max() <= 1e-5, (kind, name)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from evad.models import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model("tiny").calm(), tmp_path_factory.mktemp("c") / "tiny.pth")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_model_engine_parity(tiny_ckpt, tmp_path, precision: str) -> None:
    from evad.cli.export import main as export_main
    from evad.engines.trt_runner import TrtRunner
    from evad.export import FP32_THRESHOLDS, REDUCED_THRESHOLDS, compare, seeded_inputs
    from evad.models import load_checkpoint

    args = ["--ckpt", str(tiny_ckpt), "--height", str(H), "--width", str(W), "--out",
            str(tmp_path), "--parity-clips", "0"] + ([f"--{precision}"] if precision != "fp32"
                                                     else [])
    assert export_main(args) == 0
    engine = tmp_path / "tiny.engine"
    meta = json.loads(Path(str(engine) + ".json").read_text())
    assert meta["precision"] == precision and meta["input_size"] == [H, W]
    # TensorRT enables TF32 by default: an fp32 engine is built with it cleared (and the fp32
    # parity bars below would catch a TF32 engine: ~1e-3 relative error per MatMul)
    assert meta["math_modes"]["tf32"] is False
    assert meta["math_modes"]["fp16"] is (precision == "fp16")
    assert meta["math_modes"]["bf16"] is (precision == "bf16")
    model, _ = load_checkpoint(tiny_ckpt)
    clips, sizes = seeded_inputs(2, 2, 16, H, W, seed=5)
    thresholds = FP32_THRESHOLDS if precision == "fp32" else REDUCED_THRESHOLDS
    # TrtRunner's buffers and stream are cuda-python's: `with` frees them (close())
    with TrtRunner(engine) as trt_model:
        report = compare(model, trt_model, clips, sizes, thresholds)
    print("\n".join(report.lines()))
    assert report.passed, report.lines()
    trt_model.close()  # idempotent


def test_engine_for_another_gpu_is_refused(tiny_ckpt, tmp_path) -> None:
    from evad.cli.export import main as export_main
    from evad.engines import EngineMismatchError
    from evad.engines.trt_runner import TrtRunner

    assert export_main(["--ckpt", str(tiny_ckpt), "--height", str(H), "--width", str(W),
                        "--out", str(tmp_path), "--parity-clips", "0"]) == 0
    sidecar = tmp_path / "tiny.engine.json"
    meta = json.loads(sidecar.read_text())
    meta["gpu_name"], meta["compute_capability"] = "NVIDIA GeForce GTX 1080", "6.1"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(EngineMismatchError, match="gpu_name"):
        TrtRunner(tmp_path / "tiny.engine")
