"""Localization branch: a detectron2-style FPN over the keyframe taps and Sparse R-CNN stages.

Every RoIAlign here goes through ``evad::roi_align_3d`` (a 2D map is a map with T = 1), so one op
contract, one kernel and one plugin serve both branches of the model. ``pool_rois`` is the one
entry point of both branches' poolers: it also runs detectron2's legacy "ROIPool" type, in torch
only (no exported op), for checkpoints trained with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evad.errors import ConfigError
from evad.models.presets import Preset
from evad.models.roi_align_3d import roi_align_3d

__all__ = ["DynamicConv", "FPN", "RCNNHead", "apply_deltas", "box_levels", "multilevel_roi_align",
           "pool_rois", "roi_pool_3d"]

FPN_STRIDES = (4, 8, 16, 32)
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # F.gelu is exact (erf), as the official's
# Bounds roi_pool_3d's masked (rois, C, T, H, out_w, W or out_h) intermediates to ~64 Mi elements.
_POOL_CHUNK_ELEMENTS = 1 << 26


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C ``round`` (torch.round rounds half to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _bin_masks(start: torch.Tensor, end: torch.Tensor, bins: int, length: int) -> torch.Tensor:
    """(R, bins, length) bool: the cells of each quantised bin along one axis (torchvision
    roi_pool: start/end rounded, size >= 1 cell, bin i is [floor(i b), ceil((i+1) b)) + start,
    clipped to the map)."""
    size = (end - start + 1).clamp(min=1)
    bin_size = size / bins
    i = torch.arange(bins, dtype=start.dtype, device=start.device)
    lo = (torch.floor(i[None] * bin_size[:, None]) + start[:, None]).clamp(0, length)
    hi = (torch.ceil((i[None] + 1) * bin_size[:, None]) + start[:, None]).clamp(0, length)
    cells = torch.arange(length, dtype=start.dtype, device=start.device)
    return (cells >= lo[..., None]) & (cells < hi[..., None])


def roi_pool_3d(features: torch.Tensor, rois: torch.Tensor, output_height: int,
                output_width: int, spatial_scale: float) -> torch.Tensor:
    """Quantised RoI max pooling of every temporal slice (torchvision ``roi_pool``, detectron2's
    "ROIPool" pooler type); an empty bin gives 0.

    Args:
        features: (B, C, T, H, W) float feature map.
        rois: (R, 5) rows ``[batch_index, x1, y1, x2, y2]``, input pixels.
        spatial_scale: feature pixels per input pixel.

    Returns:
        (R, C, T, output_height, output_width), ``features``' dtype.
    """
    if torch.compiler.is_compiling():
        raise ConfigError("the 'ROIPool' pooler type is implemented in the torch reference only "
                          "(no exported or compiled op): export a ROIAlignV2 model")
    b, c, t, h, w = features.shape
    rois = rois.to(features.dtype)
    box = _round_half_away(rois[:, 1:] * spatial_scale)  # the kernel rounds in the map's dtype
    my = _bin_masks(box[:, 1], box[:, 3], output_height, h)  # (R, oh, H)
    mx = _bin_masks(box[:, 0], box[:, 2], output_width, w)  # (R, ow, W)
    batch = rois[:, 0].long()
    out = features.new_zeros((rois.shape[0], c, t, output_height, output_width))
    chunk = max(1, _POOL_CHUNK_ELEMENTS // max(1, c * t * h * output_width * max(w, output_height)))
    low = torch.finfo(features.dtype).min
    for s in range(0, rois.shape[0], chunk):
        ids = slice(s, s + chunk)
        f = features[batch[ids]]  # (n, C, T, H, W)
        # a rectangle's max is the max over rows of the max over its columns
        cols = torch.where(mx[ids, None, None, None], f[:, :, :, :, None], low).amax(-1)
        rows = torch.where(my[ids, None, None, :, :, None], cols[:, :, :, None], low).amax(-2)
        empty = ~my[ids].any(-1)[:, :, None] | ~mx[ids].any(-1)[:, None, :]  # (n, oh, ow)
        out[ids] = rows.masked_fill(empty[:, None, None], 0.0)
    return out


def pool_rois(features: torch.Tensor, rois: torch.Tensor, resolution: int, spatial_scale: float,
              sampling_ratio: int, pooler_type: str = "ROIAlignV2") -> torch.Tensor:
    """detectron2's single-level pooler op of ``pooler_type`` on every temporal slice.

    Args:
        features: (B, C, T, H, W); rois: (R, 5) ``[batch_index, x1, y1, x2, y2]`` input pixels.
        resolution: bins per side; spatial_scale: feature pixels per input pixel.
        sampling_ratio: samples per bin and axis (RoIAlign types; ROIPool has none).
        pooler_type: "ROIAlignV2" (half-pixel offset), "ROIAlign" (legacy, RoI size >= 1) or
            "ROIPool" (quantised max, torch reference only).

    Returns:
        (R, C, T, resolution, resolution).
    """
    if pooler_type == "ROIPool":
        return roi_pool_3d(features, rois, resolution, resolution, spatial_scale)
    if pooler_type not in ("ROIAlignV2", "ROIAlign"):
        raise ConfigError(f"unknown pooler type {pooler_type!r}")
    return roi_align_3d(features, rois, resolution, resolution, spatial_scale, sampling_ratio,
                        pooler_type == "ROIAlignV2")


class FPN(nn.Module):
    """Lateral 1x1 and output 3x3 convs (with bias), top-down nearest x2, sum fusion, no norm.

    Modules are created on ``owner`` under detectron2's names (``fpn_lateral2`` ... ``fpn_output5``)
    so a checkpoint's keys map one to one; this class only holds the forward logic.
    """

    @staticmethod
    def build(owner: nn.Module, in_dim: int, dim: int) -> None:
        for lvl in range(2, 6):
            owner.add_module(f"fpn_lateral{lvl}", nn.Conv2d(in_dim, dim, 1))
            owner.add_module(f"fpn_output{lvl}", nn.Conv2d(dim, dim, 3, padding=1))

    @staticmethod
    def forward(owner: nn.Module, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """taps: res2..res5 (B, C_e, H/4.., W/4..) -> [p2, p3, p4, p5] (B, dim, ...)."""
        prev = owner.fpn_lateral5(taps[3])
        outs = [owner.fpn_output5(prev)]
        for lvl in (4, 3, 2):
            lateral = getattr(owner, f"fpn_lateral{lvl}")(taps[lvl - 2])
            prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            outs.insert(0, getattr(owner, f"fpn_output{lvl}")(prev))
        return outs


def box_levels(boxes: torch.Tensor, canonical_size: float = 224.0, canonical_level: int = 4,
               min_level: int = 2, max_level: int = 5) -> torch.Tensor:
    """FPN level (0 = p2 .. 3 = p5) of (R, 4) x1y1x2y2 boxes, detectron2's assignment rule."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size + 1e-8))
    return (level.clamp(min_level, max_level) - min_level).long()


def multilevel_roi_align(features: list[torch.Tensor], boxes: torch.Tensor, resolution: int,
                         sampling_ratio: int, pooler_type: str = "ROIAlignV2") -> torch.Tensor:
    """RoIAlign (or ``pooler_type``'s op, see ``pool_rois``) of each box on its FPN level.

    Args:
        features: [p2, p3, p4, p5] (B, C, H_l, W_l).
        boxes: (B, n, 4) x1y1x2y2, input pixels.

    Returns:
        (B * n, C, resolution, resolution). Every level pools every box and the box's own level is
        selected, which keeps shapes static for export at a cost of 4 small RoIAligns.
    """
    b, n, _ = boxes.shape
    flat = boxes.reshape(b * n, 4)
    batch = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
    rois = torch.cat((batch[:, None], flat), dim=1)
    level = box_levels(flat)
    out = None
    for lvl, (feat, stride) in enumerate(zip(features, FPN_STRIDES, strict=True)):
        pooled = pool_rois(feat.unsqueeze(2), rois, resolution, 1.0 / stride, sampling_ratio,
                           pooler_type).squeeze(2)
        out = pooled if out is None else torch.where((level == lvl)[:, None, None, None], pooled,
                                                     out)
    return out


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor,
                 weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Decode (R, 4) (dx, dy, dw, dh) deltas on (R, 4) x1y1x2y2 boxes (detectron2 Box2BoxTransform,
    dw and dh clamped at log(100000 / 16))."""
    clamp = math.log(100000.0 / 16)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=clamp)
    dh = (deltas[:, 3] / wh).clamp(max=clamp)
    px, py = dx * widths + ctr_x, dy * heights + ctr_y
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack((px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph), dim=1)


class DynamicConv(nn.Module):
    """Sparse R-CNN instance interaction: each proposal feature generates two matrices
    (hidden x dynamic, dynamic x hidden) applied to its own RoI feature vectors."""

    def __init__(self, hidden: int, dynamic: int, resolution: int) -> None:
        super().__init__()
        self.hidden, self.dynamic = hidden, dynamic
        self.dynamic_layer = nn.Linear(hidden, 2 * hidden * dynamic)
        self.norm1 = nn.LayerNorm(dynamic)
        self.norm2 = nn.LayerNorm(hidden)
        self.out_layer = nn.Linear(hidden * resolution * resolution, hidden)
        self.norm3 = nn.LayerNorm(hidden)

    def forward(self, pro: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """pro (R, hidden), roi (R, S*S, hidden) -> (R, hidden)."""
        params = self.dynamic_layer(pro)
        n1 = self.hidden * self.dynamic
        p1 = params[:, :n1].reshape(-1, self.hidden, self.dynamic)
        p2 = params[:, n1:].reshape(-1, self.dynamic, self.hidden)
        x = F.relu(self.norm1(torch.bmm(roi, p1)))
        x = F.relu(self.norm2(torch.bmm(x, p2)))
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))


class RCNNHead(nn.Module):
    """One Sparse R-CNN stage: RoIAlign, proposal self-attention, dynamic conv, FFN, cls/box."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        d = p.loc_hidden
        self.preset = p
        self.activation = _ACTIVATIONS[p.loc_activation]
        self.self_attn = nn.MultiheadAttention(d, p.loc_heads)
        self.inst_interact = DynamicConv(d, p.dynamic_dim, p.pooler_resolution)
        self.linear1 = nn.Linear(d, p.loc_ffn_dim)
        self.linear2 = nn.Linear(p.loc_ffn_dim, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

        def mlp(layers: int) -> nn.ModuleList:
            mods: list[nn.Module] = []
            for _ in range(layers):
                mods += [nn.Linear(d, d, bias=False), nn.LayerNorm(d), nn.ReLU(inplace=True)]
            return nn.ModuleList(mods)

        self.cls_module = mlp(p.num_cls_layers)
        self.reg_module = mlp(p.num_reg_layers)
        self.class_logits = nn.Linear(d, 2)
        self.bboxes_delta = nn.Linear(d, 4)

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor, pro: torch.Tensor):
        """features [p2..p5]; boxes (B, n, 4) input pixels; pro (B, n, hidden).

        Returns (logits (B, n, 2), boxes (B, n, 4), proposal features (B, n, hidden)).
        """
        b, n, d = pro.shape
        p = self.preset
        roi = multilevel_roi_align(features, boxes, p.pooler_resolution, p.pooler_sampling_ratio,
                                   p.pooler_type)
        roi = roi.reshape(b * n, d, -1).transpose(1, 2)  # (B*n, S*S, d)
        seq = pro.transpose(0, 1)  # (n, B, d): MultiheadAttention is sequence-first
        seq = self.norm1(seq + self.self_attn(seq, seq, seq, need_weights=False)[0])
        pro = seq.transpose(0, 1).reshape(b * n, d)
        pro = self.norm2(pro + self.inst_interact(pro, roi))
        obj = self.norm3(pro + self.linear2(self.activation(self.linear1(pro))))
        cls, reg = obj, obj
        for layer in self.cls_module:
            cls = layer(cls)
        for layer in self.reg_module:
            reg = layer(reg)
        new_boxes = apply_deltas(self.bboxes_delta(reg), boxes.reshape(-1, 4), p.box_weights)
        return (self.class_logits(cls).reshape(b, n, -1), new_boxes.reshape(b, n, 4),
                obj.reshape(b, n, d))
