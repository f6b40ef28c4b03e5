"""The ``evad`` ONNX local functions, run by plain onnxruntime, against the torch references."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from test_keyframe_topk_prune import _inputs, plain_importance
from test_roi_align_3d import EDGE_ROIS, _rois

from evad.export.ops import ROW_CHUNK, function_protos
from evad.models.keyframe_topk_prune import keyframe_topk_prune
from evad.models.roi_align_3d import roi_align_3d


def _value(name: str, dtype: int, rank: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [f"{name}_{i}" for i in range(rank)])


def _single_op_session(op_type: str, inputs: list[tuple[str, int, int]],
                       outputs: list[tuple[str, int, int]], **attrs) -> ort.InferenceSession:
    """A one-node model (name, dtype, rank per tensor) with the op's local function."""
    node = helper.make_node(op_type, [v[0] for v in inputs], [v[0] for v in outputs],
                            domain="evad", **attrs)
    graph = helper.make_graph([node], op_type, [_value(*v) for v in inputs],
                              [_value(*v) for v in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("evad", 1)],
                              functions=[f for f in function_protos() if f.name == op_type])
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


ROI_IO = ([("features", TensorProto.FLOAT, 5), ("rois", TensorProto.FLOAT, 2)],
          [("output", TensorProto.FLOAT, 5)])
ROI_ATTRS = dict(output_height=7, output_width=7, spatial_scale=1 / 16, sampling_ratio=2,
                 aligned=1)


@pytest.mark.parametrize(("b", "t", "h", "w"), [(1, 1, 6, 10), (2, 8, 6, 10), (3, 2, 18, 32)])
def test_roi_align_3d_function(b: int, t: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(b * 10 + t)
    feat = torch.randn(b, 5, t, h, w, generator=g)
    edge = EDGE_ROIS.clone()
    edge[:, 0] = edge[:, 0] % b
    rois = torch.cat((edge, _rois(20, b, (h * 16, w * 16), g)))
    sess = _single_op_session("RoIAlign3D", *ROI_IO, **ROI_ATTRS)
    (got,) = sess.run(None, {"features": feat.numpy(), "rois": rois.numpy()})
    ref = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, True).numpy()
    assert got.shape == ref.shape == (len(rois), 5, t, 7, 7)
    assert np.abs(got - ref).max() <= 1e-5


@pytest.mark.parametrize("t", [1, 3])
def test_roi_align_3d_function_invalid_batch_index(t: int) -> None:
    """The contract's batch-index rule in the ONNX function: a RoI whose index is not finite,
    not an integer value or outside [0, B) gives zeros (ONNX Runtime's RoiAlign never sees the
    bad index nor the invalid RoI's coordinates); the valid RoIs still match torch."""
    g = torch.Generator().manual_seed(30 + t)
    b, h, w = 2, 6, 10
    feat = torch.randn(b, 4, t, h, w, generator=g)
    nan, inf = float("nan"), float("inf")
    bad = torch.tensor([[v, 10.0, 20.0, 100.0, 80.0] for v in
                        (-1.0, 2.0, 0.5, 1.5, -0.5, nan, inf, -inf, 1e30, -1e30)])
    bad[5, 1:] = nan  # garbage coordinates on an invalid RoI
    bad[7, 3] = inf
    good = _rois(6, b, (h * 16, w * 16), g)
    rois = torch.cat((good[:2], bad, good[2:]))
    invalid = torch.zeros(len(rois), dtype=torch.bool)
    invalid[2:2 + len(bad)] = True
    sess = _single_op_session("RoIAlign3D", *ROI_IO, **ROI_ATTRS)
    (got,) = sess.run(None, {"features": feat.numpy(), "rois": rois.numpy()})
    ref = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, True).numpy()
    assert np.all(got[invalid.numpy()] == 0) and np.all(ref[invalid.numpy()] == 0)
    assert np.abs(got - ref).max() <= 1e-5


def test_roi_align_3d_function_other_attributes() -> None:
    g = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 3, 2, 9, 7, generator=g)
    rois = _rois(9, 2, (36, 28), g)
    attrs = dict(output_height=3, output_width=5, spatial_scale=0.25, sampling_ratio=3, aligned=1)
    sess = _single_op_session("RoIAlign3D", *ROI_IO, **attrs)
    (got,) = sess.run(None, {"features": feat.numpy(), "rois": rois.numpy()})
    assert np.abs(got - roi_align_3d(feat, rois, 3, 5, 0.25, 3, True).numpy()).max() <= 1e-5


PRUNE_IO = ([("q", TensorProto.FLOAT, 4), ("k", TensorProto.FLOAT, 4),
             ("x_nonkey", TensorProto.FLOAT, 3), ("idx", TensorProto.INT64, 2)],
            [("x_kept", TensorProto.FLOAT, 3), ("idx_kept", TensorProto.INT64, 2)])


@pytest.mark.parametrize(("b", "n", "s", "num", "den", "w_kf"), [
    (1, 60, 12, 7, 10, 1.0), (3, 50, 10, 3, 5, 4.0), (2, 40, 8, 39, 40, 2.0),  # K near N
    (2, 40, 8, 1, 1, 1.0),  # K = N - S: every token, re-ordered by importance
])
def test_keyframe_topk_prune_function(b, n, s, num, den, w_kf) -> None:
    q, k, x, idx = _inputs(b, 2, n, 4, s, 5, seed=n + b, spread=0.02, ladder=0.05)
    kk = math.ceil(num * n / den) - s
    gaps = plain_importance(q, k, s, w_kf).sort(dim=1, descending=True).values[:, : kk + 1]
    assert gaps.diff(dim=1).abs().min() > 1e-4  # importance gaps exceed 1e-4: no ties
    sess = _single_op_session("KeyframeTopKPrune", *PRUNE_IO, keep_num=num, keep_den=den,
                              keyframe_weight=w_kf)
    x_kept, idx_kept = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "x_nonkey": x.numpy(),
                                       "idx": idx.numpy()})
    ref_x, ref_idx = keyframe_topk_prune(q, k, x, idx, num, den, w_kf)
    assert idx_kept.shape == (b, kk)
    assert np.array_equal(idx_kept, ref_idx.numpy())  # identical indices, same order
    assert np.array_equal(x_kept, ref_x.numpy())  # bit-identical gathered tokens


@pytest.mark.parametrize(("n", "s"), [(2500, 1100), (ROW_CHUNK, 100), (ROW_CHUNK + 1, 5)])
def test_keyframe_topk_prune_function_in_row_chunks(n: int, s: int) -> None:
    """The body's Loop over ROW_CHUNK query rows (no N x N tensor) gives the reference's
    importance: several chunks with the keyframe rows crossing a chunk boundary, exactly one
    chunk, and one row past it."""
    q, k, x, idx = _inputs(1, 2, n, 4, s, 3, seed=n, spread=0.02, ladder=0.05)
    sess = _single_op_session("KeyframeTopKPrune", *PRUNE_IO, keep_num=7, keep_den=10,
                              keyframe_weight=4.0)
    x_kept, idx_kept = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "x_nonkey": x.numpy(),
                                       "idx": idx.numpy()})
    ref_x, ref_idx = keyframe_topk_prune(q, k, x, idx, 7, 10, 4.0)
    assert np.array_equal(idx_kept, ref_idx.numpy())
    assert np.array_equal(x_kept, ref_x.numpy())
    body = next(f for f in function_protos() if f.name == "KeyframeTopKPrune")
    assert [n.op_type for n in body.node].count("Loop") == 1


def test_keyframe_topk_prune_function_is_shape_generic() -> None:
    """One FunctionProto serves every N: K follows the shapes (ceil in integer arithmetic)."""
    sess = _single_op_session("KeyframeTopKPrune", *PRUNE_IO, keep_num=7, keep_den=10,
                              keyframe_weight=1.0)
    for n, s in ((30, 6), (97, 11), (130, 25)):
        q, k, x, idx = _inputs(1, 2, n, 4, s, 3, seed=n)
        _, idx_kept = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "x_nonkey": x.numpy(),
                                      "idx": idx.numpy()})
        assert idx_kept.shape == (1, math.ceil(0.7 * n) - s)


def test_ties_rank_the_lower_position_first_in_torch_and_onnx() -> None:
    """The contract's tie order (evad.op_contracts.KEYFRAME_TOPK_PRUNE.tie_order): on equal
    importance the lower position in x_nonkey comes first, in the torch reference and in the
    ONNX function (ONNX TopK breaks ties by the lower index)."""
    from evad.op_contracts import KEYFRAME_TOPK_PRUNE

    assert "lower position" in KEYFRAME_TOPK_PRUNE.tie_order
    b, heads, n, d, s = 2, 2, 30, 4, 6
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, heads, n, d, generator=g)
    k = torch.randn(b, heads, n, d, generator=g)
    # identical key rows give bit-identical attention columns, hence equal importance: tokens
    # 6..17 (positions 0..11 of x_nonkey) share one key, the rest another, weaker one
    k[:, :, s:18] = k[:, :, s:s + 1]
    k[:, :, 18:] = 0.1 * k[:, :, 18:19]
    x = torch.randn(b, n - s, 5, generator=g)
    idx = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    scores = plain_importance(q, k, s, 1.0)
    assert torch.equal(scores[:, :12], scores[:, :1].expand(-1, 12))  # real, exact ties
    ref_x, ref_idx = keyframe_topk_prune(q, k, x, idx, 7, 10, 1.0)
    kk = math.ceil(7 * n / 10) - s  # 15: the 12 tied tokens first, then 3 of the rest
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :kk]
    assert torch.equal(ref_idx, torch.gather(idx, 1, order))
    for row in range(b):  # ties in ascending position
        pos = [int((idx[row] == v).nonzero()) for v in ref_idx[row, :12]]
        assert pos == list(range(12))
    sess = _single_op_session("KeyframeTopKPrune", *PRUNE_IO, keep_num=7, keep_den=10,
                              keyframe_weight=1.0)
    x_kept, idx_kept = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "x_nonkey": x.numpy(),
                                       "idx": idx.numpy()})
    assert np.array_equal(idx_kept, ref_idx.numpy())
    assert np.array_equal(x_kept, ref_x.numpy())
