"""The released training losses: Hungarian matching of proposals to people (class, L1 and GIoU
costs), 2-way person/no-object cross-entropy with a 0.1 no-object weight, L1 and GIoU box losses
with deep supervision over the stages, and BCE on the matched proposals' actions for every
decoder block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["LossWeights", "box_giou", "detection_loss", "hungarian_match"]


@dataclass(frozen=True)
class LossWeights:
    """MODEL.SparseRCNN.{CLASS,L1,GIOU,ACTION,NO_OBJECT}_WEIGHT of the released config."""

    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    action: float = 12.0
    no_object: float = 0.1


def box_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of (n, 4) x (m, 4) x1y1x2y2 boxes -> (n, m)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union.clamp(min=1e-9)
    lt_c = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb_c = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[torch.Tensor],
                    whwh: torch.Tensor, w: LossWeights = LossWeights()) -> list[tuple]:
    """Optimal proposal <-> person assignment per clip.

    Args:
        logits: (B, n, 2) person/no-object logits; boxes: (B, n, 4) x1y1x2y2 pixels.
        targets: per clip (P, 4) x1y1x2y2 pixels; whwh: (B, 4) image (w, h, w, h).

    Returns:
        per clip (proposal indices, target indices) as int64 tensors.
    """
    out = []
    for b, tgt in enumerate(targets):
        if len(tgt) == 0:
            out.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
            continue
        prob = logits[b].softmax(-1)[:, 0]  # person
        cost_cls = -prob[:, None].expand(-1, len(tgt))
        cost_l1 = torch.cdist(boxes[b] / whwh[b], tgt / whwh[b], p=1)
        cost_giou = -box_giou(boxes[b], tgt)
        cost = w.l1 * cost_l1 + w.cls * cost_cls + w.giou * cost_giou
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        out.append((torch.as_tensor(rows, dtype=torch.long),
                    torch.as_tensor(cols, dtype=torch.long)))
    return out


def detection_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list[torch.Tensor],
                   whwh: torch.Tensor, match: list[tuple],
                   w: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Weighted class, L1 and GIoU losses of one stage (normalised by the number of people)."""
    b, n, _ = logits.shape
    cls_target = torch.ones(b, n, dtype=torch.long)  # 1 = no object
    for i, (rows, _) in enumerate(match):
        cls_target[i, rows] = 0
    weight = torch.tensor([1.0, w.no_object])
    loss_ce = F.cross_entropy(logits.reshape(-1, 2), cls_target.reshape(-1), weight)
    num = max(1, sum(len(t) for t in targets))
    src = torch.cat([boxes[i, r] for i, (r, _) in enumerate(match)])
    tgt = torch.cat([targets[i][c] for i, (_, c) in enumerate(match)])
    scale = torch.cat([whwh[i].expand(len(r), 4) for i, (r, _) in enumerate(match)])
    if len(src):
        loss_l1 = F.l1_loss(src / scale, tgt / scale, reduction="sum") / num
        loss_giou = (1 - torch.diag(box_giou(src, tgt))).sum() / num
    else:
        loss_l1 = loss_giou = boxes.sum() * 0.0
    return {"ce": w.cls * loss_ce, "l1": w.l1 * loss_l1, "giou": w.giou * loss_giou}
