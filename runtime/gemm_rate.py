"""This machine's GEMM rate at a precision: the yardstick ``evad-bench`` measures each path's
achieved rate against (issue #27's "fraction of the GEMM rate").

The rate is the best of the kernels the CPU paths themselves use, each timed on ViT-B's MLP
product (4608 x 768 @ 768 x 3072): torch's (oneDNN / MKL: ``torch.mm`` at fp32 and bf16,
oneDNN's quantized linear at int8) and OpenVINO's (where it is installed: one ``MatMul`` with a
constant weight, which it runs as its ``FullyConnected``; at int8 the Q/DQ form of the
calibrated export). One library's kernel alone is no yardstick: on a 2-core AMD EPYC
(AVX512-BF16, no AMX) torch's bf16 ``mm`` once measured 129 GMAC/s (214 in the next run) while
OpenVINO's bf16 path ran the whole model at 150 (2026-12-07), a "fraction" of 117 %; the best
of two kernels is the machine's rate at that precision, and less at the mercy of one kernel's
slow moment.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.command import one_line
from evad.export.openvino_runner import cpu_has_bf16, precision_hint
from evad.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
    import openvino as ov
    import torch
else:  # the benchmark's children import this module without torch or OpenVINO
    torch = lazy_import("torch", "pip install torch")
    onnx = lazy_import("onnx", "pip install onnx")
    ov = lazy_import("openvino", "pip install 'evad-deploy[openvino]' (or: pip install openvino)")

__all__ = ["GEMM_SHAPE", "OpenVinoProduct", "gemm_rates", "int8_product", "openvino_product",
           "time_best"]

#: (m, k, n) of the yardstick's product: ViT-B's MLP up-projection over 4608 tokens
GEMM_SHAPE = (4608, 768, 3072)

#: the int8 product's quantization: activations per tensor, weights per output column, both
#: symmetric int8 with zero points 0, as the calibrated export (``evad-export --int8``) writes
_X_SCALE = 0.05


def time_best(call: Callable[[], Any], seconds: float,
              measured: Callable[[], float] | None = None) -> float:
    """The fastest of repeated calls within about ``seconds`` of wall time, after one warm-up:
    each call's wall time (seconds), or what ``measured()`` says of the call just made."""
    call()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        best, spent = min(best, measured() if measured else dt), spent + dt
    return best


def int8_product(m: int, k: int, n: int, g: torch.Generator) -> Callable[[], Any]:
    """A (m, k) u8 x (k, n) s8 product, as a call: torch's oneDNN quantized linear, the kernel
    that runs AMX-INT8 or AVX512-VNNI where the CPU has them (what an INT8 path's quantized
    products can reach); ``torch._int_mm`` only where torch has no oneDNN engine. The weight is
    packed for oneDNN and keeps that engine: torch's quantized engine is left as it was.

    Why not ``torch._int_mm`` everywhere: on the 2-core Xeon with AMX-INT8 it ran at about
    400 GMAC/s against about 2100-2460 for the oneDNN linear and 1280-1395 for bf16 ``torch.mm``
    (2026-12-06), so fractions of it flattered the int8 paths five-fold.
    """
    if "onednn" not in torch.backends.quantized.supported_engines:
        a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        b = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
        return functools.partial(torch._int_mm, a, b)
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "onednn"
        with warnings.catch_warnings():  # torch marks its quantized tensors deprecated
            warnings.simplefilter("ignore")
            x = torch.quantize_per_tensor(torch.randn(m, k, generator=g), 0.05, 128,
                                          torch.quint8)
            w = torch.quantize_per_tensor(torch.randn(n, k, generator=g), 0.05, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(w, None)
    finally:
        if torch.backends.quantized.engine != engine:
            torch.backends.quantized.engine = engine
    return functools.partial(torch.ops.quantized.linear, x, packed, 0.1, 0)


def _torch_product(precision: str, m: int, k: int, n: int) -> Callable[[], Any]:
    g = torch.Generator().manual_seed(0)
    if precision == "int8":
        return int8_product(m, k, n, g)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    return functools.partial(torch.mm, a, b)


def _product_graph(precision: str, weight: np.ndarray) -> bytes:
    """x (m, k) float -> x @ weight as ONNX: a float ``MatMul``, or at int8 the calibrated
    export's Q/DQ form (x quantized per tensor, the weight int8 per output column)."""
    h, tp = onnx.helper, onnx.TensorProto
    k, n = weight.shape
    if precision == "int8":
        w_scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
        w_q = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
        inits = [onnx.numpy_helper.from_array(w_q, "w_q"),
                 onnx.numpy_helper.from_array(w_scale, "w_scale"),
                 onnx.numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"),
                 onnx.numpy_helper.from_array(np.float32(_X_SCALE), "x_scale"),
                 onnx.numpy_helper.from_array(np.int8(0), "x_zero")]
        nodes = [h.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
                 h.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
                 h.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1),
                 h.make_node("MatMul", ["x_dq", "w"], ["y"])]
    else:
        inits = [onnx.numpy_helper.from_array(weight, "w")]
        nodes = [h.make_node("MatMul", ["x", "w"], ["y"])]
    graph = h.make_graph(nodes, "gemm", [h.make_tensor_value_info("x", tp.FLOAT, ["m", k])],
                         [h.make_tensor_value_info("y", tp.FLOAT, ["m", n])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 19)]).SerializeToString()


class OpenVinoProduct:
    """x @ weight compiled by OpenVINO for the CPU (:func:`openvino_product`); a call runs it
    and returns the (m, n) float32 product; :meth:`kernel_s` is the last call's time in the
    product's own layer, read from OpenVINO's performance counters."""

    def __init__(self, request: ov.InferRequest, x: np.ndarray) -> None:
        self.request, self.x = request, x

    def __call__(self) -> np.ndarray:
        return self.request.infer({"x": self.x})[0]

    def kernel_s(self) -> float:
        """Seconds in the ``FullyConnected*`` layer of the last call: the product alone. At
        int8 the activations' quantization is a layer of its own here (a ``FakeQuantize``),
        while in a model OpenVINO fuses it into the layer before; so it is not counted."""
        return sum(p.real_time.total_seconds() for p in self.request.profiling_info
                   if p.node_type.startswith("FullyConnected"))


def openvino_product(precision: str, x: np.ndarray, weight: np.ndarray,
                     threads: int) -> OpenVinoProduct | None:
    """x (m, k) float32 @ weight (k, n) float32 in OpenVINO on the CPU at ``precision``
    ("fp32", "bf16", "int8": the Q/DQ form of :func:`_product_graph`); None where OpenVINO
    cannot run it natively (bf16 on a CPU without AVX512-BF16 or AMX, which OpenVINO would run
    as fp32)."""
    core = ov.Core()
    if precision == "bf16" and not cpu_has_bf16(core):
        return None
    model = core.read_model(_product_graph(precision, weight), ov.Tensor(np.empty(0, np.uint8)))
    model.reshape({"x": list(x.shape)})  # static, as the runner compiles its models
    # an int8 product's float rest (its dequantized output) at the hint the int8 path uses
    hint = precision_hint(precision, precision == "int8", core)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return OpenVinoProduct(core.compile_model(model, "CPU", config).create_infer_request(), x)


def gemm_rates(precision: str, threads: int, shape: tuple[int, int, int] = GEMM_SHAPE,
               seconds: float = 1.5, failed: dict[str, str] | None = None) -> dict[str, float]:
    """GMAC/s of each kernel at ``precision`` ("fp32", "bf16", "int8") on ``shape`` (m, k, n),
    ``threads`` threads (0: the library's default): ``{"torch": ..., "openvino": ...}``, a
    library left out where it is not installed, where it fails (a one-line reason in
    ``failed``, when given), or, for OpenVINO at bf16, where the CPU has no native bf16. The
    yardstick is the largest."""
    m, k, n = shape
    rates: dict[str, float] = {}
    try:
        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            rates["torch"] = m * k * n / time_best(_torch_product(precision, m, k, n),
                                                   seconds) / 1e9
        finally:
            torch.set_num_threads(old)
    except ImportError:
        pass
    except Exception as e:  # a yardstick that cannot be measured must not stop the benchmark
        if failed is not None:
            failed["torch"] = one_line(e)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((m, k), dtype=np.float32)
        product = openvino_product(precision, x,
                                   rng.standard_normal((k, n), dtype=np.float32), threads)
        if product is not None:
            best = time_best(product, seconds, product.kernel_s)
            if best <= 0:
                raise RuntimeError("no FullyConnected layer in OpenVINO's performance counters")
            rates["openvino"] = m * k * n / best / 1e9
    except ImportError:
        pass
    except Exception as e:  # a yardstick that cannot be measured must not stop the benchmark
        if failed is not None:
            failed["openvino"] = one_line(e)
    return rates
