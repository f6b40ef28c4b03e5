"""The ``evad`` ONNX domain (version 1): op schemas, exporter translations, local functions.

Each custom op is emitted as a node in domain ``evad`` (so TensorRT binds our plugins by name)
AND defined by a model-local FunctionProto of the same name whose body uses standard ONNX ops
only (so any ONNX Runtime runs the file with no custom library). The schemas (inputs, outputs,
attributes, type and shape inference) live in the core, ``evad.op_schemas``, made from the op
contracts in ``evad.op_contracts``, described in
``plugins/roi_align_3d/README.md`` and ``plugins/keyframe_topk_prune/README.md``.

The bodies are written in onnxscript and compiled to FunctionProtos; the translations are the
``custom_translation_table`` entries of the dynamo exporter. The op schemas are registered with
``onnx.defs`` so that onnxscript emits the nodes with their attributes and the checker knows them.
"""

from __future__ import annotations

import onnx
from onnxscript import FLOAT, INT64, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

from evad.errors import ConfigError
from evad.models.keyframe_topk_prune import keyframe_topk_prune
from evad.models.roi_align_3d import roi_align_3d
from evad.op_contracts import (
    DOMAIN_VERSION,
    IMPORTANCE_ROW_CHUNK,
    KEYFRAME_TOPK_PRUNE,
    NAMESPACE,
    ROI_ALIGN_3D,
)
from evad.op_schemas import SCHEMAS, register_schemas

__all__ = ["DOMAIN", "FUNCTIONS", "SCHEMAS", "TRANSLATIONS", "function_protos", "register_schemas"]

DOMAIN = NAMESPACE
evad = Opset(DOMAIN, DOMAIN_VERSION)
_INT64 = 7  # onnx.TensorProto.INT64
_FLOAT = 1  # onnx.TensorProto.FLOAT

register_schemas()


# --- local function bodies (standard ops only) -------------------------------------------------

@script(evad, default_opset=op)
def RoIAlign3D(features, rois, output_height: int, output_width: int, spatial_scale: float,
               sampling_ratio: int, aligned: int):
    """Fold T into the channels ((B, C, T, H, W) is already (B, C * T, H, W) in memory), one
    standard RoiAlign with half_pixel coordinates (= aligned; the exporter refuses aligned = 0)
    over the RoIs as they are, unfold (R, C * T, oh, ow) to (R, C, T, oh, ow).

    Why T in the channels and not in the batch: a RoI's box is the same in every slice, so each
    sample's bilinear weights are found once for all C * T channels, and neither the features nor
    the output is transposed (the vit_b_ktp action pooler's shapes, 100 RoIs, OpenVINO at f32
    on a 2-core Xeon: 184 ms with T in the batch and its transposes, 117 ms with T in the
    channels; outputs bit-identical).

    The contract's batch-index rule (ROI_ALIGN_3D.edge_cases): a RoI whose index is not finite,
    not an integer value (Floor(i) != i) or outside [0, B) gives zeros. Such a RoI is pooled from
    batch element 0 with an all-zero box (so RoiAlign never sees a bad index or garbage
    coordinates) and its output is then replaced by zeros (Where, so even NaN goes)."""
    fshape = op.Shape(features)
    b = op.Slice(fshape, [0], [1])
    c = op.Slice(fshape, [1], [2])
    t = op.Slice(fshape, [2], [3])
    hw = op.Slice(fshape, [3], [5])
    folded = op.Reshape(features, op.Concat(b, op.Mul(c, t), hw, axis=0))
    r = op.Slice(op.Shape(rois), [0], [1])
    index = op.Slice(rois, [0], [1], [1])  # (R, 1), the RoIs' float type
    zero = op.CastLike(op.Constant(value_float=0.0), index)
    valid = op.And(op.And(op.GreaterOrEqual(index, zero), op.Less(index, op.CastLike(b, index))),
                   op.Equal(op.Floor(index), index))  # (R, 1); NaN fails every comparison
    batch = op.Reshape(op.Cast(op.Where(valid, index, zero), to=_INT64), [-1])  # in [0, B)
    boxes = op.Where(valid, op.Slice(rois, [1], [5], [1]), zero)  # (R, 4)
    pooled = op.RoiAlign(folded, boxes, batch, mode="avg", output_height=output_height,
                         output_width=output_width, sampling_ratio=sampling_ratio,
                         spatial_scale=spatial_scale,
                         coordinate_transformation_mode="half_pixel")
    bins = op.Slice(op.Shape(pooled), [2], [4])
    out = op.Reshape(pooled, op.Concat(r, c, t, bins, axis=0))
    return op.Where(op.Reshape(valid, [-1, 1, 1, 1, 1]), out, op.CastLike(zero, out))


#: query rows per softmax chunk in the KeyframeTopKPrune body (the reference's)
ROW_CHUNK = IMPORTANCE_ROW_CHUNK


@script(evad, default_opset=op)
def KeyframeTopKPrune(q, k, x_nonkey, idx, keep_num: int, keep_den: int, keyframe_weight: float):
    """Importance = mean over heads of the keyframe-weighted column sums of softmax(q k^T) / N,
    in fp32, accumulated over ROW_CHUNK query rows at a time (a Loop, so no N x N tensor is
    ever held); K = (keep_num * N + keep_den - 1) // keep_den - S; TopK; gather."""
    qf = op.Cast(q, to=_FLOAT)
    kt = op.Transpose(op.Cast(k, to=_FLOAT), perm=[0, 1, 3, 2])
    qshape = op.Shape(q)
    n = op.Slice(qshape, [2], [3])  # (1,) int64
    xshape = op.Shape(x_nonkey)
    s = op.Sub(n, op.Slice(xshape, [1], [2]))
    chunk = op.Constant(value_ints=[ROW_CHUNK])
    steps = op.Squeeze(op.Div(op.Sub(op.Add(n, chunk), op.Constant(value_ints=[1])), chunk), [0])
    w_kf = op.Constant(value_float=keyframe_weight)
    one = op.Constant(value_float=1.0)
    total = op.Expand(op.Constant(value_float=0.0),
                      op.Concat(op.Slice(qshape, [0], [2]), op.Sub(n, s), axis=0))
    for i in range(steps):
        r0 = op.Mul(op.Reshape(i, [1]), chunk)
        r1 = op.Min(op.Add(r0, chunk), n)
        probs = op.Softmax(op.MatMul(op.Slice(qf, r0, r1, [2]), kt), axis=-1)
        cols = op.Slice(probs, s, n, [3])  # (B, H, rows, N - S): non-keyframe keys
        rows = op.Range(op.Squeeze(r0, [0]), op.Squeeze(r1, [0]), op.Constant(value_int=1))
        weights = op.Reshape(op.Where(op.Less(rows, s), w_kf, one), [1, 1, -1, 1])
        total = op.Add(total, op.ReduceSum(op.Mul(cols, weights), [2], keepdims=0))
    score = op.ReduceMean(op.Div(total, op.Cast(n, to=_FLOAT)), [1], keepdims=0)
    num = op.Constant(value_int=keep_num)
    den = op.Constant(value_int=keep_den)
    kk = op.Sub(op.Div(op.Add(op.Mul(num, n), op.Sub(den, op.Constant(value_int=1))), den), s)
    _, pos = op.TopK(score, kk, axis=1, largest=1, sorted=1)
    idx_kept = op.GatherElements(idx, pos, axis=1)
    pos3 = op.Expand(op.Unsqueeze(pos, [2]),
                     op.Concat(op.Shape(pos), op.Slice(xshape, [2], [3]), axis=0))
    x_kept = op.GatherElements(x_nonkey, pos3, axis=1)
    return x_kept, idx_kept


FUNCTIONS = (RoIAlign3D, KeyframeTopKPrune)


def function_protos() -> list[onnx.FunctionProto]:
    """The FunctionProtos to attach to an exported model (domain ``evad``)."""
    return [f.to_function_proto() for f in FUNCTIONS]


# --- dynamo exporter translations ---------------------------------------------------------------
# Defaults are the contract's, as the torch ops': the exporter drops arguments equal to them.
_R = ROI_ALIGN_3D.defaults


def _translate_roi_align_3d(features: FLOAT, rois: FLOAT,
                            output_height: int = int(_R["output_height"]),
                            output_width: int = int(_R["output_width"]),
                            spatial_scale: float = float(_R["spatial_scale"]),
                            sampling_ratio: int = int(_R["sampling_ratio"]),
                            aligned: bool = bool(_R["aligned"])) -> FLOAT:
    if not aligned:
        raise ConfigError("evad::RoIAlign3D exports aligned=True only (EVAD's ROIAlignV2); the "
                          "local function implements the half-pixel mode")
    ROI_ALIGN_3D.validate({"output_height": output_height, "output_width": output_width,
                           "spatial_scale": float(spatial_scale),
                           "sampling_ratio": sampling_ratio, "aligned": 1})
    return evad.RoIAlign3D(features, rois, output_height=output_height,
                           output_width=output_width, spatial_scale=spatial_scale,
                           sampling_ratio=sampling_ratio, aligned=1)


def _translate_keyframe_topk_prune(q: FLOAT, k: FLOAT, x_nonkey: FLOAT, idx: INT64,
                                   keep_num: int, keep_den: int, keyframe_weight: float):
    KEYFRAME_TOPK_PRUNE.validate({"keep_num": keep_num, "keep_den": keep_den,
                                  "keyframe_weight": float(keyframe_weight)})
    return evad.KeyframeTopKPrune(q, k, x_nonkey, idx, keep_num=keep_num, keep_den=keep_den,
                                  keyframe_weight=keyframe_weight, _num_outputs=2)


TRANSLATIONS = {
    roi_align_3d._opoverload: _translate_roi_align_3d,
    keyframe_topk_prune._opoverload: _translate_keyframe_topk_prune,
}
