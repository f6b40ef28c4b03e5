"""VideoMAE ViT encoder with keyframe-centric token pruning (KTP), and the shared transformer parts.

Token layout (``docs/model.md``, "Encoder"): after the positions are added,
the keyframe slice (temporal index t // 2) is moved to the front, so keyframe tokens are always
the first S; ``idx`` tracks each surviving non-keyframe token's index in the original
non-keyframe order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evad.models.keyframe_topk_prune import keep_fraction, keyframe_topk_prune, pruned_count
from evad.models.presets import Preset

__all__ = [
    "Attention",
    "Block",
    "EncoderOutput",
    "SinusoidPositions",
    "VisionTransformer",
    "keyframe_first",
    "sinusoid_table",
]


def sinusoid_table(grid: tuple[int, int, int], dim: int, size: tuple[int, int]) -> torch.Tensor:
    """Fixed sinusoid position table of the pre-training grid, resized to a new spatial size.

    Args:
        grid: (t, h0, w0) pre-training token grid, e.g. (8, 14, 14) for 224 input.
        dim: channels.
        size: (h, w) token grid to resize every temporal slice to (bicubic, align_corners False).

    Returns:
        (t * h * w, dim) float32 table in (t, h, w) order.
    """
    t, h0, w0 = grid
    pos = torch.arange(t * h0 * w0, dtype=torch.float64)[:, None]
    expo = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), expo)[None]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    table = table.float()
    if (h0, w0) == tuple(size):
        return table
    slices = table.reshape(t, h0, w0, dim).permute(0, 3, 1, 2)
    slices = F.interpolate(slices, size=tuple(size), mode="bicubic", align_corners=False)
    return slices.permute(0, 2, 3, 1).reshape(-1, dim)


class SinusoidPositions:
    """The fixed position table of one width, resized per token grid and cached (not a
    parameter: released checkpoints do not store it)."""

    def __init__(self, grid: tuple[int, int, int], dim: int) -> None:
        self.grid, self.dim = grid, dim
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """(t * h * w, dim) table for an (h, w) grid, in ``like``'s dtype and device."""
        key = (h, w, like.dtype, like.device)
        if key in self._cache:
            return self._cache[key]
        table = sinusoid_table(self.grid, self.dim, (h, w))
        if type(like) is not torch.Tensor:  # tracing (fake/functional tensors): never cache
            return table.to(dtype=like.dtype)
        self._cache[key] = table.to(like)
        return self._cache[key]


class Attention(nn.Module):
    """Multi-head self-attention with separate q and v biases (k has none), as in VideoMAE.

    ``qk_scale``: the query scale, None for head_dim ** -0.5 (the released ``ViT.QK_SCALE``).
    """

    def __init__(self, dim: int, num_heads: int, qk_scale: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5 if qk_scale is None else float(qk_scale)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, C) -> (output (B, N, C), q (B, heads, N, d) scaled by d**-0.5, k (same))."""
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.scale
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), q, k


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; with ``keep`` set it prunes non-keyframe tokens in between."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float,
                 keep: tuple[int, int] | None = None, keyframe_weight: float = 1.0,
                 qk_scale: float | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qk_scale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.keep = keep
        self.keyframe_weight = keyframe_weight

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor, s: int, forced: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One block over (B, N, C) tokens whose first ``s`` are keyframe tokens.

        Args:
            idx: (B, N - s) int64 original non-keyframe positions of x[:, s:].
            forced: (B, K) kept non-keyframe positions (original order, in their rank order) to
                use instead of this block's own top-k decision (parity against a backend).

        Returns:
            (x, idx, pruned): the tokens and positions after the block, and whether it pruned.
        """
        a, q, k = self.attn(self.norm1(x))
        x = x + a
        pruned = False
        if self.keep is not None:
            n = x.shape[1]
            kk = pruned_count(n, s, *self.keep)
            if kk < n - s:  # keep == N prunes nothing and keeps the order
                if forced is None:
                    x_nonkey, idx = keyframe_topk_prune(
                        q, k, x[:, s:], idx, self.keep[0], self.keep[1], self.keyframe_weight
                    )
                else:
                    x_nonkey, idx = _take_forced(x[:, s:], idx, forced, kk)
                x = torch.cat((x[:, :s], x_nonkey), dim=1)
                pruned = True
        return x + self.mlp(self.norm2(x)), idx, pruned


def _take_forced(x_nonkey: torch.Tensor, idx: torch.Tensor, forced: torch.Tensor, kk: int):
    if forced.shape != (idx.shape[0], kk):
        raise ValueError(f"forced kept indices have shape {tuple(forced.shape)}, this block keeps "
                         f"{(idx.shape[0], kk)}")
    lookup = idx.new_full((idx.shape[0], int(idx.max()) + 1 if idx.numel() else 1), -1)
    lookup.scatter_(1, idx, torch.arange(idx.shape[1], device=idx.device).expand_as(idx))
    if int(forced.min()) < 0 or int(forced.max()) >= lookup.shape[1]:
        raise ValueError("forced kept indices name tokens that were already dropped")
    pos = torch.gather(lookup, 1, forced.to(idx.device))
    if bool((pos < 0).any()):
        raise ValueError("forced kept indices name tokens that were already dropped")
    return torch.gather(x_nonkey, 1, pos[..., None].expand(-1, -1, x_nonkey.shape[2])), forced


def keyframe_first(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """(B, t*s, C) tokens in (t, h, w) order -> keyframe slice (t // 2) first, the rest in order."""
    key = t // 2
    return torch.cat((x[:, key * s:(key + 1) * s], x[:, :key * s], x[:, (key + 1) * s:]), dim=1)


@dataclass
class EncoderOutput:
    """x: (B, M, C_e) final-normed surviving tokens (keyframe first, then kept non-keyframe tokens
    in the last pruning block's top-k order); idx: (B, M - S) their original non-keyframe
    positions; kept: one (B, K_i) int64 per pruning block; taps: 4 (B, C_e, h, w) keyframe maps."""

    x: torch.Tensor
    idx: torch.Tensor
    kept: list[torch.Tensor]
    taps: list[torch.Tensor]


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, tubelet: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch),
                              stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class VisionTransformer(nn.Module):
    """The KTP encoder: tubelet embedding, positions, keyframe-first order, blocks, final norm.

    Its modules sit at the top level of the state dict (``patch_embed``, ``blocks``, ``norm``), as
    in the released checkpoints, so the detector extends this class rather than wrapping it.
    """

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.preset = p
        self.patch_embed = PatchEmbed(p.embed_dim, p.patch_size, p.tubelet_size)
        self.blocks = nn.ModuleList(
            Block(p.embed_dim, p.num_heads, p.mlp_ratio, p.layer_norm_eps,
                  keep_fraction(p.keep_rates[i]) if p.keep_rates.get(i, 1.0) < 1.0 else None,
                  p.keyframe_weight, p.qk_scale)  # ViT.QK_SCALE reaches the encoder only
            for i in range(p.depth)
        )
        self.norm = nn.LayerNorm(p.embed_dim, eps=p.layer_norm_eps)
        self.pos_embed = SinusoidPositions(p.pretrain_grid, p.embed_dim)

    @property
    def pruning_blocks(self) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if b.keep is not None]

    def encode(
        self, clip: torch.Tensor, kept_indices: Sequence[torch.Tensor] | None = None
    ) -> EncoderOutput:
        """clip (B, 3, T, H, W) normalised -> EncoderOutput (see its docstring).

        ``kept_indices``: one (B, K_i) tensor per pruning block to force its decision.
        """
        x = self.patch_embed(clip)
        b, c, t, h, w = x.shape
        if t != self.preset.pretrain_grid[0]:
            raise ValueError(f"clip has {clip.shape[2]} frames; the model takes "
                             f"{self.preset.num_frames}")
        s = h * w
        x = x.flatten(2).transpose(1, 2) + self.pos_embed(h, w, x)
        x = keyframe_first(x, t, s)
        idx = torch.arange((t - 1) * s, device=x.device).expand(b, -1)
        forced = list(kept_indices) if kept_indices is not None else None
        kept, taps = [], []
        for i, blk in enumerate(self.blocks):
            f = None
            if forced is not None and blk.keep is not None:
                if len(kept) >= len(forced):
                    raise ValueError(f"{len(forced)} forced kept-index tensors given, but block "
                                     f"{i} is pruning block {len(kept) + 1}")
                f = forced[len(kept)]
            x, idx, pruned = blk(x, idx, s, f)
            if pruned:
                kept.append(idx)
            if i in self.preset.fpn_taps:
                taps.append(x[:, :s].transpose(1, 2).reshape(b, c, h, w))
        if forced is not None and len(forced) != len(kept):
            raise ValueError(f"{len(forced)} forced kept-index tensors given, the model pruned "
                             f"in {len(kept)} blocks")
        return EncoderOutput(self.norm(x), idx, kept, taps)

    def forward(self, clip: torch.Tensor,
                kept_indices: Sequence[torch.Tensor] | None = None) -> EncoderOutput:
        return self.encode(clip, kept_indices)
