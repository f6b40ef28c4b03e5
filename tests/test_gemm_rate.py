"""The GEMM yardstick's products compute what they claim: torch's int8 kernel a real u8 x s8
product, OpenVINO's float and Q/DQ products the matrix product of their inputs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import require

from evad.runtime.gemm_rate import gemm_rates, int8_product, openvino_product


def _openvino() -> None:
    require("openvino", "openvino")


def test_int8_yardstick_is_a_real_u8_s8_product() -> None:
    """The int8 GEMM rate times a real (m, k) u8 x (k, n) s8 product: its result, dequantized,
    is the float product of its dequantized inputs to within the u8 output's rounding (half its
    scale) where not clipped (the oneDNN engine), or exactly (``torch._int_mm``); torch's
    quantized engine is as it was."""
    engine = torch.backends.quantized.engine
    product = int8_product(64, 96, 80, torch.Generator().manual_seed(3))
    out = product()
    assert torch.backends.quantized.engine == engine
    x, w = product.args[0], product.args[1]
    if out.dtype == torch.int32:  # torch._int_mm: int8 x int8 -> int32, exact
        assert torch.equal(out, x.int() @ w.int())
        return
    want = x.dequantize() @ torch.ops.quantized.linear_unpack(w)[0].dequantize().T
    inside = (want > out.q_scale() * -out.q_zero_point()) & (
        want < out.q_scale() * (255 - out.q_zero_point()))  # not clipped by the u8 output
    assert inside.float().mean() > 0.3
    assert (out.dequantize() - want)[inside].abs().max() <= out.q_scale() / 2 + 1e-4


def _inputs(m: int = 96, k: int = 128, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return (rng.standard_normal((m, k), dtype=np.float32),
            rng.standard_normal((k, n), dtype=np.float32))


def test_openvino_fp32_product_is_the_matrix_product() -> None:
    _openvino()
    x, w = _inputs()
    call = openvino_product("fp32", x, w, threads=1)
    assert call is not None
    want = x.astype(np.float64) @ w
    t0 = time.perf_counter()
    got = call()
    wall = time.perf_counter() - t0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert 0 < call.kernel_s() <= wall  # the product's layer alone, read from the counters


def test_openvino_bf16_product_rounds_its_inputs_to_bf16() -> None:
    """Where the CPU has native bf16: the product of the bf16-rounded inputs (f32 accumulation),
    not the f32 product: the error to the f32 product is bf16's, and to the rounded one far
    smaller."""
    _openvino()
    x, w = _inputs()
    call = openvino_product("bf16", x, w, threads=1)
    if call is None:
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    got = call().astype(np.float64)
    exact = x.astype(np.float64) @ w
    rounded = torch.from_numpy(x).bfloat16().double().numpy() @ \
        torch.from_numpy(w).bfloat16().double().numpy()
    scale = np.abs(exact).max()
    off_exact = np.abs(got - exact).max() / scale
    assert 1e-4 < off_exact < 2e-2  # bf16's 8-bit mantissa, not f32
    assert np.abs(got - rounded).max() / scale < off_exact / 4


def test_openvino_int8_product_is_the_product_of_the_quantized_inputs() -> None:
    """The Q/DQ graph: x quantized per tensor (scale 0.05, int8), the weight per output column
    (its max |w| / 127): OpenVINO's output is the product of the dequantized int8 inputs (an
    int32 accumulation, exact) up to the float rest's rounding, and visibly not the float
    product."""
    _openvino()
    x, w = _inputs()
    call = openvino_product("int8", x, w, threads=1)
    assert call is not None
    w_scale = np.abs(w).max(axis=0) / 127
    x_q = np.clip(np.round(x / 0.05), -128, 127) * 0.05
    w_q = np.clip(np.round(w / w_scale), -127, 127) * w_scale
    want = x_q.astype(np.float64) @ w_q
    got = call().astype(np.float64)
    assert call.kernel_s() > 0  # the int8 FullyConnected is in the counters
    scale = np.abs(want).max()
    off = np.abs(got - want).max() / scale
    assert off < 1e-2  # the float rest may run at bf16
    assert np.abs(x.astype(np.float64) @ w - want).max() / scale > 2 * off


def test_gemm_rates_name_each_kernel() -> None:
    _openvino()
    rates = gemm_rates("fp32", threads=1, shape=(256, 128, 256), seconds=0.05)
    assert set(rates) == {"torch", "openvino"}
    assert all(r > 0.1 for r in rates.values())


def test_a_kernel_that_fails_is_left_out_with_its_reason(monkeypatch) -> None:
    """OpenVINO failing to compile the probe (or reporting no product layer) leaves torch's
    rate as the yardstick and says why: it never stops the benchmark."""
    _openvino()
    from evad.runtime import gemm_rate

    def refuse(*args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:112:\nno CPU plugin")

    monkeypatch.setattr(gemm_rate, "openvino_product", refuse)
    failed: dict[str, str] = {}
    rates = gemm_rates("fp32", threads=1, shape=(128, 64, 128), seconds=0.02, failed=failed)
    assert set(rates) == {"torch"} and rates["torch"] > 0
    assert failed == {"openvino": "Exception from src/inference/src/cpp/core.cpp:112:"}
