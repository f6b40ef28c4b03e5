"""The kernels' per-element maths (plugins/common/evadMath.h), built for the CPU with the host
compiler (plugins/common/evadKernelsCpu.cpp) and checked against the torch reference through
ctypes: how kernel maths is proven on machines without a GPU. The CUDA kernels and this library
loop over the same functions, so the tie order checked here (the contract's stable descending
order, evad/op_contracts.py) is the one the CUDA path gets from CUB's stable radix sort."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from evad.models.keyframe_topk_prune import importance, keyframe_topk_prune, pruned_count
from evad.models.roi_align_3d import roi_align_3d
from evad.plugins import build as plugin_build

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no host C++ compiler (g++) to build the CPU check library")

_f = ctypes.POINTER(ctypes.c_float)
_i64 = ctypes.POINTER(ctypes.c_int64)
_I, _i32, _fl = ctypes.c_int64, ctypes.c_int32, ctypes.c_float


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.CDLL:
    path = plugin_build.build_cpu_check_library(tmp_path_factory.mktemp("cpu_kernels"))
    lib = ctypes.CDLL(str(path))
    lib.evad_cpu_roi_align_3d.argtypes = [_f, _f, _f, _I, _I, _I, _I, _I, _I, _i32, _i32, _fl,
                                          _i32, _i32]
    lib.evad_cpu_importance.argtypes = [_f, _f, _f, _I, _I, _I, _i32, _I, _fl, _i32]
    lib.evad_cpu_importance.restype = None
    lib.evad_cpu_keyframe_topk_prune.argtypes = [_f, _f, _f, _i64, _f, _i64, _I, _I, _I, _i32,
                                                 _I, _I, _I, _I, _fl]
    lib.evad_cpu_pruned_count.argtypes = [_I, _I, _I, _I]
    lib.evad_cpu_pruned_count.restype = _I
    return lib


def _p(t: torch.Tensor, kind=_f):
    return ctypes.cast(t.data_ptr(), kind)


def _cpu_roi_align(lib, features, rois, oh, ow, scale, sr, aligned) -> torch.Tensor:
    b, c, t, h, w = features.shape
    out = torch.full((rois.shape[0], c, t, oh, ow), float("nan"))
    features, rois = features.contiguous(), rois.contiguous()
    code = lib.evad_cpu_roi_align_3d(_p(features), _p(rois), _p(out), b, c, t, h, w,
                                     rois.shape[0], oh, ow, scale, sr, int(aligned))
    assert code == 0
    return out


def _rois(g: torch.Generator, n: int, b: int, img_h: float, img_w: float) -> torch.Tensor:
    """Boxes inside, partly outside and wholly outside the image, plus a degenerate one."""
    xy = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h]) * 1.6 - 0.3 * torch.tensor(
        [img_w, img_h])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h]) * 0.6
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([-400.0, -300.0, -200.0, -100.0])  # wholly outside
    boxes[1] = torch.tensor([10.0, 20.0, 10.0, 20.0])  # zero size
    batch = torch.randint(0, b, (n, 1), generator=g).float()
    return torch.cat([batch, boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize(("t", "sr", "oh", "ow"), [(4, 2, 7, 7), (1, 1, 3, 5), (2, 3, 7, 4)])
def test_roi_align_matches_torch(lib, aligned: bool, t: int, sr: int, oh: int, ow: int) -> None:
    g = torch.Generator().manual_seed(t * 10 + sr)
    features = torch.randn(2, 5, t, 9, 13, generator=g)
    rois = _rois(g, 24, 2, 9 * 16, 13 * 16)
    ref = roi_align_3d(features, rois, oh, ow, 1 / 16, sr, aligned)
    got = _cpu_roi_align(lib, features, rois, oh, ow, 1 / 16, sr, aligned)
    assert (got - ref).abs().max().item() <= 1e-5  # the design's op-level bound
    assert torch.all(got[0] == 0)  # wholly outside gives zeros


def test_roi_align_no_rois(lib) -> None:
    out = _cpu_roi_align(lib, torch.randn(1, 2, 3, 4, 4), torch.zeros(0, 5), 7, 7, 1 / 16, 2, True)
    assert out.shape == (0, 2, 3, 7, 7)


def _qk(g: torch.Generator, b: int, h: int, n: int, d: int, sharp: float = 2.0):
    q = torch.randn(b, h, n, d, generator=g) * sharp * d**-0.5
    k = torch.randn(b, h, n, d, generator=g)
    return q, k


@pytest.mark.parametrize(("b", "h", "n", "s", "d", "wkf", "tiles"), [
    (1, 2, 40, 8, 16, 1.0, 32), (2, 3, 75, 15, 8, 4.0, 7), (3, 1, 33, 1, 64, 0.5, 1)])
def test_importance_matches_torch(lib, b, h, n, s, d, wkf, tiles) -> None:
    g = torch.Generator().manual_seed(n)
    q, k = _qk(g, b, h, n, d)
    ref = importance(q, k, s, wkf)
    got = torch.empty(b, n - s)
    lib.evad_cpu_importance(_p(q), _p(k), _p(got), b, h, n, d, n - s, wkf, tiles)
    rel = ((got - ref).abs() / ref.abs()).max().item()
    assert rel <= 2e-5, rel


def _ranked_qk(g: torch.Generator, b: int, h: int, n: int, s: int, d: int):
    """q, k whose non-keyframe importances follow a random ranking with gaps above 1e-4:
    non-keyframe keys lie on one axis with lengths log(1 + 4 r / M) for ranks r, every query has
    a unit component on it (small noise elsewhere), so softmax probabilities are near-linear in
    the rank."""
    q = 0.1 * torch.randn(b, h, n, d, generator=g)
    q[..., 0] = 1.0
    k = torch.randn(b, h, n, d, generator=g)
    ranks = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])  # (B, M)
    k[:, :, s:, :] = 0.0
    k[:, :, s:, 0] = torch.log1p(4.0 * ranks[:, None, :].float() / (n - s))
    return q, k


def _gapped(score: torch.Tensor, kk: int) -> bool:
    """True when the top-kk+1 scores of every row are >= 1e-4 apart (no near-ties to flip)."""
    top = torch.topk(score, min(kk + 1, score.shape[1]), dim=1).values
    return bool((top[:, :-1] - top[:, 1:]).min() >= 1e-4) if top.shape[1] > 1 else True


@pytest.mark.parametrize(("b", "n", "s", "num", "den"), [(1, 60, 12, 7, 10), (2, 90, 18, 1, 2),
                                                          (3, 45, 5, 1, 1)])
def test_prune_matches_torch_indices_and_bits(lib, b, n, s, num, den) -> None:
    """Identical indices and bit-identical tokens on inputs with importance gaps >= 1e-4;
    (1, 1) keeps every token: K = N - S, i.e. K up to N, no cap."""
    h, d, c = 2, 16, 24
    kk = pruned_count(n, s, num, den)
    g = torch.Generator().manual_seed(n)
    q, k = _ranked_qk(g, b, h, n, s, d)
    assert _gapped(importance(q, k, s, 1.0), kk)
    x = torch.randn(b, n - s, c, generator=g)
    idx = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    ref_x, ref_idx = keyframe_topk_prune(q, k, x, idx, num, den, 1.0)
    got_x, got_idx = torch.empty(b, kk, c), torch.empty(b, kk, dtype=torch.int64)
    code = lib.evad_cpu_keyframe_topk_prune(_p(q), _p(k), _p(x), _p(idx, _i64), _p(got_x),
                                            _p(got_idx, _i64), b, h, n, d, n - s, c, num, den,
                                            1.0)
    assert code == 0
    assert torch.equal(got_idx, ref_idx)
    assert torch.equal(got_x, ref_x)  # bit-identical gather


def _tied_qk(g: torch.Generator, b: int, h: int, n: int, s: int, d: int):
    """q, k whose non-keyframe importances come in exactly equal pairs: as _ranked_qk with ranks
    r = (perm + 1) // 2, so two tokens share every rank but the lowest and the highest; equal
    ranks are identical key rows, hence identical importance bit for bit."""
    q = 0.1 * torch.randn(b, h, n, d, generator=g)
    q[..., 0] = 1.0
    k = torch.randn(b, h, n, d, generator=g)
    m = n - s
    ranks = torch.stack([(torch.randperm(m, generator=g) + 1) // 2 for _ in range(b)])
    k[:, :, s:, :] = 0.0
    k[:, :, s:, 0] = torch.log1p(4.0 * ranks[:, None, :].float() / m)
    return q, k, ranks


def _contract_order(ranks: torch.Tensor, kk: int) -> torch.Tensor:
    """The first kk positions by descending rank, the lower position first among equal ranks."""
    return torch.tensor([sorted(range(len(r)), key=lambda j: (-int(r[j]), j))[:kk]
                         for r in ranks.tolist()])


def test_prune_ties_keep_the_lower_position(lib) -> None:
    """Equal importance (bitwise): the lower position in x_nonkey ranks first, also across the
    K boundary (one of a tied pair kept, the other pruned)."""
    b, h, n, s, d, c = 2, 2, 60, 10, 16, 8
    kk = pruned_count(n, s, 7, 10)  # 32 of M = 50: the boundary splits a tied pair
    g = torch.Generator().manual_seed(11)
    q, k, ranks = _tied_qk(g, b, h, n, s, d)
    top = torch.sort(ranks, dim=1, descending=True).values
    assert torch.all(top[:, kk - 1] == top[:, kk])  # a tie straddles K
    score = torch.empty(b, n - s)
    lib.evad_cpu_importance(_p(q), _p(k), _p(score), b, h, n, d, n - s, 1.0, 32)
    for bi in range(b):  # the precondition: tied ranks give identical importance
        for r in range(1, int(ranks[bi].max())):
            assert len(set(score[bi][ranks[bi] == r].tolist())) == 1
    x = torch.randn(b, n - s, c, generator=g)
    idx = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    got_x, got_idx = torch.empty(b, kk, c), torch.empty(b, kk, dtype=torch.int64)
    code = lib.evad_cpu_keyframe_topk_prune(_p(q), _p(k), _p(x), _p(idx, _i64), _p(got_x),
                                            _p(got_idx, _i64), b, h, n, d, n - s, c, 7, 10, 1.0)
    assert code == 0
    pos = _contract_order(ranks, kk)
    assert torch.equal(got_idx, torch.gather(idx, 1, pos))
    assert torch.equal(got_x, torch.gather(x, 1, pos[..., None].expand(-1, -1, c)))


@pytest.mark.parametrize("n", [1, 2, 7, 480, 2304, 3226, 6336])
@pytest.mark.parametrize(("num", "den"), [(7, 10), (6, 10), (1, 2), (1, 1)])
def test_pruned_count_is_integer_ceil(lib, n: int, num: int, den: int) -> None:
    import math
    from fractions import Fraction

    want = math.ceil(Fraction(num, den) * n) - 1
    assert lib.evad_cpu_pruned_count(n, 1, num, den) == want == pruned_count(n, 1, num, den)
