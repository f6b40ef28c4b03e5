"""The ONNX model as the TensorRT parser should see it: fused ``com.microsoft`` attention back
in standard ops (TensorRT's parser has no ``com.microsoft`` domain and fuses MatMul + Softmax +
MatMul itself), ``evad`` local functions stripped (so the ``evad`` nodes bind our plugins) and,
for strongly typed TensorRT, a mixed-precision copy.

Why strip: TensorRT's ONNX importer prefers a builtin op, then a model-local function's body,
then a plugin; our nodes have function bodies (for ONNX Runtime), so a copy without the ``evad``
functions is what makes the parser fall back to the registered plugins, looked up by op_type and
the ``plugin_version`` / ``plugin_namespace`` attributes added here.
"""

from __future__ import annotations

import warnings

import onnx

from evad.errors import ConfigError
from evad.fused_attention import decompose_fused_attention
from evad.lazy import MissingDependency
from evad.op_contracts import NAMESPACE, PLUGIN_VERSION

__all__ = ["FP32_OPS", "evad_nodes", "for_parser", "fp32_layer_types", "strip_evad_functions",
           "to_mixed_precision"]

#: ops that stay fp32 under fp16/bf16: ONNX op type -> the TensorRT layer type it becomes. The
#: ONNX converter (TensorRT 11) and the precision constraints (TensorRT 10) both read this table.
FP32_OPS: dict[str, str] = {
    "LayerNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
    "ReduceMean": "REDUCE",
    "ReduceSum": "REDUCE",
    "ReduceMax": "REDUCE",
    "TopK": "TOPK",
}


def fp32_layer_types() -> tuple[str, ...]:
    """The TensorRT ``LayerType`` names that :data:`FP32_OPS` become, each once."""
    return tuple(dict.fromkeys(FP32_OPS.values()))


def evad_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``evad`` custom nodes of the main graph."""
    return [n for n in model.graph.node if n.domain == NAMESPACE]


def strip_evad_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its ``evad`` model-local functions, each ``evad`` node tagged
    with ``plugin_namespace = "evad"`` and ``plugin_version = "1"`` (the parser's plugin lookup
    keys; the creators ignore them as fields)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if f.domain != NAMESPACE]
    del out.functions[:]
    out.functions.extend(keep)
    tags = {"plugin_namespace": NAMESPACE, "plugin_version": PLUGIN_VERSION}
    for node in out.graph.node:
        if node.domain == NAMESPACE:
            kept = [a for a in node.attribute if a.name not in tags]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in tags.items())
    return out


def for_parser(model: onnx.ModelProto) -> onnx.ModelProto:
    """The copy of an evad-export ONNX that TensorRT parses: attention decomposed
    (:func:`evad.fused_attention.decompose_fused_attention`), then
    :func:`strip_evad_functions`."""
    return strip_evad_functions(decompose_fused_attention(model))


def to_mixed_precision(model: onnx.ModelProto, precision: str = "fp16") -> onnx.ModelProto:
    """An fp16 copy of a (function-stripped) model for strongly typed TensorRT: float weights
    and activations in fp16, graph inputs/outputs and :data:`FP32_OPS` in fp32 (Casts around
    them), ``evad`` plugin nodes fed fp16 (both plugins accumulate in fp32).

    Raises:
        MissingDependency: onnxconverter-common is not installed.
        ConfigError: bf16 asked for (no converter here).
    """
    if precision != "fp16":
        raise ConfigError(f"{precision} on a strongly typed TensorRT (11.x) needs a {precision} "
                         "ONNX (e.g. ModelOpt AutoCast); use --fp16, or TensorRT 10.x")
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise MissingDependency("onnxconverter_common", "pip install onnxconverter-common",
                                "fp16 engines on TensorRT 11") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight below fp16's range
        out = float16.convert_float_to_float16(
            model, keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS))
    _restore_fp32_outputs(model, out)
    return out


def _restore_fp32_outputs(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """keep_io_types misses some outputs (seen: ``boxes``): Cast any fp32 output that came back
    fp16 to fp32 again, so the engine's IO types equal the ONNX export's."""
    want = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    for o in converted.graph.output:
        if want.get(o.name) == onnx.TensorProto.FLOAT and \
                o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            inner = o.name + "__fp16"
            for n in converted.graph.node:
                n.output[:] = [inner if x == o.name else x for x in n.output]
                n.input[:] = [inner if x == o.name else x for x in n.input]
            converted.graph.node.append(onnx.helper.make_node(
                "Cast", [inner], [o.name], to=onnx.TensorProto.FLOAT, name=o.name + "__to_fp32"))
            o.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
