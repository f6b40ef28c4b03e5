"""Triton kernels of the evad ops for the Python TensorRT plugins: an implementation independent
of the CUDA kernels (``plugins/<op>/*.cu``), checked on the CPU under ``TRITON_INTERPRET=1``
(fp32/fp16) and compiled to cubin for sm_80/sm_90 without a GPU (tests/test_plugins_triton.py).

- KeyframeTopKPrune importance in two passes over key blocks (row log-sum-exp, then weighted
  column sums of exp(s - lse)), fp32 accumulation, never an N x N buffer; the order and the
  gather are torch: a stable descending sort of the importance, then the first K, so equal
  importance keeps the lower position first (the tie order of
  :data:`evad.op_contracts.KEYFRAME_TOPK_PRUNE`).
- RoIAlign3D: one program per block of output elements, every RoI and slice in one launch; a RoI
  whose batch index is invalid (not finite, not an integer value, outside [0, B)) gives zeros.

Nothing on these paths waits for the device (no ``.item()``, ``.nonzero()``, ``.cpu()``, ...):
the Python plugins call them from ``enqueue``, which CUDA graphs capture
(tests/test_plugins.py checks the source; tests/test_kernels_gpu.py captures them).

The host functions take the contract's fields by name (``keep_num=...``), as the Python plugins
pass them. Importing this module imports Triton (a Triton kernel needs the real
``triton.language`` among its globals: Triton's compiler and interpreter look it up there);
without Triton the import raises :class:`evad.lazy.MissingDependency` (``pip install triton``).
The Python plugins import it lazily (:mod:`evad.plugins.python_plugins`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evad.lazy import lazy_import
from evad.op_contracts import pruned_count

if TYPE_CHECKING:
    import torch
    import triton
    import triton.language as tl
else:
    torch = lazy_import("torch", "pip install torch")
    triton = lazy_import("triton", "pip install triton")
    tl = triton.language  # the real module (imports Triton now), for the kernels' globals

__all__ = ["importance_triton", "keyframe_topk_prune_triton", "roi_align_3d_triton"]


@triton.jit
def _row_lse_kernel(q_ptr, k_ptr, lse_ptr, n, d, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Pass 1: lse[bh, i] = log sum_j exp(q_i . k_j) for a block of rows i of one (b, h)."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    base = bh * n * d
    q = tl.load(q_ptr + base + rows[:, None] * d + dims[None, :],
                mask=(rows[:, None] < n) & (dims[None, :] < d), other=0.0).to(tl.float32)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, n, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptr + base + cols[:, None] * d + dims[None, :],
                    mask=(cols[:, None] < n) & (dims[None, :] < d), other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = tl.where(cols[None, :] < n, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m = m_new
    tl.store(lse_ptr + bh * n + rows, m + tl.log(acc), mask=rows < n)


@triton.jit
def _column_sum_kernel(q_ptr, k_ptr, lse_ptr, out_ptr, n, s, d, keyframe_weight,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 2: out[bh, j - s] = sum_i w_i exp(q_i . k_j - lse_i), j >= s, w_i = keyframe_weight
    for i < s else 1, for a block of non-keyframe columns of one (b, h)."""
    bh = tl.program_id(0)
    m_cols = n - s
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # non-keyframe index
    dims = tl.arange(0, BLOCK_D)
    base = bh * n * d
    k = tl.load(k_ptr + base + (s + cols[:, None]) * d + dims[None, :],
                mask=(cols[:, None] < m_cols) & (dims[None, :] < d), other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for i0 in range(0, n, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        q = tl.load(q_ptr + base + rows[:, None] * d + dims[None, :],
                    mask=(rows[:, None] < n) & (dims[None, :] < d), other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + bh * n + rows, mask=rows < n, other=0.0)
        p = tl.exp(tl.dot(q, tl.trans(k), input_precision="ieee") - lse[:, None])
        w = tl.where(rows < s, keyframe_weight, 1.0)
        w = tl.where(rows < n, w, 0.0)
        acc += tl.sum(p * w[:, None], axis=0)
    tl.store(out_ptr + bh * m_cols + cols, acc, mask=cols < m_cols)


@triton.jit
def _roi_align_kernel(f_ptr, roi_ptr, out_ptr, total, b, c, t, h, w, spatial_scale, offset,
                      clamp_size, OUT_H: tl.constexpr, OUT_W: tl.constexpr, SR: tl.constexpr,
                      BLOCK: tl.constexpr):
    """One output element (r, c, t, ph, pw) per lane; samples outside [-1, H] x [-1, W] (or NaN)
    give 0; a RoI whose batch index is not finite, not an integer value or outside [0, B) gives
    0 and loads nothing (the contract's edge-case rule)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = e < total
    pw = e % OUT_W
    ph = (e // OUT_W) % OUT_H
    ti = (e // (OUT_W * OUT_H)) % t
    ci = (e // (OUT_W * OUT_H * t)) % c
    ri = e // (OUT_W * OUT_H * t * c)
    index = tl.load(roi_ptr + ri * 5, mask=live, other=0.0).to(tl.float32)
    # NaN fails every comparison; the index is used only where valid (no cast of garbage).
    valid = (index >= 0.0) & (index < b) & (tl.floor(index) == index)
    batch = tl.where(valid, index, 0.0).to(tl.int64)
    x1 = tl.load(roi_ptr + ri * 5 + 1, mask=live, other=0.0).to(tl.float32) * spatial_scale \
        - offset
    y1 = tl.load(roi_ptr + ri * 5 + 2, mask=live, other=0.0).to(tl.float32) * spatial_scale \
        - offset
    rw = tl.load(roi_ptr + ri * 5 + 3, mask=live, other=0.0).to(tl.float32) * spatial_scale \
        - offset - x1
    rh = tl.load(roi_ptr + ri * 5 + 4, mask=live, other=0.0).to(tl.float32) * spatial_scale \
        - offset - y1
    rw = tl.maximum(rw, clamp_size)  # clamp_size: 1 without `aligned`, -inf with it
    rh = tl.maximum(rh, clamp_size)
    bin_h = rh / OUT_H
    bin_w = rw / OUT_W
    plane = ((batch * c + ci) * t + ti) * h * w
    hf = h.to(tl.float32)
    wf = w.to(tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    for iy in tl.static_range(SR):
        y = y1 + ph.to(tl.float32) * bin_h + (iy + 0.5) * bin_h / SR
        for ix in tl.static_range(SR):
            x = x1 + pw.to(tl.float32) * bin_w + (ix + 0.5) * bin_w / SR
            inside = (y >= -1.0) & (y <= hf) & (x >= -1.0) & (x <= wf)  # False for NaN
            yc = tl.maximum(y, 0.0)
            xc = tl.maximum(x, 0.0)
            y_low = tl.floor(yc).to(tl.int64)
            x_low = tl.floor(xc).to(tl.int64)
            y_end = y_low >= h - 1
            x_end = x_low >= w - 1
            y_low = tl.where(y_end, h - 1, y_low)
            x_low = tl.where(x_end, w - 1, x_low)
            y_high = tl.where(y_end, y_low, y_low + 1)
            x_high = tl.where(x_end, x_low, x_low + 1)
            ly = tl.where(y_end, 0.0, yc - y_low.to(tl.float32))
            lx = tl.where(x_end, 0.0, xc - x_low.to(tl.float32))
            ok = live & valid & inside
            v00 = tl.load(f_ptr + plane + y_low * w + x_low, mask=ok, other=0.0).to(tl.float32)
            v01 = tl.load(f_ptr + plane + y_low * w + x_high, mask=ok, other=0.0).to(tl.float32)
            v10 = tl.load(f_ptr + plane + y_high * w + x_low, mask=ok, other=0.0).to(tl.float32)
            v11 = tl.load(f_ptr + plane + y_high * w + x_high, mask=ok, other=0.0).to(tl.float32)
            val = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
            acc += tl.where(ok, val, 0.0)
    tl.store(out_ptr + e, (acc / (SR * SR)).to(out_ptr.dtype.element_ty), mask=live)


def importance_triton(q, k, s: int, keyframe_weight: float, block: int = 32):
    """(B, N - s) fp32 importance of the non-keyframe tokens from q, k (B, H, N, d) torch tensors,
    by the two Triton passes: ``mean_h((w_kf * sum_{i<s} A[h,i,j] + sum_{i>=s} A[h,i,j]) / N)``
    with ``A = softmax(q k^T)``."""
    b, heads, n, d = q.shape
    q, k = q.contiguous(), k.contiguous()
    lse = torch.empty((b * heads, n), dtype=torch.float32, device=q.device)
    col = torch.empty((b * heads, n - s), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))
    _row_lse_kernel[(b * heads, triton.cdiv(n, block))](q, k, lse, n, d, BLOCK_M=block,
                                                        BLOCK_N=block, BLOCK_D=block_d)
    _column_sum_kernel[(b * heads, triton.cdiv(n - s, block))](
        q, k, lse, col, n, s, d, float(keyframe_weight), BLOCK_M=block, BLOCK_N=block,
        BLOCK_D=block_d)
    return (col.view(b, heads, n - s) / n).mean(dim=1)


def keyframe_topk_prune_triton(q, k, x_nonkey, idx, keep_num: int, keep_den: int,
                               keyframe_weight: float):
    """``evad::KeyframeTopKPrune`` with the Triton importance: the K most important non-keyframe
    tokens in the contract's order (descending importance; on equal importance the lower
    position in x_nonkey first), gathered bit for bit."""
    n = q.shape[2]
    s = n - x_nonkey.shape[1]
    kk = pruned_count(n, s, keep_num, keep_den)
    score = importance_triton(q, k, s, keyframe_weight)
    # A stable descending sort, then the first K: torch.topk promises no order among equal values.
    pos = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :kk]
    x_kept = torch.gather(x_nonkey, 1, pos[..., None].expand(-1, -1, x_nonkey.shape[2]))
    return x_kept, torch.gather(idx, 1, pos)


def roi_align_3d_triton(features, rois, output_height: int = 7, output_width: int = 7,
                        spatial_scale: float = 1 / 16, sampling_ratio: int = 2,
                        aligned: bool = True, block: int = 128):
    """``evad::RoIAlign3D``: (R, C, T, oh, ow) from features (B, C, T, H, W), rois (R, 5);
    ``aligned`` may be the contract's int field (0 or 1). RoIs with an invalid batch index give
    zeros, decided on the device (no host sync: the Python plugin's enqueue stays capturable)."""
    b, c, t, h, w = features.shape
    r = rois.shape[0]
    out = torch.empty((r, c, t, output_height, output_width), dtype=features.dtype,
                      device=features.device)
    total = out.numel()
    if total:
        _roi_align_kernel[(triton.cdiv(total, block),)](
            features.contiguous(), rois.contiguous(), out, total, b, c, t, h, w,
            float(spatial_scale), 0.5 if aligned else 0.0,
            float("-inf") if aligned else 1.0, OUT_H=output_height, OUT_W=output_width,
            SR=sampling_ratio, BLOCK=block)
    return out
