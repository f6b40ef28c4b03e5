"""Run a model on the annotated keyframes of a dataset and make its AVA detection rows.

Any :class:`evad.runner.Runner` runs the clips; the rows come from the runtime's own
post-processing (``keyframe_people``) and row writer (``csv_rows``), so ``evad-eval --data`` and
``evad-trt-run`` cannot disagree on thresholds, fallbacks, box normalisation or row order. The
clips are pre-processed by ``evad.datasets.clips.ClipDataset`` (the inference pre-processing of
the specification), so every backend sees identical inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from evad.datasets.clips import ClipDataset
from evad.runner import OUTPUT_ACTION_PROBS, OUTPUT_BOXES, OUTPUT_PERSON_SCORES, Runner
from evad.runtime.outputs import CsvRow, csv_rows
from evad.runtime.postprocess import keyframe_people

__all__ = ["detect"]


def detect(runner: Runner, data: ClipDataset, batch: int = 4,
           person_threshold: float | None = None, keep_all_if_none: bool = True,
           progress: bool = False) -> list[CsvRow]:
    """AVA detection rows (video, t, box, action id, score) for every annotated keyframe.

    As the released evaluation: proposals with person score >= the threshold (the model's,
    0.7) are detections, all of them if none passes (``keep_all_if_none``); each contributes one
    row per class with the action probability as the score. Boxes are normalised by the
    unpadded image size; each keyframe's rows are listed by descending score.
    """
    thr = runner.spec.person_threshold if person_threshold is None else person_threshold
    rows: list[CsvRow] = []
    # a context: a failure closes the bar (its line ends) before the error is printed
    with tqdm(range(0, len(data), batch), desc="keyframes", unit="batch",
              disable=not progress) as bar:
        for s in bar:
            items = [data.__getitem__(i, flip=False) for i in range(s, min(len(data), s + batch))]
            clips = torch.stack([it[0] for it in items]).numpy()
            sizes = torch.stack([it[1] for it in items]).numpy().astype(np.int64)
            out = runner(clips, sizes)
            for j, i in enumerate(range(s, s + len(items))):
                kf = data.keyframes[i]
                h, w = (int(v) for v in sizes[j])
                people = keyframe_people(out[OUTPUT_BOXES][j], out[OUTPUT_PERSON_SCORES][j],
                                         out[OUTPUT_ACTION_PROBS][j], (1.0, 1.0), (h, w), thr,
                                         keep_all_if_none)
                rows.extend(csv_rows(kf.video, kf.timestamp, people))
    return rows
