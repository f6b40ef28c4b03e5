"""The ONNX schemas of the ``evad`` ops, made from their contracts (``evad.op_contracts``), with
type and shape inference: what onnx's checker and shape inference know of a node in domain
``evad`` when it has no function body to look through (the exporter's nodes carry one; the copy
the TensorRT parser sees does not, so without inference here the plugin outputs would be
untyped there and strict type inference would check nothing downstream of them).

onnx-only and torch-free: the exporter (``evad.export.ops``) and the engine builder
(``evad.engines``) both register these.
"""

from __future__ import annotations

import onnx
from onnx import defs
from onnx.shape_inference import InferenceContext

from evad.op_contracts import CONTRACTS, KEYFRAME_TOPK_PRUNE, ROI_ALIGN_3D, OpContract

__all__ = ["FLOAT_TYPES", "SCHEMAS", "register_schemas"]

#: the float tensor types an ``evad`` op takes (TensorRT plugins: fp32, fp16, bf16)
FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_ATTR = {"int": defs.OpSchema.AttrType.INT, "float": defs.OpSchema.AttrType.FLOAT}
#: input / output tensors that hold indices (int64); every other one is a float tensor
_INDEX_TENSORS = {"idx", "idx_kept"}
_DOCS = {
    ROI_ALIGN_3D.name: "RoIAlign of every temporal slice of (B, C, T, H, W); see "
                       "plugins/roi_align_3d.",
    KEYFRAME_TOPK_PRUNE.name: "Keyframe-weighted top-k token pruning; see "
                              "plugins/keyframe_topk_prune.",
}


Dim = onnx.TensorShapeProto.Dimension


def _dims(ctx: InferenceContext, i: int) -> list[Dim] | None:
    """Input ``i``'s dims, or None when its shape is unknown."""
    t = ctx.get_input_type(i)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return list(t.tensor_type.shape.dim)


def _set_output(ctx: InferenceContext, i: int, elem_type: int,
                dims: list[Dim | int | None] | None) -> None:
    """Output ``i`` of ``elem_type``; dims as copied dims, ints, or None for an unknown one."""
    out = onnx.TypeProto()
    out.tensor_type.elem_type = elem_type
    if dims is not None:
        shape = out.tensor_type.shape
        shape.SetInParent()  # a known rank, even when every dim is unknown
        for d in dims:
            new = shape.dim.add()
            if isinstance(d, int):
                new.dim_value = d
            elif d is not None:
                new.CopyFrom(d)
    ctx.set_output_type(i, out)


def _attr(ctx: InferenceContext, name: str) -> int:
    return int(onnx.helper.get_attribute_value(ctx.get_attribute(name)))


def _float_type(ctx: InferenceContext) -> int:
    t = ctx.get_input_type(0)
    return t.tensor_type.elem_type if t is not None else onnx.TensorProto.UNDEFINED


def _infer_roi_align_3d(ctx: InferenceContext) -> None:
    """output (R, C, T, output_height, output_width) from features (B, C, T, H, W), rois (R, 5)."""
    f, r = _dims(ctx, 0), _dims(ctx, 1)
    dims = None
    if f is not None and r is not None:
        dims = [r[0], f[1], f[2], _attr(ctx, "output_height"), _attr(ctx, "output_width")]
    _set_output(ctx, 0, _float_type(ctx), dims)


def _infer_keyframe_topk_prune(ctx: InferenceContext) -> None:
    """x_kept (B, K, C), idx_kept (B, K) int64, K = ceil(N keep_num / keep_den) - (N - M), from
    q (B, heads, N, d) and x_nonkey (B, M, C); K unknown unless N and M are numbers."""
    q, x = _dims(ctx, 0), _dims(ctx, 2)
    x_dims = idx_dims = None
    if q is not None and x is not None:
        n, m = q[2], x[1]
        k: int | None = None
        if n.HasField("dim_value") and m.HasField("dim_value"):
            num, den = _attr(ctx, "keep_num"), _attr(ctx, "keep_den")
            k = (num * n.dim_value + den - 1) // den - (n.dim_value - m.dim_value)
        x_dims, idx_dims = [x[0], k, x[2]], [x[0], k]
    _set_output(ctx, 0, _float_type(ctx), x_dims)
    _set_output(ctx, 1, onnx.TensorProto.INT64, idx_dims)


_INFER = {ROI_ALIGN_3D.name: _infer_roi_align_3d,
          KEYFRAME_TOPK_PRUNE.name: _infer_keyframe_topk_prune}


def _schema(c: OpContract) -> defs.OpSchema:
    """The ONNX schema of one contract: tensors in order, every field a required attribute."""
    param = defs.OpSchema.FormalParameter

    def tensors(names: tuple[str, ...]) -> list:
        return [param(n, "I" if n in _INDEX_TENSORS else "T") for n in names]

    schema = defs.OpSchema(
        c.name, c.domain, c.version, doc=_DOCS[c.name], inputs=tensors(c.inputs),
        outputs=tensors(c.outputs),
        type_constraints=[("T", FLOAT_TYPES, "float tensors"),
                          ("I", ["tensor(int64)"], "indices")],
        attributes=[defs.OpSchema.Attribute(f.name, _ATTR[f.kind], f.doc, required=True)
                    for f in c.fields],
    )
    schema.set_type_and_shape_inference_function(_INFER[c.name])
    return schema


SCHEMAS = [_schema(c) for c in CONTRACTS.values()]


def register_schemas() -> None:
    """Register the ``evad`` op schemas with onnx (idempotent)."""
    for s in SCHEMAS:
        if not defs.has(s.name, s.domain):
            defs.register_schema(s)
