"""evad.engines on a CPU machine: function stripping, engine metadata checks, what the export's
engine step reports as missing, math modes and timing caches.

The builder's own parse and build with TensorRT-RTX on the CPU: tests/test_engines_rtx.py; the
graphs it hands a parser: tests/test_mixed_precision.py; GPU tests (real TensorRT builds, plugin
vs ORT, model parity): tests/test_engines_gpu.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from evad.engines import (
    EngineMismatchError,
    check_engine_metadata,
    engine_metadata,
    missing_for_engine_build,
    read_engine_metadata,
    strip_evad_functions,
)
from evad.errors import EvadError
from evad.models import build_model

H, W = 96, 160
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def tiny_onnx() -> onnx.ModelProto:
    from evad.export import export_onnx

    torch.manual_seed(0)
    return export_onnx(build_model("tiny").eval().calm(), H, W)


def test_strip_keeps_nodes_drops_functions(tiny_onnx) -> None:
    stripped = strip_evad_functions(tiny_onnx)
    assert not [f for f in stripped.functions if f.domain == "evad"]
    assert len(tiny_onnx.functions) == 2  # the original is untouched
    ops = {n.op_type for n in stripped.graph.node if n.domain == "evad"}
    assert ops == {"RoIAlign3D", "KeyframeTopKPrune"}
    attrs = {n.op_type: {a.name for a in n.attribute} for n in stripped.graph.node
             if n.domain == "evad"}
    from evad.op_contracts import CONTRACTS

    tags = {"plugin_namespace", "plugin_version"}  # what the parser's plugin lookup reads
    assert attrs == {k: set(c.field_names) | tags for k, c in CONTRACTS.items()}
    for n in stripped.graph.node:
        if n.domain == "evad":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            assert a["plugin_namespace"] == b"evad" and a["plugin_version"] == b"1"


ENV = {"tensorrt_version": "11.4.0", "gpu_name": "NVIDIA H100 80GB HBM3",
       "compute_capability": "9.0"}


def test_metadata_round_trip_and_mismatch(tmp_path) -> None:
    meta = engine_metadata(ENV, "fp16", {"input_size": [H, W], "num_frames": 16}, "ab" * 32,
                           "cpp", (1, 2, 4))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    Path(str(engine) + ".json").write_text(json.dumps(meta))
    back = read_engine_metadata(engine)
    assert back["precision"] == "fp16" and back["input_size"] == [H, W]
    assert back["batch_profile"] == [1, 2, 4] and back["plugins"] == "cpp"
    check_engine_metadata(back, ENV)  # same machine: accepted
    for key, other in (("gpu_name", "NVIDIA A100-SXM4-80GB"), ("compute_capability", "8.0"),
                       ("tensorrt_version", "10.14.1")):
        with pytest.raises(EngineMismatchError, match=key) as info:
            check_engine_metadata(back, {**ENV, key: other})
        assert "Rebuild" in str(info.value)


def test_missing_engine_or_sidecar_is_clear(tmp_path) -> None:
    with pytest.raises(EvadError, match="does not exist"):
        read_engine_metadata(tmp_path / "none.engine")
    (tmp_path / "a.engine").write_bytes(b"x")
    with pytest.raises(EvadError, match="rebuild the engine"):
        read_engine_metadata(tmp_path / "a.engine")


def test_missing_for_engine_build_names_packages() -> None:
    missing = missing_for_engine_build()
    if not torch.cuda.is_available():
        assert any(m.key == "gpu" and "CUDA GPU" in str(m) for m in missing)
    for m in missing:
        text = str(m)
        assert text and ("pip install" in text or "GPU" in text or "evad-build-plugins" in text)
        assert m.optional == (m.key == "plugin_library")  # the Python plugins can stand in


def test_build_refuses_without_tensorrt_or_gpu(tmp_path) -> None:
    from evad.engines import build

    if not [m for m in missing_for_engine_build() if not m.optional]:
        pytest.skip("this machine can build engines (see test_engines_gpu.py)")
    with pytest.raises(EvadError, match="cannot build a TensorRT engine here; missing"):
        build(tmp_path / "x.onnx", "fp16")
    with pytest.raises(EvadError, match="precision"):
        build(tmp_path / "x.onnx", "int3")


def test_trt_model_metadata_is_onnx_metadata_plus_engine() -> None:
    from evad.engines.metadata import merged_metadata

    onnx_meta = {"format_version": 1, "input_size": [H, W], "num_frames": 16,
                 "precision": "fp32", "labels": ["a"], "mean": [0.45] * 3}
    sidecar = engine_metadata(ENV, "fp16", onnx_meta, "00" * 32, "python", (1, 1, 8))
    meta = merged_metadata(sidecar)
    assert meta["format_version"] == 1 and meta["labels"] == ["a"]  # the ONNX keys
    assert meta["precision"] == "fp16"  # what the engine is, not what the ONNX asked for
    assert meta["gpu_name"] == ENV["gpu_name"] and meta["plugins"] == "python"
    assert "onnx_metadata" not in meta


@pytest.mark.parametrize("batch", ["2,1,8", "0,1,1", "1,2", "a,b,c"])
def test_bad_engine_batch_fails_before_work(tmp_path, capsys, batch: str) -> None:
    from evad.cli.export import main as export_main

    code = export_main(["--preset", "tiny", "--engine-batch", batch, "--out",
                        str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--engine-batch" in err[0]
    assert not (tmp_path / "o").exists()


class _Flags:
    """A BuilderFlag enum of a TensorRT version: TF32 always; FP16/BF16 on 10.x only."""

    TF32, FP16, BF16, OBEY_PRECISION_CONSTRAINTS = "TF32", "FP16", "BF16", "OBEY"


class _Flags11:
    TF32 = "TF32"  # TensorRT 11: strongly typed, no FP16/BF16/OBEY flags


class _RecordingConfig:
    """Records the flags a builder config is given (TensorRT's default: TF32 on)."""

    def __init__(self) -> None:
        self.flags = {"TF32"}

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)


class _NoLayers:
    num_layers = 0


@pytest.mark.parametrize(("flags", "precision", "want", "modes"), [
    (_Flags, "fp32", set(), {"tf32": False, "fp16": False, "bf16": False}),
    (_Flags11, "fp32", set(), {"tf32": False, "fp16": False, "bf16": False}),
    (_Flags, "tf32", {"TF32"}, {"tf32": True, "fp16": False, "bf16": False}),
    (_Flags, "fp16", {"FP16", "OBEY"}, {"tf32": False, "fp16": True, "bf16": False}),
    (_Flags11, "fp16", set(), {"tf32": False, "fp16": True, "bf16": False}),
    (_Flags, "bf16", {"BF16", "OBEY"}, {"tf32": False, "fp16": False, "bf16": True}),
])
def test_math_modes_clear_tf32_unless_asked(flags, precision, want, modes) -> None:
    """TensorRT turns TF32 on by default; an fp32 engine must be true fp32 (issue: an fp32
    engine built with TF32 rounds MatMul inputs to 10 bits and fails the fp32 parity bars)."""
    from types import SimpleNamespace

    from evad.engines.builder import set_math_modes

    trt = SimpleNamespace(BuilderFlag=flags, LayerType=SimpleNamespace(), float32="f32",
                          float16="f16", bfloat16="bf16")
    config = _RecordingConfig()
    got = set_math_modes(trt, config, _NoLayers(), precision, lambda m: None)
    assert config.flags == want
    assert got == modes


def test_sidecar_records_the_math_modes() -> None:
    modes = {"tf32": False, "fp16": True, "bf16": False}
    sidecar = engine_metadata(ENV, "fp16", {"input_size": [H, W]}, "00" * 32, "cpp", (1, 1, 8),
                              modes)
    assert sidecar["math_modes"] == modes and sidecar["precision"] == "fp16"


def test_pin_fp32_leaves_integer_outputs_alone() -> None:
    """TopK's index output and an integer reduction stay integer when their layer is pinned."""
    from types import SimpleNamespace

    from evad.engines.builder import _pin_fp32

    class Out:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    class Layer:
        def __init__(self, kind: str, dtypes: list[str]) -> None:
            self.type, self.precision, self.set = kind, None, {}
            self._outs = [Out(d) for d in dtypes]
            self.num_outputs = len(dtypes)

        def get_output(self, i: int) -> Out:
            return self._outs[i]

        def set_output_type(self, i: int, dtype: str) -> None:
            self.set[i] = dtype

    layers = [Layer("TOPK", ["f16", "i32"]), Layer("REDUCE", ["i32"]), Layer("MATMUL", ["f16"])]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    trt = SimpleNamespace(LayerType=SimpleNamespace(TOPK="TOPK", REDUCE="REDUCE",
                                                    NORMALIZATION="NORM", SOFTMAX="SOFTMAX"),
                          float32="f32", float16="f16", bfloat16="bf16")
    assert _pin_fp32(trt, network) == 1
    assert layers[0].set == {0: "f32"} and layers[0].precision == "f32"
    assert layers[1].set == {} and layers[1].precision is None  # integer reduction: untouched
    assert layers[2].precision is None


def test_a_foreign_timing_cache_is_replaced_not_fatal() -> None:
    """A timing cache from another GPU/TensorRT does not attach (set_timing_cache -> False):
    the build goes on with a fresh cache instead of failing after it."""
    from types import SimpleNamespace

    from evad.engines.builder import _configure

    class Config(_RecordingConfig):
        def __init__(self) -> None:
            super().__init__()
            self.caches: list[bytes] = []

        def set_memory_pool_limit(self, pool, size) -> None:
            pass

        def add_optimization_profile(self, profile) -> None:
            pass

        def create_timing_cache(self, data: bytes) -> bytes:
            return data

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            self.caches.append(cache)
            return cache == b""  # only a fresh cache matches

    config = Config()
    builder = SimpleNamespace(create_builder_config=lambda: config,
                              create_optimization_profile=lambda: SimpleNamespace(
                                  set_shape=lambda *a: None))
    trt = SimpleNamespace(BuilderFlag=_Flags11, MemoryPoolType=SimpleNamespace(WORKSPACE=0),
                          Dims=list, LayerType=SimpleNamespace())
    logs: list[str] = []
    _configure(trt, builder, _NoLayers(), "fp32", {"input_size": [H, W], "num_frames": 16},
               (1, 1, 8), 1.0, b"old cache", logs.append)
    assert config.caches == [b"old cache", b""]
    assert any("timing cache does not match" in m for m in logs)
