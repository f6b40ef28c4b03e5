"""What EVAD's token dropout kept: the paper's Figure 1 for any clip and model.

Token layout (docs/model.md): the clip of T frames becomes a (t, h, w) grid of tubelet tokens,
t = T / tubelet, h = H / patch, w = W / patch. The keyframe slice (t // 2) is never pruned; the
other tokens are numbered 0 .. (t - 1) h w - 1 in (t, h, w) order with the keyframe slice left
out, and each pruning block's ``kept_idx_<block>`` names the survivors in that numbering.

:func:`kept_masks` turns those indices into a (t, h, w) mask per block; :func:`token_strip`
draws one image: a row per pruning block, a column per temporal slice (its first frame), the
dropped tokens darkened, the keyframe column framed. :func:`motion_ratio` measures what the
picture shows: how much more the kept tokens move than the dropped ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from evad.lazy import lazy_import

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["kept_masks", "kept_share", "motion_ratio", "token_motion", "token_strip"]


def kept_masks(kept: Mapping[int, np.ndarray], grid: tuple[int, int, int]) -> dict[int, np.ndarray]:
    """Per pruning block, a (t, h, w) bool mask of the tokens that survive it.

    Args:
        kept: block -> (K,) int64 kept non-keyframe positions (one clip's ``kept_idx_<block>``).
        grid: (t, h, w) tokens.
    """
    t, h, w = grid
    s, key = h * w, t // 2
    out = {}
    for block, idx in sorted(kept.items()):
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= (t - 1) * s):
            raise ValueError(f"kept_idx_{block} names token {int(idx.max())}, outside the "
                             f"{(t - 1) * s} non-keyframe tokens of a {t}x{h}x{w} grid")
        mask = np.zeros((t, h, w), bool)
        mask[key] = True  # every keyframe token is kept
        sl = idx // s
        sl = sl + (sl >= key)  # the numbering skips the keyframe slice
        mask[sl, (idx % s) // w, idx % w] = True
        out[block] = mask
    return out


def kept_share(mask: np.ndarray) -> float:
    """The share of non-keyframe tokens a (t, h, w) mask keeps (the keyframe slice is always
    kept, so it is left out)."""
    t = mask.shape[0]
    return float(mask[np.arange(t) != t // 2].mean())


def _frames(clip: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, T, H, W) normalised RGB -> (T, H, W, 3) uint8 BGR."""
    x = clip.transpose(1, 2, 3, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)[..., ::-1]


def token_motion(clip: np.ndarray, grid: tuple[int, int, int], patch: int, tubelet: int,
                 image_size: tuple[int, int] | None = None) -> np.ndarray:
    """(t, h, w) how much each token's pixels differ from the same place in the keyframe
    slice's frame (mean absolute difference of the normalised input): moving actors score
    high, a static background near 0. Tokens in the zero padding outside ``image_size`` (the
    unpadded h, w) are NaN."""
    t, h, w = grid
    first = clip[:, ::tubelet][:, :t, : h * patch, : w * patch]  # (3, t, h*p, w*p)
    diff = np.abs(first - first[:, t // 2: t // 2 + 1]).mean(0)  # (t, h*p, w*p)
    motion = diff.reshape(t, h, patch, w, patch).mean((2, 4))
    if image_size is not None:
        rows = np.arange(h)[:, None] * patch < image_size[0]
        cols = np.arange(w)[None, :] * patch < image_size[1]
        motion = np.where(rows & cols, motion, np.nan)
    return motion


def motion_ratio(motion: np.ndarray, mask: np.ndarray) -> float:
    """Mean motion of the kept non-keyframe tokens over that of the dropped ones (> 1: the
    block keeps what moves), padding (NaN motion) left out. NaN when nothing or everything
    was dropped."""
    t = motion.shape[0]
    other = np.ones(t, bool)
    other[t // 2] = False
    m, k = motion[other], mask[other]
    valid = ~np.isnan(m)
    m, k = m[valid], k[valid]
    if k.all() or not k.any():
        return float("nan")
    return float(m[k].mean() / max(m[~k].mean(), 1e-12))


def token_strip(clip: np.ndarray, masks: Mapping[int, np.ndarray], mean: Sequence[float],
                std: Sequence[float], patch: int, tubelet: int,
                image_size: tuple[int, int] | None = None, cell_width: int = 160) -> np.ndarray:
    """One BGR uint8 image: a row per pruning block (its kept share in the label), a column per
    temporal slice (the slice's first frame), dropped tokens at a quarter brightness, the
    keyframe column framed in green.

    Args:
        clip: (3, T, H, W) float32 normalised, as the model took it.
        masks: :func:`kept_masks`.
        mean, std: the model's normalisation (RGB, 0..1).
        patch, tubelet: token size, pixels and frames.
        image_size: the unpadded (h, w) inside the input (default: all of it).
        cell_width: pixels per column.
    """
    frames = _frames(clip, mean, std)
    t = next(iter(masks.values())).shape[0] if masks else clip.shape[1] // tubelet
    ih, iw = image_size or frames.shape[1:3]
    scale = cell_width / iw
    ch = max(1, round(ih * scale))
    label_w, pad = 120, 4
    rows = [("input", None)] + [(f"block {b}: {100 * kept_share(m):.0f}%", m)
                                for b, m in sorted(masks.items())]
    img = np.full((len(rows) * (ch + pad) + pad, label_w + t * (cell_width + pad) + pad, 3), 255,
                  np.uint8)
    for r, (label, mask) in enumerate(rows):
        y = pad + r * (ch + pad)
        cv2.putText(img, label, (4, y + ch // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0),
                    1, cv2.LINE_AA)
        for s in range(t):
            cell = frames[s * tubelet, :ih, :iw].astype(np.float32)
            if mask is not None:
                shade = np.where(np.repeat(np.repeat(mask[s], patch, 0), patch, 1), 1.0, 0.25)
                cell *= shade[:ih, :iw, None]
            cell = cv2.resize(cell.astype(np.uint8), (cell_width, ch),
                              interpolation=cv2.INTER_AREA)
            x = label_w + pad + s * (cell_width + pad)
            img[y:y + ch, x:x + cell_width] = cell
            if s == t // 2:
                cv2.rectangle(img, (x - 2, y - 2), (x + cell_width + 1, y + ch + 1),
                              (0, 170, 0), 2)
    return img
