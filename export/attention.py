"""Attention in the ONNX graph: one fused node per attention for ONNX Runtime, and the standard
ops for every other consumer.

Why: the dynamo exporter writes ``scaled_dot_product_attention`` as MatMul + Softmax + MatMul,
which ONNX Runtime runs as written, holding every block's (B, heads, N, N) scores (+2008 MB and
1.71 s for one attention at N = 4608 on ONNX Runtime 1.32 CPU). ``com.microsoft``
``MultiHeadAttention`` is its flash kernel (+42 MB, 0.57 s). So the export emits that node; the
node itself and its decomposition into standard ops are in ``evad.fused_attention``.
"""

from __future__ import annotations

from onnx import defs
from onnxscript import FLOAT
from onnxscript import opset18 as op
from onnxscript.values import Opset

from evad.errors import ConfigError
from evad.fused_attention import (
    FUSED_ATTENTION,
    MS_DOMAIN,
    decompose_fused_attention,
    fused_attention_nodes,
)

__all__ = ["FUSED_ATTENTION", "MS_DOMAIN", "decompose_fused_attention", "fused_attention_nodes",
           "translations"]


def _register_schema() -> None:
    """Tell onnx (checker, onnxscript) the fused node's signature; ONNX Runtime has its own."""
    if defs.has(FUSED_ATTENTION, MS_DOMAIN):
        return
    param = defs.OpSchema.FormalParameter
    defs.register_schema(defs.OpSchema(
        FUSED_ATTENTION, MS_DOMAIN, 1,
        doc="ONNX Runtime's multi-head attention; here query, key, value (B, N, heads * d).",
        inputs=[param("query", "T"), param("key", "T"), param("value", "T")],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[
            defs.OpSchema.Attribute("num_heads", defs.OpSchema.AttrType.INT, "heads",
                                    required=True),
            defs.OpSchema.Attribute("scale", defs.OpSchema.AttrType.FLOAT, "logit scale",
                                    required=True)]))


_register_schema()
_msft = Opset(MS_DOMAIN, 1)


def _translate_sdpa(query: FLOAT, key: FLOAT, value: FLOAT, attn_mask=None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> FLOAT:
    """aten SDPA on (B, heads, N, d) -> one ``com.microsoft.MultiHeadAttention`` on (B, N, C).

    The transposes around it cancel against the model's own (ONNX Runtime's transpose
    optimizer removes inverse pairs), so the fused node costs no copies.
    """
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ConfigError("the fused attention export takes an unmasked, non-causal SDPA "
                          "without dropout or GQA; export with attention='standard'")
    heads, d = query.shape[1], query.shape[3]
    if not isinstance(heads, int) or not isinstance(d, int):
        raise ConfigError("the fused attention export needs static head count and head size")
    merged = [0, 0, -1]

    def merge(x):  # (B, heads, N, d) -> (B, N, heads * d)
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), merged)

    out = _msft.MultiHeadAttention(merge(query), merge(key), merge(value), num_heads=heads,
                                   scale=float(d ** -0.5 if scale is None else scale))
    return op.Transpose(op.Reshape(out, [0, 0, heads, d]), perm=[0, 2, 1, 3])


def translations() -> dict:
    """The exporter's translation-table entry (torch is imported here, not at module import:
    the OpenVINO runner and the engine builder read this module torch-free)."""
    import torch

    return {torch.ops.aten.scaled_dot_product_attention.default: _translate_sdpa}
