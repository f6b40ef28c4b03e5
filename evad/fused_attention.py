"""The fused attention node of an evad export, as a graph fact: what it is and how it turns back
into standard ops. Torch-free and onnx-only, so the exporter (``evad.export.attention``), the
engine builder and the OpenVINO runner share it.

The node: ``com.microsoft`` ``MultiHeadAttention`` with query, key, value (B, N, heads * d),
``num_heads`` and ``scale``; output (B, N, heads * d) = per head softmax(scale * q k^T) v,
torch's SDPA without a mask. :func:`decompose_fused_attention` writes it as MatMul + Softmax +
MatMul for parsers that do not know the ``com.microsoft`` domain (TensorRT fuses that pattern
into its own attention kernels; OpenVINO into its SDPA).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from evad.errors import ConfigError

__all__ = ["FUSED_ATTENTION", "MS_DOMAIN", "decompose_fused_attention", "fused_attention_nodes"]

MS_DOMAIN = "com.microsoft"
#: the fused node's op type in :data:`MS_DOMAIN`
FUSED_ATTENTION = "MultiHeadAttention"


def fused_attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main graph's fused attention nodes."""
    return [n for n in model.graph.node
            if n.domain == MS_DOMAIN and n.op_type == FUSED_ATTENTION]


def decompose_fused_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every fused attention node replaced by standard ops.

    Per node: (B, N, heads * d) -> (B, heads, N, d) for q, k, v; MatMul(scale * q, k^T); Softmax
    over keys; MatMul with v; back to (B, N, heads * d). The ``com.microsoft`` opset import goes
    when nothing else uses it.

    Raises:
        ConfigError: a node has inputs beyond query, key and value (bias, masks, past).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.domain != MS_DOMAIN or node.op_type != FUSED_ATTENTION:
            nodes.append(node)
            continue
        if len([i for i in node.input if i]) != 3 or len(node.output) != 1:
            raise ConfigError(f"attention node {node.name!r} has inputs beyond query, key and "
                              "value; only the export's own fused attention decomposes")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        heads, scale = int(attrs["num_heads"]), float(attrs["scale"])
        nodes.extend(_attention_ops(node.name or node.output[0], list(node.input), node.output[0],
                                    heads, scale, out.graph))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(n.domain == MS_DOMAIN for n in out.graph.node) and not any(
            n.domain == MS_DOMAIN for f in out.functions for n in f.node):
        imports = [o for o in out.opset_import if o.domain != MS_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(imports)
    return out


def _attention_ops(name: str, qkv: list[str], output: str, heads: int, scale: float,
                   graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    def t(suffix: str) -> str:
        return f"{name}/{suffix}"

    split = t("split_shape")
    graph.initializer.append(onnx.numpy_helper.from_array(
        np.array([0, 0, heads, -1], np.int64), split))
    merged = t("merged_shape")
    graph.initializer.append(onnx.numpy_helper.from_array(
        np.array([0, 0, -1], np.int64), merged))
    scale_name = t("scale")
    graph.initializer.append(helper.make_tensor(scale_name, onnx.TensorProto.FLOAT, [], [scale]))
    ops = []
    heads_first = []
    for x, tag, perm in ((qkv[0], "q", [0, 2, 1, 3]), (qkv[1], "k", [0, 2, 3, 1]),
                         (qkv[2], "v", [0, 2, 1, 3])):
        ops.append(helper.make_node("Reshape", [x, split], [t(f"{tag}4")]))
        ops.append(helper.make_node("Transpose", [t(f"{tag}4")], [t(f"{tag}h")], perm=perm))
        heads_first.append(t(f"{tag}h"))
    q, kt, v = heads_first  # (B, h, N, d), (B, h, d, N), (B, h, N, d)
    # The scale goes on q before the product, not on the product: in fp16 (max 65504) q k^T
    # can overflow where (scale q) k^T does not (the most reported ViT failure of fp16 engines).
    ops += [
        helper.make_node("Mul", [q, scale_name], [t("q_scaled")]),
        helper.make_node("MatMul", [t("q_scaled"), kt], [t("logits")]),
        helper.make_node("Softmax", [t("logits")], [t("probs")], axis=-1),
        helper.make_node("MatMul", [t("probs"), v], [t("heads_out")]),
        helper.make_node("Transpose", [t("heads_out")], [t("out4")], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [t("out4"), merged], [output]),
    ]
    for i, n in enumerate(ops):
        n.name = t(f"{n.op_type}_{i}")
    return ops
