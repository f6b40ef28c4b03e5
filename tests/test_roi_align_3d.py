"""evad::roi_align_3d against a brute-force transcription of torchvision's compiled kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evad.models.localization import box_levels, multilevel_roi_align
from evad.models.roi_align_3d import roi_align_3d


def _bilinear(f: np.ndarray, y: float, x: float) -> float:
    h, w = f.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * f[y0, x0] + hy * lx * f[y0, x1] + ly * hx * f[y1, x0] + ly * lx * f[y1, x1]


def brute_roi_align(feat, rois, oh, ow, scale, sr, aligned):
    """Per-sample loops in float64, statement by statement as torchvision's CPU kernel."""
    feat, rois = feat.double().numpy(), rois.double().numpy()
    b, c, t, h, w = feat.shape
    out = np.zeros((len(rois), c, t, oh, ow))
    off = 0.5 if aligned else 0.0
    for r, (bi, x1, y1, x2, y2) in enumerate(rois):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        for ci in range(c):
            for ti in range(t):
                f = feat[int(bi), ci, ti]
                for i in range(oh):
                    for j in range(ow):
                        acc = 0.0
                        for iy in range(sr):
                            y = sy + i * bh + (iy + 0.5) * bh / sr
                            for ix in range(sr):
                                x = sx + j * bw + (ix + 0.5) * bw / sr
                                acc += _bilinear(f, y, x)
                        out[r, ci, ti, i, j] = acc / (sr * sr)
    return torch.from_numpy(out)


def _rois(n: int, batch: int, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    h, w = size
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 1.4 - 0.2 * torch.tensor([w, h])
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.6
    bi = torch.randint(0, batch, (n, 1), generator=gen).float()
    return torch.cat((bi, xy, xy + wh), dim=1)


EDGE_ROIS = torch.tensor([
    [0, -40.0, -30.0, 20.0, 10.0],     # partly outside, top-left
    [1, 100.0, 50.0, 190.0, 120.0],    # partly outside, bottom-right
    [0, 300.0, 300.0, 400.0, 380.0],   # wholly outside: all zeros
    [1, -90.0, -90.0, -40.0, -40.0],   # wholly outside, negative side
    [0, 30.0, 20.0, 30.0, 20.0],       # degenerate: a point
    [1, 10.0, 70.0, 150.0, 70.0],      # degenerate: zero height
    [0, 0.0, 0.0, 159.0, 95.0],        # the whole map
    [1, 5.0, 5.0, 6.0, 6.0],           # smaller than one feature pixel
])


@pytest.mark.parametrize("aligned", [True, False])
def test_matches_brute_force(aligned: bool) -> None:
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 2, 6, 10, generator=g)
    rois = torch.cat((EDGE_ROIS, _rois(12, 2, (96, 160), g)))
    got = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, aligned)
    ref = brute_roi_align(feat, rois, 7, 7, 1 / 16, 2, aligned)
    assert got.shape == (len(rois), 3, 2, 7, 7)
    assert (got.double() - ref).abs().max().item() <= 1e-5
    assert got[2].abs().max() == 0 and got[3].abs().max() == 0  # wholly outside
    assert got[6].abs().max() > 0


def test_other_sizes_and_ratio() -> None:
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(1, 2, 3, 9, 7, generator=g)
    rois = _rois(6, 1, (36, 28), g)
    got = roi_align_3d(feat, rois, 3, 5, 0.25, 3, True)
    ref = brute_roi_align(feat, rois, 3, 5, 0.25, 3, True)
    assert (got.double() - ref).abs().max().item() <= 1e-5


def test_float64_and_no_rois() -> None:
    g = torch.Generator().manual_seed(4)
    feat = torch.randn(1, 2, 1, 5, 5, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, 3.0, 4.0, 60.0, 70.0]], dtype=torch.float64)
    got = roi_align_3d(feat, rois, 2, 2, 1 / 16, 2, True)
    assert got.dtype == torch.float64
    assert (got - brute_roi_align(feat, rois, 2, 2, 1 / 16, 2, True)).abs().max() < 1e-12
    assert roi_align_3d(feat, rois[:0], 7, 7, 1 / 16, 2, True).shape == (0, 2, 1, 7, 7)


def test_slices_are_independent() -> None:
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 4, 5, 8, 8, generator=g)
    rois = _rois(7, 2, (128, 128), g)
    full = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, True)
    for t in range(5):
        one = roi_align_3d(feat[:, :, t:t + 1].contiguous(), rois, 7, 7, 1 / 16, 2, True)
        torch.testing.assert_close(full[:, :, t:t + 1], one, rtol=0, atol=1e-6)


def test_gradient() -> None:
    g = torch.Generator().manual_seed(6)
    feat = torch.randn(2, 2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.cat((EDGE_ROIS[:2], _rois(3, 2, (80, 96), g))).double()
    assert torch.autograd.gradcheck(lambda f: roi_align_3d(f, rois, 3, 3, 1 / 16, 2, True),
                                    (feat,))


#: RoIs with an invalid batch index for B = 2 (the contract's rule: finite, an integer value,
#: in [0, B)); their boxes sit inside the map, so only the index makes them zero
BAD_INDEX = [-1.0, 2.0, 0.5, 1.5, -0.5, 1.0000001, float("nan"), float("inf"), float("-inf"),
             1e30]


def _with_bad_indices(g: torch.Generator, dtype=torch.float32):
    good = torch.cat((EDGE_ROIS[:2], _rois(4, 2, (96, 160), g))).to(dtype)
    bad = torch.tensor([[v, 10.0, 20.0, 100.0, 80.0] for v in BAD_INDEX], dtype=dtype)
    bad[6, 1:] = float("nan")  # garbage coordinates on an invalid RoI: still zeros
    rois = torch.cat((good[:3], bad, good[3:]))
    invalid = torch.zeros(len(rois), dtype=torch.bool)
    invalid[3:3 + len(bad)] = True
    return rois, invalid


@pytest.mark.parametrize("aligned", [True, False])
def test_invalid_batch_index_gives_zeros(aligned: bool) -> None:
    """A RoI whose batch index is not finite, not an integer value or outside [0, B) gives
    zeros for all its bins; the valid RoIs are exactly what they are without it."""
    g = torch.Generator().manual_seed(8)
    feat = torch.randn(2, 3, 2, 6, 10, generator=g)
    rois, invalid = _with_bad_indices(g)
    got = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, aligned)
    assert got.shape == (len(rois), 3, 2, 7, 7)
    assert torch.all(got[invalid] == 0)
    assert torch.equal(got[~invalid], roi_align_3d(feat, rois[~invalid], 7, 7, 1 / 16, 2, aligned))
    ref = brute_roi_align(feat, rois[~invalid], 7, 7, 1 / 16, 2, aligned)
    assert (got[~invalid].double() - ref).abs().max().item() <= 1e-5


def test_valid_batch_index_rule() -> None:
    from evad.models.roi_align_3d import valid_batch_index

    idx = torch.tensor([0.0, -0.0, 1.0, 2.0, -1.0, 0.5, float("nan"), float("inf"), 3.0])
    assert valid_batch_index(idx, 3).tolist() == [True, True, True, True, False, False, False,
                                                  False, False]


def test_gradient_with_invalid_batch_indices() -> None:
    """Autograd still works with invalid RoIs present; they contribute no gradient."""
    g = torch.Generator().manual_seed(9)
    feat = torch.randn(2, 2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois, invalid = _with_bad_indices(g, torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align_3d(f, rois, 3, 3, 1 / 16, 2, True),
                                    (feat,))
    grad = torch.randn(len(rois), 2, 2, 3, 3, generator=g, dtype=torch.float64)
    (d_all,) = torch.autograd.grad(roi_align_3d(feat, rois, 3, 3, 1 / 16, 2, True), feat, grad)
    (d_valid,) = torch.autograd.grad(
        roi_align_3d(feat, rois[~invalid], 3, 3, 1 / 16, 2, True), feat, grad[~invalid])
    assert torch.equal(d_all, d_valid)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="features must be"):
        roi_align_3d(torch.zeros(1, 2, 3, 4), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="rois must be"):
        roi_align_3d(torch.zeros(1, 2, 1, 3, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_3d(torch.zeros(1, 2, 1, 3, 4), torch.zeros(1, 5), 7, 7, 1.0, 0, True)


def test_fpn_levels_follow_detectron2() -> None:
    sides = torch.tensor([10.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack((torch.zeros(8), torch.zeros(8), sides, sides), 1)
    want = [max(2, min(5, math.floor(4 + math.log2(s / 224 + 1e-8)))) - 2 for s in sides.tolist()]
    assert box_levels(boxes).tolist() == want == [0, 0, 1, 1, 2, 2, 3, 3]


def test_multilevel_uses_each_box_level() -> None:
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(2, 3, 64 // s, 96 // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = torch.tensor([[[2.0, 3.0, 40.0, 50.0], [0.0, 0.0, 95.0, 63.0]],
                          [[10.0, 5.0, 20.0, 60.0], [-50.0, -50.0, 300.0, 300.0]]])
    got = multilevel_roi_align(feats, boxes, 7, 2)
    levels = box_levels(boxes.reshape(-1, 4)).tolist()
    assert levels == [0, 0, 0, 2]
    for r, lvl in enumerate(levels):
        roi = torch.cat((torch.tensor([r // 2], dtype=torch.float32), boxes.reshape(-1, 4)[r]))
        ref = brute_roi_align(feats[lvl].unsqueeze(2), roi[None], 7, 7, 1 / (4 * 2**lvl), 2, True)
        assert (got[r].double() - ref[0, :, 0]).abs().max() <= 1e-5
