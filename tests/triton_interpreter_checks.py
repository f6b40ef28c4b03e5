"""The Python plugins' Triton kernels (plugins/triton_kernels.py) without a GPU: run on the CPU
under TRITON_INTERPRET=1 (fp32, fp16) against the torch reference, the contract's tie order
(equal importance: the lower position first), and compiled to cubin for sm_80 and sm_90 (Triton
compiles for a GPUTarget without a GPU). Interpreter runs are ~240x slower than torch: sizes
stay small.

Not collected directly (the name has no test_ prefix): tests/test_plugins_triton.py runs this
file in a fresh interpreter, because Triton's interpreter mode is fixed per process when the
kernels are decorated, and earlier tests in the same process can leave Triton in compiled mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Triton picks interpreter or compiler when a kernel is decorated: conftest.py sets
# TRITON_INTERPRET=1 on machines without a GPU before any test module is imported.
if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):  # in CI it must run
    pytest.importorskip("triton", reason="Triton not installed (pip install triton)")

import torch  # noqa: E402
from tie_cases import tied_queries_keys  # noqa: E402

from evad.models.keyframe_topk_prune import importance, keyframe_topk_prune  # noqa: E402
from evad.models.roi_align_3d import roi_align_3d  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the interpreter checks run where TRITON_INTERPRET=1 (conftest.py sets it on "
                "machines without a GPU; on a GPU the compiled kernels are tested instead)",
                allow_module_level=True)

from evad.plugins import triton_kernels as tk  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("b", "h", "n", "s", "d", "wkf"), [(1, 2, 70, 14, 24, 2.0),
                                                             (2, 1, 33, 1, 16, 1.0)])
def test_importance(dtype, b, h, n, s, d, wkf) -> None:
    g = torch.Generator().manual_seed(n)
    q = (torch.randn(b, h, n, d, generator=g) * 2 * d**-0.5).to(dtype)
    k = torch.randn(b, h, n, d, generator=g).to(dtype)
    ref = importance(q, k, s, wkf)  # fp32 whatever the input type
    got = tk.importance_triton(q, k, s, wkf)
    assert got.dtype == torch.float32
    assert ((got - ref).abs() / ref).max().item() <= 2e-5


def test_prune_identical_on_ranked_inputs() -> None:
    g = torch.Generator().manual_seed(3)
    b, h, n, s, d = 2, 2, 60, 12, 16
    q = 0.1 * torch.randn(b, h, n, d, generator=g)
    q[..., 0] = 1.0
    k = torch.randn(b, h, n, d, generator=g)
    ranks = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    k[:, :, s:, :] = 0.0
    k[:, :, s:, 0] = torch.log1p(4.0 * ranks[:, None, :].float() / (n - s))
    x = torch.randn(b, n - s, 8, generator=g)
    idx = torch.stack([torch.randperm(n - s, generator=g) for _ in range(b)])
    ref_x, ref_i = keyframe_topk_prune(q, k, x, idx, 7, 10, 1.0)
    got_x, got_i = tk.keyframe_topk_prune_triton(q, k, x, idx, 7, 10, 1.0)
    assert torch.equal(got_i, ref_i) and torch.equal(got_x, ref_x)


def test_prune_ties_keep_the_lower_position() -> None:
    """Exact ties (identical key rows give bitwise identical importance columns): the Triton path
    keeps the contract's order, descending importance and the lower position in x_nonkey first,
    also where the K boundary splits a tied pair (a stable descending sort, not torch.topk)."""
    g = torch.Generator().manual_seed(11)
    b, h, n, s, d, c = 2, 2, 60, 10, 16, 8
    m = n - s
    q, k, ranks = tied_queries_keys(g, b, h, n, s, d)
    kk = 32  # ceil(0.7 * 60) - 10, of M = 50
    top = torch.sort(ranks, dim=1, descending=True).values
    assert torch.all(top[:, kk - 1] == top[:, kk])  # a tie straddles K
    score = tk.importance_triton(q, k, s, 1.0)
    for bi in range(b):  # the precondition: tied ranks give identical importance
        for r in range(1, int(ranks[bi].max())):
            assert len(set(score[bi][ranks[bi] == r].tolist())) == 1
    x = torch.randn(b, m, c, generator=g)
    idx = torch.stack([torch.randperm(m, generator=g) for _ in range(b)])
    got_x, got_i = tk.keyframe_topk_prune_triton(q, k, x, idx, keep_num=7, keep_den=10,
                                                 keyframe_weight=1.0)
    pos = torch.tensor([sorted(range(m), key=lambda j: (-int(r[j]), j))[:kk]
                        for r in ranks.tolist()])
    assert torch.equal(got_i, torch.gather(idx, 1, pos))
    assert torch.equal(got_x, torch.gather(x, 1, pos[..., None].expand(-1, -1, c)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align(dtype, aligned: bool) -> None:
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 3, 2, 9, 13, generator=g).to(dtype)
    rois = torch.tensor([[0, 10.0, 20, 100, 120], [1, -50, -30, 300, 200],
                         [0, -400, -300, -200, -100], [1, 5, 5, 5, 5], [1, 0, 0, 208, 144]])
    ref = roi_align_3d(f.float(), rois, 7, 7, 1 / 16, 2, aligned)
    got = tk.roi_align_3d_triton(f, rois.to(dtype), 7, 7, 1 / 16, 2, aligned)
    assert got.dtype == dtype
    assert (got.float() - ref).abs().max().item() <= (1e-5 if dtype == torch.float32 else 4e-3)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN RoIs
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_roi_align_invalid_batch_index_gives_zeros(dtype) -> None:
    """The contract's batch-index rule: a RoI whose index is not finite, not an integer value or
    outside [0, B) gives zeros and loads nothing; the valid RoIs match torch. B = 1 included (a
    scalar argument Triton may specialise)."""
    nan, inf = float("nan"), float("inf")
    for b in (1, 2):
        g = torch.Generator().manual_seed(5 + b)
        f = torch.randn(b, 3, 2, 9, 13, generator=g).to(dtype)
        rois = torch.tensor([[0, 10.0, 20, 100, 120], [-1, 10, 20, 100, 120],
                             [b, 10, 20, 100, 120], [0.5, 10, 20, 100, 120],
                             [nan, nan, nan, nan, nan], [inf, 0, 0, 50, 50],
                             [-inf, 0, 0, 50, 50], [1e30, 0, 0, 50, 50],
                             [b - 1, -50, -30, 300, 200]])
        invalid = torch.tensor([False, True, True, True, True, True, True, True, False])
        ref = roi_align_3d(f.float(), rois, 7, 7, 1 / 16, 2, True)
        got = tk.roi_align_3d_triton(f, rois.to(dtype), 7, 7, 1 / 16, 2, True)
        assert torch.all(got[invalid] == 0) and torch.all(ref[invalid] == 0)
        tol = 1e-5 if dtype == torch.float32 else 4e-3
        assert (got.float() - ref).abs().max().item() <= tol


_COMPILE = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from evad.plugins import triton_kernels as tk
    i32, f32 = "i32", "fp32"
    kernels = [
        (tk._row_lse_kernel, dict(q_ptr="*fp16", k_ptr="*fp16", lse_ptr="*fp32", n=i32, d=i32),
         dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64)),
        (tk._column_sum_kernel, dict(q_ptr="*fp32", k_ptr="*fp32", lse_ptr="*fp32",
                                     out_ptr="*fp32", n=i32, s=i32, d=i32, keyframe_weight=f32),
         dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64)),
        (tk._roi_align_kernel, dict(f_ptr="*fp16", roi_ptr="*fp16", out_ptr="*fp16", total=i32,
                                    b=i32, c=i32, t=i32, h=i32, w=i32, spatial_scale=f32,
                                    offset=f32,
                                    clamp_size=f32), dict(OUT_H=7, OUT_W=7, SR=2, BLOCK=128)),
    ]
    for cc in (80, 90):
        for fn, sig, const in kernels:
            sig = {**sig, **{k: "constexpr" for k in const}}
            compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                      target=GPUTarget("cuda", cc, 32))
            assert len(compiled.asm["cubin"]) > 1000
            print("CUBIN", cc, fn.__name__)
""")


def test_kernels_compile_to_cubin_for_sm80_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("CUBIN") == 6
