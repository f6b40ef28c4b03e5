"""The EVAD detector: KTP encoder, Sparse R-CNN localization, context refinement decoder.

``docs/model.md`` is the specification; module and parameter names follow
the released code so that official checkpoints load by key name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from evad.models.localization import FPN, RCNNHead, pool_rois
from evad.models.presets import Preset
from evad.models.vit import (
    Attention,
    EncoderOutput,
    Mlp,
    SinusoidPositions,
    VisionTransformer,
)

__all__ = ["EVAD", "EVADOutput", "ascending_positions", "build_model", "clip_boxes",
           "extend_boxes", "keep_top_actions", "pose_softmax_logits"]

POSE_CLASSES = 14  # AVA's first 14 classes are the exclusive poses; the official code hard-codes 14


@dataclass
class EVADOutput:
    """What one forward returns.

    boxes: (B, n, 4) x1y1x2y2 of the last localization stage, input pixels, clipped to the image.
    person_scores: (B, n) softmax person probability of the last stage.
    action_logits: (B, n, classes) of the last decoder block (apply sigmoid for probabilities;
        with the preset's ``softmax_pose`` / ``num_eval_act_classes`` they are the logits of the
        official scores, see ``EVADHead.classify``).
    kept_indices: one (B, K_i) int64 per pruning block: kept non-keyframe positions (original
        non-keyframe order), in that block's top-k order.
    stage_logits / stage_boxes / block_action_logits: every localization stage's (B, n, 2) logits
        and (B, n, 4) unclipped boxes, every decoder block's logits (for deep supervision); filled
        only with ``forward(..., all_stages=True)``.
    """

    boxes: torch.Tensor
    person_scores: torch.Tensor
    action_logits: torch.Tensor
    kept_indices: list[torch.Tensor]
    stage_logits: list[torch.Tensor] = field(default_factory=list)
    stage_boxes: list[torch.Tensor] = field(default_factory=list)
    block_action_logits: list[torch.Tensor] = field(default_factory=list)


def clip_boxes(boxes: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """Clip (B, n, 4) x1y1x2y2 boxes to [0, w - 1] x [0, h - 1]; image_size (B, 2) as (h, w)."""
    hi = (image_size.flip(-1) - 1).to(boxes.dtype).repeat(1, 2)[:, None]  # (B, 1, 4): w h w h
    return torch.minimum(boxes.clamp(min=0), hi)


def pose_softmax_logits(logits: torch.Tensor, pose: int = POSE_CLASSES) -> torch.Tensor:
    """Logits whose sigmoid is the softmax over the first ``pose`` classes (the rest unchanged).

    sigmoid(z_i - logsumexp_{j != i} z_j) = softmax(z)_i, so the official SOFTMAX_POSE scores come
    out of the same sigmoid as every other class, and the BCE of these logits is the official
    BCE of the softmax probabilities. (..., C) -> (..., C).
    """
    k = min(pose, logits.shape[-1])
    z = logits[..., :k]
    others = z.unsqueeze(-2).expand(*z.shape, k)  # (..., i, j) = z_j
    eye = torch.eye(k, dtype=torch.bool, device=z.device)
    rest = torch.logsumexp(others.masked_fill(eye, float("-inf")), dim=-1)
    return torch.cat((z - rest, logits[..., k:]), dim=-1)


def keep_top_actions(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's top ``k`` logits kept, the others -inf (score 0 after the sigmoid), as the
    official NUM_EVAL_ACT_CLASSES test step does on the scores. (..., C) -> (..., C)."""
    values, idx = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, values)


def ascending_positions(idx: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.sort(idx, dim=1).values`` for distinct positions ``idx`` (B, K) in [0, n), without
    a sort: over a 0/1 mask of the kept positions, a kept position's rank is the count of kept
    positions before it (a cumulative sum) and a dropped one goes after all K kept ones, in
    order; that is a permutation of [0, n), and scattering the positions through it puts the
    kept ones, ascending, first.

    Why not sort: a sort exports as an ONNX TopK whose K (the kept token count) grows with the
    input size, and TensorRT's TopK takes K <= 3840; CumSum and a ScatterElements whose indices
    are a permutation (unique, no larger than the data, as TensorRT's scatter requires) have no
    such limit. Same integers as the sort. (B, K) int64 -> (B, K) int64.
    """
    b, k = idx.shape
    mask = torch.zeros(b, n, dtype=torch.int64, device=idx.device).scatter(
        1, idx, torch.ones_like(idx))
    before = mask.cumsum(1)  # kept positions up to and including each position
    positions = torch.arange(n, device=idx.device).expand(b, n)
    target = torch.where(mask.bool(), before - 1, k + positions - before)
    return torch.zeros_like(positions).scatter(1, target, positions)[:, :k]


def extend_boxes(boxes: torch.Tensor, ratio: tuple[float, float],
                 image_size: torch.Tensor) -> torch.Tensor:
    """Grow (B, n, 4) boxes by ``ratio`` (x, y) of their +1 size, half on each side, then clip."""
    rx, ry = ratio
    w = boxes[..., 2] - boxes[..., 0] + 1
    h = boxes[..., 3] - boxes[..., 1] + 1
    pad = torch.stack((-rx * w / 2, -ry * h / 2, rx * w / 2, ry * h / 2), dim=-1)
    return clip_boxes(boxes + pad, image_size)


class DecoderBlock(nn.Module):
    """Context refinement block (pre-norm) with its own action head on the last n tokens."""

    def __init__(self, dim: int, heads: int, p: Preset) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=p.layer_norm_eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=p.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * p.decoder_mlp_ratio))
        self.act_module = nn.Sequential(
            nn.Linear(dim, p.action_hidden, bias=False), nn.LayerNorm(p.action_hidden), nn.ReLU()
        )
        self.action_logits = nn.Linear(p.action_hidden, p.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))

    def head(self, actors: torch.Tensor) -> torch.Tensor:
        """(B, n, dim) actor tokens -> (B, n, classes) action logits (raw: before the preset's
        score options, which ``EVADHead.classify`` applies)."""
        return self.action_logits(self.act_module(actors))


class Decoder(nn.Module):
    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            DecoderBlock(p.decoder_dim, p.decoder_heads, p) for _ in range(p.decoder_depth)
        )


class EVADHead(nn.Module):
    """``det_head``: the localization stages and the classification branch (CRD)."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.preset = p
        self.mask_token = nn.Parameter(torch.zeros(1, 1, p.decoder_dim))
        self.s0_headseries = nn.ModuleList(RCNNHead(p) for _ in range(p.loc_stages))
        self.encoder_to_decoder = nn.Linear(p.embed_dim, p.decoder_dim, bias=False)
        self.decoder = Decoder(p)
        self.pos_embed = SinusoidPositions(p.pretrain_grid, p.decoder_dim)

    def dense_map(self, x: torch.Tensor, idx: torch.Tensor,
                  grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter kept decoder tokens back into the full (t, h, w) grid, and add positions.

        Args:
            x: (B, M, C_d) projected tokens, keyframe first, then kept tokens in top-k order.
            idx: (B, M - S) their original non-keyframe positions.
            grid: (t, h, w).

        Returns:
            dense (B, t*h*w, C_d) in the original temporal order, dropped positions holding
            ``mask_token``, plus positions; tokens (B, M, C_d) = x plus their positions.
        """
        t, h, w = grid
        s, key = h * w, t // 2
        b, _, dim = x.shape
        pos = self.pos_embed(h, w, x)
        pos_nonkey = torch.cat((pos[: key * s], pos[(key + 1) * s:]))
        # Placement quirk of the released weights: kept tokens, in top-k order, fill the kept
        # positions in ASCENDING order (a boolean-mask assignment), not their own positions.
        slots = ascending_positions(idx, (t - 1) * s)
        others = self.mask_token.to(x.dtype).expand(b, (t - 1) * s, dim).scatter(
            1, slots[..., None].expand(-1, -1, dim), x[:, s:]
        )
        dense = torch.cat((others[:, : key * s], x[:, :s], others[:, key * s:]), dim=1) + pos
        tokens = x + torch.cat((pos[key * s:(key + 1) * s].expand(b, -1, -1), pos_nonkey[slots]), 1)
        return dense, tokens

    def classify(self, x_enc: torch.Tensor, idx: torch.Tensor, actors: torch.Tensor,
                 grid: tuple[int, int, int], all_blocks: bool = False) -> list[torch.Tensor]:
        """Action logits from the context refinement decoder.

        Args:
            x_enc: (B, M, C_e) encoder tokens, keyframe first, then kept tokens in top-k order.
            idx: (B, M - S) original non-keyframe positions of the kept tokens.
            actors: (B, n, 4) extended actor boxes, input pixels.
            grid: (t, h, w) token grid.

        Returns:
            [(B, n, classes)] of the last block, or of every block with ``all_blocks``. With
            ``softmax_pose`` the pose logits are replaced by ``pose_softmax_logits`` (training
            too: the official loss takes the softmax as well); with ``num_eval_act_classes`` in
            eval mode only the top ones stay (``keep_top_actions``; the official code does this
            at test time only).
        """
        t, h, w = grid
        b = x_enc.shape[0]
        dense, tokens = self.dense_map(self.encoder_to_decoder(x_enc), idx, grid)
        dim = dense.shape[2]
        n = actors.shape[1]
        batch = torch.arange(b, device=dense.device, dtype=actors.dtype).repeat_interleave(n)
        rois = torch.cat((batch[:, None], actors.reshape(b * n, 4)), dim=1)
        fmap = dense.transpose(1, 2).reshape(b, dim, t, h, w)
        p = self.preset
        # The official actor pooler is a detectron2 ROIPooler of its own: the DETECTION.* size and
        # stride, the box head's sampling ratio and type; then AdaptiveMaxPool3d((t, 1, 1)) (max
        # over the bins) and AvgPool3d((t, 1, 1)) (mean over time).
        pooled = pool_rois(fmap, rois, p.action_pooler_resolution, 1.0 / p.action_pooler_stride,
                           p.pooler_sampling_ratio, p.pooler_type)
        actor_tokens = pooled.amax(dim=(3, 4)).mean(dim=2).reshape(b, n, dim)

        z = torch.cat((tokens, actor_tokens), dim=1)
        logits = []
        blocks = self.decoder.blocks
        for i, blk in enumerate(blocks):
            z = blk(z)
            if all_blocks or i == len(blocks) - 1:
                out = blk.head(z[:, -n:])
                if p.softmax_pose:
                    out = pose_softmax_logits(out)
                if p.num_eval_act_classes and not self.training:
                    out = keep_top_actions(out, p.num_eval_act_classes)
                logits.append(out)
        return logits


class EVAD(VisionTransformer):
    """EVAD video action detector (torch reference).

    ``forward(clip, image_size=None, kept_indices=None)`` with clip (B, 3, 16, H, W) normalised,
    H and W multiples of 32, and image_size (B, 2) the unpadded (h, w) in pixels.
    """

    def __init__(self, p: Preset) -> None:
        p.validate()
        super().__init__(p)
        FPN.build(self, p.embed_dim, p.fpn_dim)
        self.init_proposal_features = nn.Embedding(p.num_proposals, p.loc_hidden)
        self.init_proposal_boxes = nn.Embedding(p.num_proposals, 4)
        self.det_head = EVADHead(p)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation in the spirit of the released code (seed torch first)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for prm in self.det_head.parameters():
            if prm.dim() > 1:
                nn.init.xavier_uniform_(prm)
        nn.init.normal_(self.init_proposal_features.weight)
        self.init_proposal_boxes.weight[:, :2] = 0.5
        self.init_proposal_boxes.weight[:, 2:] = 1.0

    @torch.no_grad()
    def calm(self) -> EVAD:
        """Make random weights behave like trained ones where parity depends on it.

        Freshly initialised weights give near-uniform attention, whose importance scores tie
        within float noise, and box deltas of order 1 that make the six-stage box refinement
        chaotic (two fp32 backends then differ by hundreds of pixels at stage 6, as fp32 and fp64
        torch do). So: scale every ``attn.qkv`` so attention logits spread with std ~1, and shrink
        each stage's box-delta layer so boxes move by a few percent per stage. Only for tests,
        benchmarks and demos on random weights; returns ``self``.
        """
        for blk in [*self.blocks, *self.det_head.decoder.blocks]:
            w = blk.attn.qkv.weight
            # logit std ~ C * std(W)^2 for unit-variance inputs (after LayerNorm)
            w.mul_(1.0 / (float(w.std()) * w.shape[1] ** 0.5))
        for head in self.det_head.s0_headseries:
            head.bboxes_delta.weight.mul_(0.05)
            head.bboxes_delta.bias.zero_()
        return self

    def forward(  # type: ignore[override]
        self,
        clip: torch.Tensor,
        image_size: torch.Tensor | None = None,
        kept_indices: Sequence[torch.Tensor] | None = None,
        all_stages: bool = False,
    ) -> EVADOutput:
        """Detect actors and classify their actions on the keyframe of each clip.

        Args:
            clip: (B, 3, T, H, W) normalised frames, H and W multiples of 32.
            image_size: (B, 2) unpadded (h, w) in input pixels; default (H, W).
            kept_indices: force each pruning block's decision (one (B, K_i) tensor per block).
            all_stages: also return every stage's and decoder block's outputs (training).
        """
        image_size = self._image_size(clip, image_size)
        enc = self.encode(clip, kept_indices)
        stage_logits, stage_boxes = self.localize(enc, image_size)
        boxes = stage_boxes[-1].detach()
        action = self.classify_actions(enc, boxes, image_size, clip.shape[-2:], all_stages)
        out = EVADOutput(
            boxes=clip_boxes(boxes, image_size),
            person_scores=torch.softmax(stage_logits[-1], dim=-1)[..., 0],
            action_logits=action[-1],
            kept_indices=enc.kept,
        )
        if all_stages:
            out.stage_logits, out.stage_boxes, out.block_action_logits = (
                stage_logits, stage_boxes, action)
        return out

    @staticmethod
    def _image_size(clip: torch.Tensor, image_size: torch.Tensor | None) -> torch.Tensor:
        b, _, _, height, width = clip.shape
        if height % 32 or width % 32:
            raise ValueError(f"clip is {height}x{width}; H and W must be multiples of 32 (pad "
                             "bottom/right with zeros after normalisation)")
        if image_size is None:
            image_size = clip.new_tensor([height, width]).expand(b, 2)
        # An exported graph cannot refuse a size (every runner does, before it): one outside
        # the clip is clamped into [1, H] x [1, W], so boxes never leave the frame.
        return torch.minimum(image_size.to(clip.dtype).clamp(min=1),
                             clip.new_tensor([height, width]))

    def localize(self, enc: EncoderOutput,
                 image_size: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Sparse R-CNN stages on the FPN of the keyframe taps.

        Returns:
            per stage: (B, n, 2) person/no-object logits and (B, n, 4) x1y1x2y2 boxes (input
            pixels, unclipped; each stage refines the previous stage's detached boxes).
        """
        res = enc.taps
        res = [F.interpolate(res[0], scale_factor=4.0, mode="nearest"),
               F.interpolate(res[1], scale_factor=2.0, mode="nearest"), res[2],
               F.interpolate(res[3], scale_factor=0.5, mode="nearest")]
        feats = FPN.forward(self, res)
        whwh = image_size.flip(-1).repeat(1, 2)[:, None]  # (B, 1, 4)
        cxcywh = self.init_proposal_boxes.weight
        init = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
        boxes = init[None] * whwh
        pro = self.init_proposal_features.weight[None].expand(image_size.shape[0], -1, -1)
        stage_logits, stage_boxes = [], []
        for head in self.det_head.s0_headseries:
            logits, new_boxes, pro = head(feats, boxes, pro)
            stage_logits.append(logits)
            stage_boxes.append(new_boxes)
            boxes = new_boxes.detach()
        return stage_logits, stage_boxes

    def classify_actions(self, enc: EncoderOutput, boxes: torch.Tensor, image_size: torch.Tensor,
                         input_hw: Sequence[int], all_blocks: bool = False) -> list[torch.Tensor]:
        """Action logits of actor ``boxes`` (B, n, 4) x1y1x2y2 input pixels (extended and clipped
        here) from the context refinement decoder: the last block's, or every block's."""
        p = self.preset
        grid = (p.num_frames // p.tubelet_size, input_hw[0] // p.patch_size,
                input_hw[1] // p.patch_size)
        actors = extend_boxes(boxes, p.box_extend, image_size)
        return self.det_head.classify(enc.x, enc.idx, actors, grid, all_blocks=all_blocks)


def build_model(preset: str | Preset = "vit_b_ktp", **overrides) -> EVAD:
    """A randomly initialised EVAD (seed torch before calling for reproducible weights).

    Args:
        preset: a preset name (``evad.models.PRESETS``) or a Preset.
        overrides: preset fields to replace, e.g. ``num_classes=24`` or ``keep_rate=0.6``.
    """
    from evad.models.presets import get_preset

    p = get_preset(preset) if isinstance(preset, str) else preset
    return EVAD(p.replace(**overrides) if overrides else p)
