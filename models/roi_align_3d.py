"""``evad::roi_align_3d``: RoIAlign applied to every temporal slice of a (B, C, T, H, W) map.

Semantics are those of torchvision's compiled ``roi_align`` (= detectron2 ROIAlignV2 = ONNX
``RoiAlign`` with ``coordinate_transformation_mode=half_pixel``); the contract (fields, defaults,
ranges) is ``evad.op_contracts.ROI_ALIGN_3D``, described in ``plugins/roi_align_3d/README.md``
and ``docs/model.md``:

- with ``aligned`` the box is shifted by -0.5 (in feature pixels) and not forced to size >= 1;
- each of the ``out_h x out_w`` bins averages ``sampling_ratio ** 2`` bilinear samples;
- a sample with y < -1 or y > H or x < -1 or x > W contributes 0 but still counts in the average;
  otherwise y, x below 0 are set to 0 and the upper neighbour is clamped to the last row/column;
- a RoI whose batch index is not finite, not an integer value (not equal to its floor) or outside
  [0, B) gives zeros for all its bins (and no gradient): the contract's edge-case rule
  (``ROI_ALIGN_3D.edge_cases``), which every backend follows (:func:`valid_batch_index`).

Implementation: bilinear sampling on a regular grid is separable, and so is the zero rule, so one
bin is ``Wy[i] @ F @ Wx[j]^T`` with ``Wy`` (out_h, H) and ``Wx`` (out_w, W) interpolation matrices
(at most ``2 * sampling_ratio`` non-zeros per row, already averaged over the samples). This keeps
the reference vectorised, exact to rounding, and small in memory (no per-sample gathers).
"""

from __future__ import annotations

import torch

from evad.op_contracts import ROI_ALIGN_3D

__all__ = ["interpolation_matrix", "roi_align_3d", "valid_batch_index"]

# The op's defaults are the contract's (the exporter drops arguments equal to them).
_D = ROI_ALIGN_3D.defaults

# Bounds the (rois, C*T, H, out_w) intermediate of one matmul to about 64 Mi elements.
_CHUNK_ELEMENTS = 1 << 26


def interpolation_matrix(
    start: torch.Tensor, size: torch.Tensor, bins: int, sampling_ratio: int, length: int
) -> torch.Tensor:
    """Averaged bilinear weights of the sampling points of ``bins`` bins along one axis.

    Args:
        start: (R,) first edge of each RoI along the axis, feature pixels (already scaled/shifted).
        size: (R,) RoI extent along the axis, feature pixels.
        bins: number of output bins along the axis.
        sampling_ratio: samples per bin along the axis (> 0).
        length: feature-map extent along the axis (H or W).

    Returns:
        (R, bins, length) weights, in ``start``'s dtype: bin ``i`` of RoI ``r`` is
        ``sum_p W[r, i, p] * f[p]``.
    """
    dtype, device = start.dtype, start.device
    bin_size = size / bins
    grid = torch.arange(bins, dtype=dtype, device=device)[:, None]
    sub = torch.arange(sampling_ratio, dtype=dtype, device=device)[None, :] + 0.5
    step = bin_size[:, None, None]
    # (R, bins, sampling_ratio) sample coordinates, in the compiled kernel's order of operations.
    pos = start[:, None, None] + grid[None] * step + sub[None] * step / sampling_ratio
    valid = (pos >= -1.0) & (pos <= float(length))
    pos = pos.clamp(min=0.0)
    low = pos.floor()
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low)
    low_i = low.long()
    high_i = torch.where(at_end, low_i, low_i + 1)
    scale = valid.to(dtype) / sampling_ratio
    cells = torch.arange(length, device=device)
    w = ((1.0 - frac) * scale)[..., None] * (low_i[..., None] == cells) + (frac * scale)[
        ..., None
    ] * (high_i[..., None] == cells)
    return w.sum(dim=2)


def valid_batch_index(index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Which RoIs have a valid batch index (the contract's rule): finite, an integer value (equal
    to its floor; -0.0 counts as 0) and in [0, batch_size). ``index``: (R,) float, as read from
    the RoIs (their float type). NaN fails every comparison, so it is invalid too."""
    return (index >= 0) & (index < batch_size) & (index.floor() == index)


def _weights(features: torch.Tensor, rois: torch.Tensor, output_height: int, output_width: int,
             spatial_scale: float, sampling_ratio: int, aligned: bool):
    """Validated inputs -> (wy (R, oh, H), wx (R, ow, W), batch index (R,), -1 for a RoI whose
    index is invalid: no batch element matches it, so its output stays zero)."""
    if features.dim() != 5:
        raise ValueError(f"features must be (B, C, T, H, W), got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) [batch, x1, y1, x2, y2], got {tuple(rois.shape)}")
    if sampling_ratio <= 0:
        raise ValueError("sampling_ratio must be > 0 (the adaptive mode is not supported)")
    h, w = features.shape[-2:]
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    rw = rois[:, 3] * spatial_scale - offset - x1
    rh = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    wy = interpolation_matrix(y1, rh, output_height, sampling_ratio, h)
    wx = interpolation_matrix(x1, rw, output_width, sampling_ratio, w)
    index = rois[:, 0]
    # Replace invalid indices before the cast: casting NaN, inf or a huge value to int64 is
    # undefined, and 0.5 would truncate to a real batch element.
    batch = torch.where(valid_batch_index(index, features.shape[0]), index,
                        torch.full_like(index, -1.0)).long()
    return wy, wx, batch


def _groups(batch: torch.Tensor, b: int, per_roi: int):
    """(batch element, RoI ids) pieces of at most _CHUNK_ELEMENTS / per_roi RoIs each."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, per_roi))
    for bi in range(b):
        sel = (batch == bi).nonzero().flatten()
        for s in range(0, sel.numel(), chunk):
            yield bi, sel[s: s + chunk]


def _apply(features: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor,
           batch: torch.Tensor) -> torch.Tensor:
    """out[r, c, t] = wy[r] @ features[batch[r], c, t] @ wx[r]^T, as two large GEMMs per batch
    element: (C*T*H, W) @ (W, n*ow) for all its RoIs, then (n, oh, H) @ (n, H, C*T*ow)."""
    b, c, t, h, w = features.shape
    r, oh, ow, ct = wy.shape[0], wy.shape[1], wx.shape[1], c * t
    out = features.new_zeros((r, c, t, oh, ow))
    rows = features.reshape(b, ct * h, w)
    for bi, ids in _groups(batch, b, ct * h * ow):
        n = ids.numel()
        cols = (rows[bi] @ wx[ids].reshape(n * ow, w).T).reshape(ct, h, n, ow)
        bins = torch.bmm(wy[ids], cols.permute(2, 1, 0, 3).reshape(n, h, ct * ow))
        out[ids] = bins.reshape(n, oh, c, t, ow).permute(0, 2, 3, 1, 4)
    return out


def _apply_transposed(grad: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor,
                      batch: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The adjoint of ``_apply``: d features = sum_r wy[r]^T @ grad[r] @ wx[r]."""
    b, c, t, h, w = shape
    oh, ow, ct = wy.shape[1], wx.shape[1], c * t
    out = grad.new_zeros((b, ct * h, w))
    for bi, ids in _groups(batch, b, ct * h * ow):
        n = ids.numel()
        g = grad[ids].permute(0, 3, 1, 2, 4).reshape(n, oh, ct * ow)
        cols = torch.bmm(wy[ids].transpose(1, 2), g).reshape(n, h, ct, ow)
        cols = cols.permute(2, 1, 0, 3).reshape(ct * h, n * ow)
        out[bi] += cols @ wx[ids].reshape(n * ow, w)
    return out.reshape(shape)


def _roi_align_3d(features: torch.Tensor, rois: torch.Tensor, output_height: int,
                  output_width: int, spatial_scale: float, sampling_ratio: int,
                  aligned: bool) -> torch.Tensor:
    if features.dtype in (torch.float16, torch.bfloat16):
        # half-precision features (a bf16/fp16 autocast): coordinates and bilinear weights in
        # fp32, as the plugins do; bf16 box coordinates alone would be off by 2-4 px at 512 px
        with torch.autocast(features.device.type, enabled=False):
            out = _roi_align_3d(features.float(), rois.float(), output_height, output_width,
                                spatial_scale, sampling_ratio, aligned)
        return out.to(features.dtype)
    wy, wx, batch = _weights(features, rois, output_height, output_width, spatial_scale,
                             sampling_ratio, aligned)
    return _apply(features, wy, wx, batch)


@torch.library.custom_op("evad::roi_align_3d", mutates_args=())
def roi_align_3d(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_height: int = int(_D["output_height"]),
    output_width: int = int(_D["output_width"]),
    spatial_scale: float = float(_D["spatial_scale"]),
    sampling_ratio: int = int(_D["sampling_ratio"]),
    aligned: bool = bool(_D["aligned"]),
) -> torch.Tensor:
    """RoIAlign of every temporal slice of ``features`` (torch reference of ``evad::RoIAlign3D``).

    Args:
        features: (B, C, T, H, W) float feature map.
        rois: (R, 5) float rows ``[batch_index, x1, y1, x2, y2]``, input pixels.
        output_height, output_width: bins per RoI.
        spatial_scale: feature pixels per input pixel (1/16 for a stride-16 map).
        sampling_ratio: samples per bin along each axis (> 0).
        aligned: half-pixel offset (ROIAlignV2); False reproduces the legacy RoIAlign.

    Returns:
        (R, C, T, output_height, output_width), ``features``' dtype.
    """
    return _roi_align_3d(
        features, rois, output_height, output_width, spatial_scale, sampling_ratio, aligned
    )


@roi_align_3d.register_fake
def _(features, rois, output_height=_D["output_height"], output_width=_D["output_width"],
      spatial_scale=_D["spatial_scale"], sampling_ratio=_D["sampling_ratio"],
      aligned=_D["aligned"]):
    b, c, t, h, w = features.shape
    return features.new_empty((rois.shape[0], c, t, output_height, output_width))


def _setup_context(ctx, inputs, output) -> None:
    features, rois, *attrs = inputs
    wy, wx, batch = _weights(features, rois, *attrs)
    ctx.save_for_backward(wy, wx, batch)
    ctx.shape = features.shape


def _backward(ctx, grad):
    wy, wx, batch = ctx.saved_tensors
    return _apply_transposed(grad, wy, wx, batch, ctx.shape), None, None, None, None, None, None


roi_align_3d.register_autograd(_backward, setup_context=_setup_context)
