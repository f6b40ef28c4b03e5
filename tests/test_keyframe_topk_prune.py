"""evad::keyframe_topk_prune against the plain definition (full softmax, loops over tokens)."""

from __future__ import annotations

import math

import pytest
import torch

from evad.errors import ConfigError
from evad.models import keep_fraction, pruned_count
from evad.models.keyframe_topk_prune import importance, keyframe_topk_prune


def plain_importance(q, k, s, w_kf):
    """The specification, written the plain way in float64."""
    a = torch.softmax(q.double() @ k.double().transpose(-2, -1), dim=-1)  # (B, H, N, N)
    n = a.shape[-1]
    out = torch.zeros(q.shape[0], n - s, dtype=torch.float64)
    for j in range(s, n):
        col = a[:, :, :, j]
        out[:, j - s] = ((w_kf * col[:, :, :s].sum(-1) + col[:, :, s:].sum(-1)) / n).mean(-1)
    return out


def _inputs(b, h, n, d, s, c, seed, spread=3.0, ladder=0.0):
    """Random q, k, tokens, positions. ``ladder`` > 0 gives every key a distinct logit offset
    (a shuffled ladder of that step) so importances are well separated (no near-ties)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g) * spread * d**-0.5
    k = torch.randn(b, h, n, d, generator=g)
    if ladder:
        q[..., 0] = 1.0
        ranks = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
        k[..., 0] = ranks[:, None] * ladder
    x = torch.randn(b, n - s, c, generator=g)
    idx = torch.stack([torch.randperm(3 * n, generator=g)[: n - s] for _ in range(b)])
    return q, k, x, idx


@pytest.mark.parametrize("w_kf", [1.0, 4.0])
def test_importance_matches_definition(w_kf: float) -> None:
    q, k, _, _ = _inputs(2, 3, 2100, 8, 300, 4, seed=0)  # > one row chunk, keyframe rows split
    got = importance(q, k, 300, w_kf)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), plain_importance(q, k, 300, w_kf), rtol=1e-5,
                               atol=1e-9)


@pytest.mark.parametrize(("b", "n", "s", "num", "den"), [(1, 60, 12, 7, 10), (3, 50, 10, 3, 5),
                                                         (2, 40, 8, 39, 40)])
def test_prune_selects_and_orders(b, n, s, num, den) -> None:
    q, k, x, idx = _inputs(b, 2, n, 4, s, 5, seed=n, spread=0.02, ladder=0.05)
    ref = plain_importance(q, k, s, 2.0)
    kk = math.ceil(num * n / den) - s
    gaps = ref.sort(dim=1, descending=True).values[:, : kk + 1].diff(dim=1).abs()
    assert gaps.min() > 1e-4  # no near-ties among the kept and at the boundary
    x_kept, idx_kept = keyframe_topk_prune(q, k, x, idx, num, den, 2.0)
    assert x_kept.shape == (b, kk, 5) and idx_kept.shape == (b, kk)
    order = ref.argsort(dim=1, descending=True)[:, :kk]
    assert torch.equal(idx_kept, torch.gather(idx, 1, order))
    assert torch.equal(x_kept, torch.gather(x, 1, order[..., None].expand(-1, -1, 5)))
    scores = torch.gather(ref, 1, order)
    assert bool((scores.diff(dim=1) < 0).all())  # descending importance, not position order


def test_k_near_n_and_keyframe_weight_changes_choice() -> None:
    q, k, x, idx = _inputs(1, 2, 30, 4, 6, 3, seed=9)
    _, all_kept = keyframe_topk_prune(q, k, x, idx, 29, 30, 1.0)
    assert all_kept.shape == (1, 23)  # ceil(29) - 6: one token dropped
    # A keyframe weight that dominates makes the ranking follow the keyframe rows alone.
    _, heavy = keyframe_topk_prune(q, k, x, idx, 1, 2, 1e6)
    a = torch.softmax(q.double() @ k.double().transpose(-2, -1), -1)[0, :, :6, 6:]
    want = torch.gather(idx, 1, a.sum(1).mean(0).argsort(descending=True)[None, :9])
    assert torch.equal(heavy, want)


def test_keep_count_integer_form_equals_ceil() -> None:
    for rate in (0.5, 0.6, 0.7, 0.8, 0.9):
        num, den = keep_fraction(rate)
        for n in range(1, 20000, 7):
            assert (num * n + den - 1) // den == math.ceil(rate * n), (rate, n)
    assert keep_fraction(0.7) == (7, 10) and keep_fraction(0.6) == (3, 5)
    s = 576
    n = 4608
    counts = [n]
    for _ in range(3):
        n = pruned_count(n, s, 7, 10) + s
        counts.append(n)
    assert counts == [4608, 3226, 2259, 1582]


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_bad_keep_rate(rate: float) -> None:
    with pytest.raises(ConfigError, match="keep rate"):
        keep_fraction(rate)


def test_k_out_of_range_is_an_error() -> None:
    q, k, x, idx = _inputs(1, 1, 20, 4, 16, 2, seed=2)
    with pytest.raises(ValueError, match="non-keyframe tokens"):
        keyframe_topk_prune(q, k, x, idx, 1, 2, 1.0)  # ceil(10) - 16 < 1


def test_fake_kernel_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.empty(2, 3, 100, 8), torch.empty(2, 3, 100, 8)
        x, idx = torch.empty(2, 80, 16), torch.empty(2, 80, dtype=torch.long)
        xk, ik = keyframe_topk_prune(q, k, x, idx, 7, 10, 1.0)
    assert tuple(xk.shape) == (2, 50, 16) and tuple(ik.shape) == (2, 50)


def test_gradient_reaches_kept_tokens_only() -> None:
    q, k, x, idx = _inputs(1, 2, 24, 4, 4, 3, seed=5)
    x = x.requires_grad_(True)
    x_kept, idx_kept = keyframe_topk_prune(q, k, x, idx, 1, 2, 1.0)
    x_kept.sum().backward()
    kept_rows = (idx[0][:, None] == idx_kept[0][None]).any(1)
    assert torch.equal(x.grad[0].abs().sum(1) > 0, kept_rows)
