"""Frame-level mAP at IoU 0.5: the AVA evaluation protocol.

As the AVA evaluation code (the PASCAL VOC metric of the TF object detection API) does it:
- per class, an image (keyframe) contributes its ground-truth boxes of that class; a detection
  is a true positive when the ground-truth box it overlaps most has IoU >= 0.5 and was not
  matched before; otherwise (a duplicate, or a miss) it is a false positive. Detections of one
  image and class are matched greedily in the order they are given (the AVA code does not sort
  them by score within an image);
- precision/recall over all detections of the class ranked by ``np.argsort(scores)[::-1]``
  (per image in the order images first appear, as the AVA code concatenates them; the order of
  equal scores is numpy's, as in the AVA code), then AP is the area under the monotone
  precision envelope at the recall steps (VOC 2010+);
- classes without ground truth have no AP (reported as null) and do not enter the mean;
  keyframes in the exclusion list are ignored on both sides; detections on keyframes without
  ground truth are false positives; detections with x1 >= x2 or y1 >= y2 are dropped (the AVA
  code removes such invalid boxes before matching).
IoU uses areas without the +1 pixel convention, on normalised coordinates.

This is the evaluation the EVAD and SlowFast repositories ship (and that the EVAD paper's AVA
numbers come from). ActivityNet's ``get_ava_performance.py`` differs in one respect: it keeps
only the 50 highest-scoring rows per keyframe and sorts them by score before matching. The
project's writers (``evad-eval --data``, ``evad-trt-run``) list each keyframe's rows by score
(``evad.ava_csv.by_score``), so both protocols match a keyframe's detections in the
same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from evad.ava_csv import CsvRow, TruthRow
from evad.boxes import box_iou
from evad.errors import ConfigError

__all__ = ["average_precision", "evaluate"]


def _key(video: str, ts: float) -> tuple[str, float]:
    return video, round(float(ts), 3)


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC AP of detections with ``scores`` and true-positive flags ``tp`` against ``num_gt``."""
    if num_gt == 0:
        return float("nan")
    # exactly the AVA code's ranking: numpy leaves the order of equal scores to its sort
    # implementation, and so does the reference evaluation
    order = np.argsort(scores)[::-1]
    tp = tp[order].astype(int)
    cum_tp = np.cumsum(tp)
    cum_fp = np.cumsum(1 - tp)
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1)
    recall = cum_tp / num_gt
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def evaluate(gt: Iterable[TruthRow | CsvRow], det: Iterable[CsvRow],
             class_ids: Iterable[int] | None = None,
             excluded: set[tuple[str, float]] | None = None, iou: float = 0.5) -> dict:
    """Frame mAP of detections against ground truth (rows as ``evad.ava_csv.read_rows`` gives
    them; the last column of a ground-truth row is not used).

    Returns:
        {"mAP", "iou", "keyframes", "per_class": {id: {"ap", "num_gt", "num_det"}}} with
        ``ap`` None for classes without ground truth.

    Raises:
        ConfigError: ``iou`` is not in (0, 1].
    """
    if not (isinstance(iou, (int, float)) and 0 < iou <= 1):  # also refuses NaN
        raise ConfigError(f"the IoU threshold must be in (0, 1], not {iou!r}")
    excluded = {_key(*k) for k in (excluded or set())}
    gt_by: dict[tuple, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for video, ts, box, action, _ in gt:
        key = _key(video, ts)
        if key not in excluded:
            gt_by[key][action].append(box)
    det_by: dict[tuple, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for video, ts, box, action, score in det:
        key = _key(video, ts)
        if key not in excluded and box[0] < box[2] and box[1] < box[3]:
            det_by[key][action].append((box, score))
    classes = sorted(set(class_ids) if class_ids is not None else
                     {a for per in gt_by.values() for a in per})
    result: dict = {"iou": iou, "keyframes": len(gt_by), "per_class": {}}
    aps = []
    for c in classes:
        scores, flags, num_gt, num_det = [], [], 0, 0
        # images in the order their detections came (the AVA code concatenates per image in
        # the order images were added), then images with ground truth only
        for key in [*det_by, *(k for k in gt_by if k not in det_by)]:
            gts = np.array(gt_by[key][c], dtype=np.float64).reshape(-1, 4) if key in gt_by \
                else np.zeros((0, 4))
            dets = det_by[key][c] if key in det_by else []
            num_gt += len(gts)
            num_det += len(dets)
            if not dets:
                continue
            boxes = np.array([d[0] for d in dets], dtype=np.float64)
            tp = np.zeros(len(dets), dtype=bool)
            if len(gts):
                overlaps = box_iou(boxes, gts)
                best = overlaps.argmax(1)
                taken = np.zeros(len(gts), dtype=bool)
                for i in range(len(dets)):  # input order, as the AVA code
                    g = best[i]
                    if overlaps[i, g] >= iou and not taken[g]:
                        tp[i], taken[g] = True, True
            scores.extend(d[1] for d in dets)
            flags.extend(tp)
        ap = average_precision(np.array(scores, dtype=np.float64), np.array(flags, dtype=bool),
                               num_gt)
        result["per_class"][c] = {"ap": None if np.isnan(ap) else ap, "num_gt": num_gt,
                                  "num_det": num_det}
        if not np.isnan(ap):
            aps.append(ap)
    result["mAP"] = float(np.mean(aps)) if aps else float("nan")
    return result
