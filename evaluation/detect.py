"""Run a model on the annotated keyframes of a dataset and make its AVA detection rows.

The clips come from the core's one clip path (``ClipDataset``: the frames, keyframe rule,
resize and padding ``evad-trt-run`` uses for the same video and model) and go through the
runtime's one detection step (``detect_clips``) and row writer (``csv_rows``), so
``evad-eval --data`` and ``evad-trt-run`` give the same rows for the same keyframes.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from evad.ava_csv import CsvRow
from evad.datasets.clips import ClipDataset
from evad.runner import Runner
from evad.runtime.detection import PersonRule, detect_clips
from evad.runtime.outputs import csv_rows

__all__ = ["dataset_rows"]


def dataset_rows(runner: Runner, data: ClipDataset, batch: int = 4,
                 person_threshold: float | None = None, keep_all_if_none: bool = True,
                 progress: bool = False) -> list[CsvRow]:
    """AVA detection rows (video, t, box, action id, score) for every annotated keyframe.

    As the released evaluation: proposals with person score >= the threshold (the model's,
    0.7) are detections, all of them if none passes (``keep_all_if_none``); each contributes one
    row per class with the action probability as the score. Boxes are normalised by the
    frame size; each keyframe's rows are listed by descending score.
    """
    rule = PersonRule.for_model(runner.spec, person_threshold, keep_all_if_none)
    rows: list[CsvRow] = []
    # a context: a failure closes the bar (its line ends) before the error is printed
    with tqdm(range(0, len(data), batch), desc="keyframes", unit="batch",
              disable=not progress) as bar:
        for s in bar:
            items = range(s, min(len(data), s + batch))
            clips = np.stack([data.clip(i)[0] for i in items])
            pres = [data.pre[data.keyframes[i].video] for i in items]
            found, _ = detect_clips(runner, clips, pres, rule)
            for i, people in zip(items, found, strict=True):
                kf = data.keyframes[i]
                rows.extend(csv_rows(kf.video, kf.timestamp, people))
    return rows
