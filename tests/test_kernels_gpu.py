"""The CUDA kernels (libevad_kernels.so) through ctypes against the torch reference, on a GPU:
fp32 at the design's op-level bounds, fp16/bf16 within rounding, K up to N (and past TensorRT's
3840 TopK cap), B > 1, all RoIs and slices in one launch, and the contract's tie order (CUB's
stable radix sort: equal importance keeps the lower position first). Run: ``pytest -m gpu``."""

from __future__ import annotations

import ctypes

import pytest
import torch

from evad.models.keyframe_topk_prune import importance, keyframe_topk_prune, pruned_count
from evad.models.roi_align_3d import roi_align_3d

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]

_I, _i32, _fl, _vp, _sz = ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p, \
    ctypes.c_size_t
_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@pytest.fixture(scope="module")
def kernels() -> ctypes.CDLL:
    from evad.plugins import build, library_path

    path = library_path("libevad_kernels.so")
    if not path.is_file():
        cap = "".join(map(str, torch.cuda.get_device_capability()))
        path = build.build_libraries(archs=cap, quiet=True)["kernels"]
    lib = ctypes.CDLL(str(path))
    lib.evad_roi_align_3d.argtypes = [ctypes.c_int, _vp, _vp, _vp, _I, _I, _I, _I, _I, _I, _i32,
                                      _i32, _fl, _i32, _i32, _vp]
    lib.evad_keyframe_topk_prune_workspace_size.argtypes = [_I, _I, _I, _I]
    lib.evad_keyframe_topk_prune_workspace_size.restype = _sz
    lib.evad_keyframe_topk_prune.argtypes = [ctypes.c_int, _vp, _vp, _vp, _vp, _vp, _vp, _I, _I,
                                             _I, _i32, _I, _I, _I, _I, _fl, _vp, _sz, _vp]
    return lib


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def roi_align_cuda(lib, features, rois, oh=7, ow=7, scale=1 / 16, sr=2, aligned=True):
    b, c, t, h, w = features.shape
    out = torch.empty((rois.shape[0], c, t, oh, ow), dtype=features.dtype, device="cuda")
    err = lib.evad_roi_align_3d(_DTYPE[features.dtype], features.data_ptr(), rois.data_ptr(),
                                out.data_ptr(), b, c, t, h, w, rois.shape[0], oh, ow, scale, sr,
                                int(aligned), _stream())
    assert err == 0
    torch.cuda.synchronize()
    return out


def prune_cuda(lib, q, k, x, idx, num, den, wkf=1.0):
    b, heads, n, d = q.shape
    m, c = x.shape[1], x.shape[2]
    kk = pruned_count(n, n - m, num, den)
    ws_bytes = lib.evad_keyframe_topk_prune_workspace_size(b, heads, n, m)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
    xk = torch.empty((b, kk, c), dtype=x.dtype, device="cuda")
    ik = torch.empty((b, kk), dtype=torch.int64, device="cuda")
    err = lib.evad_keyframe_topk_prune(_DTYPE[q.dtype], q.data_ptr(), k.data_ptr(), x.data_ptr(),
                                       idx.data_ptr(), xk.data_ptr(), ik.data_ptr(), b, heads, n,
                                       d, m, c, num, den, wkf, ws.data_ptr(), ws_bytes, _stream())
    assert err == 0
    torch.cuda.synchronize()
    return xk, ik


def _rois(g, n, b, img_h, img_w):
    xy = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h]) * 1.6 - 0.3 * torch.tensor(
        [img_w, img_h])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h]) * 0.6
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([-400.0, -300.0, -200.0, -100.0])
    return torch.cat([torch.randint(0, b, (n, 1), generator=g).float(), boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_fp32(kernels, aligned: bool) -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 32, 8, 18, 32, generator=g)
    rois = _rois(g, 40, 3, 18 * 16, 32 * 16)
    ref = roi_align_3d(f, rois, 7, 7, 1 / 16, 2, aligned)
    got = roi_align_cuda(kernels, f.cuda(), rois.cuda(), aligned=aligned).cpu()
    assert (got - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_reduced(kernels, dtype) -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 16, 4, 18, 32, generator=g)
    rois = _rois(g, 20, 2, 18 * 16, 32 * 16)
    ref = roi_align_3d(f.to(dtype).float(), rois.to(dtype).float(), 7, 7, 1 / 16, 2, True)
    got = roi_align_cuda(kernels, f.to(dtype).cuda(), rois.to(dtype).cuda()).float().cpu()
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    assert (got - ref).abs().max().item() <= tol


def _ranked_qk(g, b, h, n, s, d):
    q = 0.1 * torch.randn(b, h, n, d, generator=g)
    q[..., 0] = 1.0
    k = torch.randn(b, h, n, d, generator=g)
    ranks = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    k[:, :, s:, :] = 0.0
    k[:, :, s:, 0] = torch.log1p(4.0 * ranks[:, None, :].float() / (n - s))
    return q, k


def test_importance_random_fp32(kernels) -> None:
    """Random (not ranked) inputs: same kept set as torch up to near-ties, via keep-all order."""
    g = torch.Generator().manual_seed(2)
    b, h, n, s, d = 2, 4, 300, 60, 32
    q = torch.randn(b, h, n, d, generator=g) * 2 * d**-0.5
    k = torch.randn(b, h, n, d, generator=g)
    x = torch.arange(n - s, dtype=torch.float32)[None, :, None].expand(b, -1, 1).contiguous()
    idx = torch.arange(n - s)[None].expand(b, -1).contiguous()
    _, ik = prune_cuda(kernels, q.cuda(), k.cuda(), x.cuda(), idx.cuda(), 1, 1)
    ref = importance(q, k, s, 1.0)
    got_scores = torch.gather(ref, 1, ik.cpu())
    assert torch.all(got_scores[:, :-1] >= got_scores[:, 1:] - 1e-6)  # descending up to noise


@pytest.mark.parametrize(("b", "n", "s", "num", "den"), [(1, 200, 40, 7, 10), (3, 500, 100, 1, 2),
                                                          (2, 300, 60, 1, 1)])
def test_prune_fp32_identical(kernels, b, n, s, num, den) -> None:
    g = torch.Generator().manual_seed(n)
    q, k = _ranked_qk(g, b, 4, n, s, 32)
    x = torch.randn(b, n - s, 48, generator=g)
    idx = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    ref_x, ref_i = keyframe_topk_prune(q, k, x, idx, num, den, 1.0)
    got_x, got_i = prune_cuda(kernels, q.cuda(), k.cuda(), x.cuda(), idx.cuda(), num, den)
    assert torch.equal(got_i.cpu(), ref_i)
    assert torch.equal(got_x.cpu(), ref_x)


def test_prune_k_past_tensorrt_topk_cap(kernels) -> None:
    """ViT-B at 384 x 640: N = 7680 tokens (T/2 = 8 slices of 24 x 40), S = 960, K = 4416 > 3840.
    Random fp16 q/k at the real size: the kept set must be the reference's top-K set."""
    g = torch.Generator().manual_seed(3)
    b, h, n, s, d = 1, 12, 7680, 960, 64
    num, den = 7, 10
    kk = pruned_count(n, s, num, den)
    assert kk > 3840
    q = (torch.randn(b, h, n, d, generator=g) * d**-0.5).half()
    k = torch.randn(b, h, n, d, generator=g).half()
    x = torch.randn(b, n - s, 8, generator=g).half()
    idx = torch.arange(n - s)[None]
    _, ik = prune_cuda(kernels, q.cuda(), k.cuda(), x.cuda(), idx.cuda(), num, den)
    ref = importance(q, k, s, 1.0)[0]
    top = torch.topk(ref, kk).values
    kth, gap_tol = top[-1].item(), 1e-6 * top[0].item()
    got = ref[ik[0].cpu()]
    assert got.min().item() >= kth - gap_tol  # every kept token is in the top-K up to near-ties
    assert ik.shape == (1, kk) and len(set(ik[0].tolist())) == kk


@pytest.mark.parametrize("b", [1, 3])
def test_prune_ties_keep_the_lower_position(kernels, b) -> None:
    """Exact ties (identical key rows, so identical importance columns bit for bit): descending
    importance, the lower position in x_nonkey first, also where K splits a tied pair."""
    g = torch.Generator().manual_seed(11)
    h, n, s, d, c = 4, 300, 50, 32, 16
    m = n - s
    q = 0.1 * torch.randn(b, h, n, d, generator=g)
    q[..., 0] = 1.0
    k = torch.randn(b, h, n, d, generator=g)
    ranks = torch.stack([(torch.randperm(m, generator=g) + 1) // 2 for _ in range(b)])
    k[:, :, s:, :] = 0.0  # equal rank = identical key row
    k[:, :, s:, 0] = torch.log1p(4.0 * ranks[:, None, :].float() / m)
    kk = pruned_count(n, s, 7, 10)  # 160 of M = 250
    top = torch.sort(ranks, dim=1, descending=True).values
    assert torch.all(top[:, kk - 1] == top[:, kk])  # a tie straddles K
    x = torch.randn(b, m, c, generator=g)
    idx = torch.stack([torch.randperm(m, generator=g) for _ in range(b)])
    got_x, got_i = prune_cuda(kernels, q.cuda(), k.cuda(), x.cuda(), idx.cuda(), 7, 10)
    pos = torch.tensor([sorted(range(m), key=lambda j: (-int(r[j]), j))[:kk]
                        for r in ranks.tolist()])
    assert torch.equal(got_i.cpu(), torch.gather(idx, 1, pos))
    assert torch.equal(got_x.cpu(), torch.gather(x, 1, pos[..., None].expand(-1, -1, c)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prune_reduced_types(kernels, dtype) -> None:
    g = torch.Generator().manual_seed(4)
    b, n, s = 2, 240, 48
    q, k = _ranked_qk(g, b, 4, n, s, 32)
    x = torch.randn(b, n - s, 16, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    q, k = q.to(dtype), k.to(dtype)
    ref_x, ref_i = keyframe_topk_prune(q.float(), k.float(), x.float(), idx, 7, 10, 1.0)
    got_x, got_i = prune_cuda(kernels, q.cuda(), k.cuda(), x.cuda(), idx.cuda(), 7, 10)
    assert torch.equal(got_i.cpu(), ref_i)
    assert torch.equal(got_x.cpu().float(), ref_x)
