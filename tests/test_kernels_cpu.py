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
from evad.models.roi_align_3d import roi_align_3d, valid_batch_index
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
    lib.evad_cpu_roi_batch_index.argtypes = [_fl, _I]
    lib.evad_cpu_roi_batch_index.restype = _I
    lib.evad_cpu_keyframe_topk_prune_workspace.argtypes = [_I, _I, _I, _I, ctypes.c_int,
                                                           ctypes.c_size_t,
                                                           ctypes.POINTER(ctypes.c_size_t)]
    lib.evad_cpu_check_workspace.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    u32p = ctypes.POINTER(ctypes.c_uint32)
    lib.evad_cpu_pass_grid.argtypes = [_I, _I, u32p, u32p, ctypes.POINTER(ctypes.c_int32)]
    lib.evad_cpu_pass_grid.restype = None
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


_NAN, _INF = float("nan"), float("inf")
#: (batch index as stored in the RoI, B, valid?): the contract's rule, finite, integer-valued
#: (equal to its floor) and in [0, B)
BATCH_INDICES = [(0.0, 3, True), (-0.0, 3, True), (1.0, 3, True), (2.0, 3, True),
                 (3.0, 3, False), (-1.0, 3, False), (0.5, 3, False), (1.5, 3, False),
                 (-0.5, 3, False), (2.9999998, 3, False), (_NAN, 3, False), (_INF, 3, False),
                 (-_INF, 3, False), (1e30, 3, False), (-1e30, 3, False), (2.0**40, 3, False),
                 (0.0, 1, True), (1.0, 1, False), (0.0, 0, False)]


def test_roi_batch_index_rule(lib) -> None:
    """evad::roiBatchIndex (evadMath.h, shared by the CUDA kernel) = the torch reference's rule."""
    for value, b, valid in BATCH_INDICES:
        got = lib.evad_cpu_roi_batch_index(value, b)
        assert got == (int(value) if valid else -1), (value, b)
        ref = valid_batch_index(torch.tensor([value], dtype=torch.float32), b)
        assert bool(ref) == valid, (value, b)


def _bad_rois(b: int) -> torch.Tensor:
    """One RoI per invalid batch index (plus garbage coordinates on some), all over the map."""
    bad = [-1.0, float(b), b + 0.5, 0.5, -0.0001, _NAN, _INF, -_INF, 1e30, -2.0**63]
    rois = torch.tensor([[v, 10.0, 20.0, 100.0, 120.0] for v in bad])
    rois[5, 1:] = _NAN  # a garbage RoI: NaN everywhere
    rois[6, 3] = _INF
    return rois


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_invalid_batch_index_gives_zeros(lib, aligned: bool) -> None:
    """The contract's edge-case rule: a RoI whose batch index is not finite, not an integer value
    or outside [0, B) gives zeros for all its bins (the torch reference and the shared maths
    alike); the valid RoIs around it are unchanged."""
    g = torch.Generator().manual_seed(21)
    b = 2
    features = torch.randn(b, 3, 2, 9, 13, generator=g)
    good = _rois(g, 6, b, 9 * 16, 13 * 16)
    bad = _bad_rois(b)
    rois = torch.cat([good[:3], bad, good[3:]])
    invalid = torch.zeros(len(rois), dtype=torch.bool)
    invalid[3:3 + len(bad)] = True
    ref = roi_align_3d(features, rois, 7, 7, 1 / 16, 2, aligned)
    got = _cpu_roi_align(lib, features, rois, 7, 7, 1 / 16, 2, aligned)
    assert torch.all(ref[invalid] == 0) and torch.all(got[invalid] == 0)
    assert (got[~invalid] - ref[~invalid]).abs().max().item() <= 1e-5
    alone = roi_align_3d(features, rois[~invalid], 7, 7, 1 / 16, 2, aligned)
    assert torch.equal(ref[~invalid], alone)


def test_roi_align_nan_coordinates_stay_in_bounds(lib) -> None:
    """A valid batch index with NaN coordinates: the samples are NaN, which the shared bilinear
    sampling counts as outside the map (0) instead of turning NaN into an index."""
    features = torch.randn(1, 2, 1, 5, 6)
    rois = torch.tensor([[0.0, _NAN, 0.0, 50.0, 50.0], [0.0, 0.0, 0.0, _NAN, _NAN],
                         [0.0, 0.0, 0.0, _INF, 40.0], [0.0, _NAN, _NAN, _NAN, _NAN]])
    got = _cpu_roi_align(lib, features, rois, 3, 3, 1 / 16, 2, True)
    assert torch.isfinite(got).all()
    assert torch.all(got[[1, 3]] == 0)


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


# --- KeyframeTopKPrune: workspace sizing and launch geometry (host code of the kernels) ---------

_CUDA_ERROR_INSUFFICIENT_DRIVER = 35


def _layout_bytes(b: int, heads: int, n: int, m: int, cub: int) -> int:
    """The workspace layout of keyframeTopkPruneWorkspace.h, written out: 256-byte aligned parts."""
    up = lambda x: (x + 255) // 256 * 256  # noqa: E731
    return (up(4 * b * heads * n) + up(4 * b * heads * m) + 2 * up(4 * b * m) + 2 * up(4 * b * m)
            + up(4 * (b + 1)) + up(cub))


def _workspace(lib, b, heads, n, m, status=0, cub=1000):
    out = ctypes.c_size_t(12345)  # a sentinel: written only on success
    code = lib.evad_cpu_keyframe_topk_prune_workspace(b, heads, n, m, status, cub,
                                                      ctypes.byref(out))
    return code, out.value


def test_workspace_size_from_a_checked_query(lib) -> None:
    """The workspace size is the layout plus what CUB's query reports; a failing query is the
    function's error (CUB's/CUDA's code), never a size without CUB's storage."""
    assert _workspace(lib, 2, 12, 480, 384) == (0, _layout_bytes(2, 12, 480, 384, 1000))
    assert _workspace(lib, 1, 1, 10, 5, cub=0) == (0, _layout_bytes(1, 1, 10, 5, 0))
    code, out = _workspace(lib, 2, 12, 480, 384, status=_CUDA_ERROR_INSUFFICIENT_DRIVER)
    assert (code, out) == (_CUDA_ERROR_INSUFFICIENT_DRIVER, 12345)  # error, size untouched
    for bad in [(-1, 1, 10, 5), (1, -1, 10, 5), (2**16, 1, 10, 2**15),  # b * m >= 2^31
                (2**40, 2**20, 2**20, 1)]:  # bytes overflow size_t
        assert _workspace(lib, *bad) == (1, 12345), bad


def test_workspace_grows_with_every_dimension(lib) -> None:
    """getWorkspaceSize at the profile maximum covers every smaller problem (what lets the
    plugin check an enqueue's need against the size recorded at the maximum)."""
    base = (2, 4, 300, 200)
    size = _workspace(lib, *base)[1]
    for i in range(4):
        bigger = list(base)
        bigger[i] += 64
        assert _workspace(lib, *bigger, cub=1000)[1] >= size, bigger


def test_workspace_check(lib) -> None:
    buf = ctypes.create_string_buffer(8)
    assert lib.evad_cpu_check_workspace(buf, 4096, 4096) == 0
    assert lib.evad_cpu_check_workspace(buf, 4095, 4096) == 1  # too small: nothing launches
    assert lib.evad_cpu_check_workspace(None, 4096, 4096) == 1


def _grid(lib, items: int, batch_heads: int) -> tuple[int, int, int]:
    x, y, ok = ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_int32()
    lib.evad_cpu_pass_grid(items, batch_heads, ctypes.byref(x), ctypes.byref(y), ctypes.byref(ok))
    return x.value, y.value, ok.value


@pytest.mark.parametrize("batch_heads", [1, 12, 65535, 65536, 70001, 200000])
def test_pass_grid_caps_grid_y(lib, batch_heads: int) -> None:
    """gridDim.y of the importance passes stays <= 65535 whatever B * heads is, and the kernels'
    loop (bh = blockIdx.y, + gridDim.y, ...) visits every (batch, head) pair exactly once."""
    x, y, ok = _grid(lib, 480, batch_heads)
    assert ok == 1 and x == 60 and 1 <= y <= 65535 and y == min(batch_heads, 65535)
    visits = torch.zeros(batch_heads, dtype=torch.int64)
    for by in range(y):
        visits[by::y] += 1
    assert torch.all(visits == 1)


def test_pass_grid_refuses_what_cannot_launch(lib) -> None:
    assert _grid(lib, 0, 4)[2] == 0
    assert _grid(lib, 16, 0)[2] == 0
    assert _grid(lib, 8 * 2**31, 1)[2] == 0  # gridDim.x past 2^31 - 1
    assert _grid(lib, 8 * (2**31 - 1), 1) == (2**31 - 1, 1, 1)
