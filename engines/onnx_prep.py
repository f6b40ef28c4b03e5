"""The ONNX model as the TensorRT parser should see it: fused ``com.microsoft`` attention back
in standard ops (TensorRT's parser has no ``com.microsoft`` domain and fuses MatMul + Softmax +
MatMul itself) and ``evad`` local functions stripped (so the ``evad`` nodes bind our plugins);
and the checks a graph passes before a parser sees it (strict types, TopK's K). The
reduced-precision copy is :mod:`evad.engines.mixed_precision`.

Why strip: TensorRT's ONNX importer prefers a builtin op, then a model-local function's body,
then a plugin; our nodes have function bodies (for ONNX Runtime), so a copy without the ``evad``
functions is what makes the parser fall back to the registered plugins, looked up by op_type and
the ``plugin_version`` / ``plugin_namespace`` attributes added here.
"""

from __future__ import annotations

import onnx

from evad.errors import ConfigError
from evad.fused_attention import decompose_fused_attention
from evad.op_contracts import NAMESPACE, PLUGIN_VERSION
from evad.op_schemas import register_schemas

__all__ = ["TOPK_MAX_K", "check_topk", "check_types", "evad_nodes", "for_parser",
           "strip_evad_functions"]

#: the largest K of TensorRT's builtin TopK layer (ITopKLayer; NvInfer.h, 10.x and 11.x)
TOPK_MAX_K = 3840


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


def check_types(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """``model`` after strict type and shape inference (the ``evad`` schemas registered):
    every node's inputs agree in type with its schema and with each other, as a strongly typed
    TensorRT parser requires (it refuses an elementwise layer fed Half and Float).

    Args:
        what: how the message names the graph (``"the fp16 graph"``).

    Raises:
        ConfigError: the first inconsistency, in one line.
    """
    register_schemas()
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{what} is not type-consistent, so TensorRT would refuse it: "
                          f"{detail[:400]}") from e


def check_topk(inferred: onnx.ModelProto, input_size: tuple[int, int]) -> None:
    """Every TopK of an inferred graph keeps at most :data:`TOPK_MAX_K` (K read from its output
    shape, which the export's fixed H and W make a number).

    Raises:
        ConfigError: naming the node, its K and the input size, in one line.
    """
    for node in inferred.graph.node:
        if node.op_type != "TopK":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        shapes = {v.name: v.type.tensor_type.shape for v in (*inferred.graph.value_info,
                                                             *inferred.graph.output)}
        shape = shapes.get(node.output[0])
        dims = list(shape.dim) if shape is not None else []
        k = dims[axis].dim_value if dims and dims[axis].HasField("dim_value") else None
        if k is None:
            raise ConfigError(f"TopK {node.name!r}: its K is not a number at input "
                              f"{input_size[0]}x{input_size[1]}, so it cannot be checked "
                              f"against TensorRT's limit of {TOPK_MAX_K}")
        if k > TOPK_MAX_K:
            raise ConfigError(f"input {input_size[0]}x{input_size[1]}: TopK {node.name!r} keeps "
                              f"{k} > {TOPK_MAX_K}, TensorRT's limit; export at a smaller size")
