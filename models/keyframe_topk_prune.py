"""``evad::keyframe_topk_prune``: the keyframe-centric top-k token pruning of one KTP block.

Contract (``evad.op_contracts.KEYFRAME_TOPK_PRUNE``, described in
``plugins/keyframe_topk_prune/README.md``): from the
block's scaled queries and keys, the importance of every non-keyframe token is the mean over
query rows and heads of its softmax attention column, with keyframe rows (the first S) weighted
by ``keyframe_weight``; the K most important non-keyframe tokens are kept, in descending order
of importance; on equal importance the lower position in ``x_nonkey`` ranks first (a stable
descending sort; ``torch.topk`` promises no order among equal values).

The keep count is an exact fraction of the token count, ``K = ceil(keep_num * N / keep_den) - S``,
written with integer arithmetic so exporters keep it a function of the input shapes.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from evad.errors import ConfigError
from evad.op_contracts import IMPORTANCE_ROW_CHUNK, kept_token_count, pruned_count

__all__ = [
    "importance",
    "keep_fraction",
    "keyframe_topk_prune",
    "kept_token_count",
    "pruned_count",
]

_ROW_CHUNK = IMPORTANCE_ROW_CHUNK


def keep_fraction(rate: float) -> tuple[int, int]:
    """The keep rate as an exact fraction ``(num, den)``, e.g. 0.7 -> (7, 10).

    Raises:
        ConfigError: if the rate is not in (0, 1].
    """
    if not 0.0 < float(rate) <= 1.0:
        raise ConfigError(f"keep rate must be in (0, 1], got {rate}; the paper uses 0.5 .. 1.0")
    frac = Fraction(float(rate)).limit_denominator(1000)
    return frac.numerator, frac.denominator


def importance(q: torch.Tensor, k: torch.Tensor, s: int, keyframe_weight: float) -> torch.Tensor:
    """Keyframe-weighted attention importance of the non-keyframe tokens, in fp32.

    Args:
        q: (B, H, N, d) queries already multiplied by d**-0.5.
        k: (B, H, N, d) keys.
        s: keyframe tokens (the first ``s`` of N).
        keyframe_weight: weight of the keyframe query rows (w_kf).

    Returns:
        (B, N - s) float32 ``I_j = mean_h((w_kf * sum_{i<s} A[h,i,j] + sum_{i>=s} A[h,i,j]) / N)``
        with ``A = softmax(q k^T)``.
    """
    with torch.autocast(q.device.type, enabled=False):  # fp32 under a bf16/fp16 autocast too
        return _importance(q.float(), k.float(), s, keyframe_weight)


def _importance(q: torch.Tensor, k: torch.Tensor, s: int, keyframe_weight: float) -> torch.Tensor:
    n = q.shape[2]
    total = q.new_zeros(q.shape[0], q.shape[1], n - s)
    for r0 in range(0, n, _ROW_CHUNK):
        r1 = min(n, r0 + _ROW_CHUNK)
        probs = torch.softmax(torch.matmul(q[:, :, r0:r1], k.transpose(-2, -1)), dim=-1)[..., s:]
        if r0 < s:
            key_rows = min(r1, s) - r0
            total += keyframe_weight * probs[:, :, :key_rows].sum(dim=2)
            total += probs[:, :, key_rows:].sum(dim=2)
        else:
            total += probs.sum(dim=2)
    return (total / n).mean(dim=1)


def _prune(q, k, x_nonkey, idx, keep_num, keep_den, keyframe_weight):
    n = q.shape[2]
    s = n - x_nonkey.shape[1]
    kk = pruned_count(n, s, keep_num, keep_den)
    if not 0 < kk <= n - s:
        raise ValueError(f"keep {keep_num}/{keep_den} of N={n} with S={s} keyframe tokens gives "
                         f"K={kk} non-keyframe tokens; it must be in 1..{n - s}")
    score = importance(q, k, s, keyframe_weight)
    pos = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :kk]
    x_kept = torch.gather(x_nonkey, 1, pos[..., None].expand(-1, -1, x_nonkey.shape[2]))
    return x_kept, torch.gather(idx, 1, pos)


@torch.library.custom_op("evad::keyframe_topk_prune", mutates_args=())
def keyframe_topk_prune(
    q: torch.Tensor,
    k: torch.Tensor,
    x_nonkey: torch.Tensor,
    idx: torch.Tensor,
    keep_num: int,
    keep_den: int,
    keyframe_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the K most important non-keyframe tokens (reference of ``evad::KeyframeTopKPrune``).

    Args:
        q: (B, H, N, d) the block's queries, already scaled by d**-0.5.
        k: (B, H, N, d) the block's keys.
        x_nonkey: (B, N - S, C) non-keyframe tokens after the attention residual.
        idx: (B, N - S) int64 positions of those tokens in the original non-keyframe order.
        keep_num, keep_den: keep rate as an exact fraction of N (keyframe tokens included).
        keyframe_weight: weight of the keyframe query rows (w_kf).

    Returns:
        ``x_kept`` (B, K, C) and ``idx_kept`` (B, K) int64, in descending order of importance,
        with ``K = ceil(keep_num * N / keep_den) - S``.
    """
    return _prune(q, k, x_nonkey, idx, keep_num, keep_den, keyframe_weight)


@keyframe_topk_prune.register_fake
def _(q, k, x_nonkey, idx, keep_num, keep_den, keyframe_weight):
    n = q.shape[2]
    kk = pruned_count(n, n - x_nonkey.shape[1], keep_num, keep_den)
    return x_nonkey.new_empty((x_nonkey.shape[0], kk, x_nonkey.shape[2])), idx.new_empty(
        (idx.shape[0], kk)
    )


def _setup_context(ctx, inputs, output) -> None:
    _, _, x_nonkey, idx, *_ = inputs
    _, idx_kept = output
    # Positions of the kept tokens in x_nonkey: recoverable from idx, which is a permutation.
    order = torch.argsort(idx, dim=1)
    pos = torch.gather(order, 1, torch.searchsorted(torch.gather(idx, 1, order), idx_kept))
    ctx.save_for_backward(pos)
    ctx.nonkey_shape = x_nonkey.shape


def _backward(ctx, grad_x, grad_idx):
    # Selection is piecewise constant in q and k: gradients flow to the kept tokens only.
    (pos,) = ctx.saved_tensors
    grad_nonkey = grad_x.new_zeros(ctx.nonkey_shape)
    grad_nonkey.scatter_(1, pos[..., None].expand(-1, -1, grad_x.shape[2]), grad_x)
    return None, None, grad_nonkey, None, None, None, None


keyframe_topk_prune.register_autograd(_backward, setup_context=_setup_context)
