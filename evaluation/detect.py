"""Run a model on the annotated keyframes of a dataset and write AVA detection rows.

The clips are pre-processed by ``evad.datasets.clips.ClipDataset`` (the inference
pre-processing of the specification), so torch and ONNX Runtime see identical inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from evad.datasets.clips import ClipDataset
from evad.evaluation.ava_eval import by_score
from evad.models.presets import Preset

__all__ = ["Backend", "detect", "onnx_backend", "torch_backend", "write_rows"]

Backend = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def torch_backend(model) -> Backend:
    """The torch reference as a backend: (clip, image_size) -> boxes, person_scores,
    action_probs."""
    def run(clip: np.ndarray, size: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = model(torch.from_numpy(clip), torch.from_numpy(size))
        return {"boxes": out.boxes.numpy(), "person_scores": out.person_scores.numpy(),
                "action_probs": torch.sigmoid(out.action_logits).numpy()}

    return run


def onnx_backend(path: str | os.PathLike) -> Backend:
    from evad.export.ort_session import OnnxRuntimeModel

    return OnnxRuntimeModel(path, providers=["CPUExecutionProvider"])


def detect(backend: Backend, data: ClipDataset, preset: Preset, batch: int = 4,
           person_threshold: float | None = None, keep_all_if_none: bool = True,
           progress: bool = False) -> list[tuple]:
    """AVA detection rows (video, t, box, action id, score) for every annotated keyframe.

    As the released evaluation: proposals with person score >= the threshold (the preset's,
    0.7) are detections, all of them if none passes; each contributes one row per class with the
    action probability as the score. Boxes are normalised by the unpadded image size; each
    keyframe's rows are listed by descending score (``by_score``).
    """
    from tqdm import tqdm

    thr = preset.person_threshold if person_threshold is None else person_threshold
    rows = []
    order = range(0, len(data), batch)
    for s in tqdm(order, desc="keyframes", unit="batch", disable=not progress):
        items = [data.__getitem__(i, flip=False) for i in range(s, min(len(data), s + batch))]
        clips = torch.stack([it[0] for it in items]).numpy()
        sizes = torch.stack([it[1] for it in items]).numpy().astype(np.int64)
        out = backend(clips, sizes)
        for j, i in enumerate(range(s, s + len(items))):
            kf = data.keyframes[i]
            h, w = sizes[j]
            keep = out["person_scores"][j] >= thr
            if not keep.any() and keep_all_if_none:
                keep[:] = True
            kf_rows = []
            for box, probs in zip(out["boxes"][j][keep], out["action_probs"][j][keep],
                                  strict=True):
                norm = (box / np.array([w, h, w, h], dtype=np.float64)).clip(0, 1)
                kf_rows.extend((kf.video, kf.timestamp, tuple(float(v) for v in norm), c + 1,
                                float(p)) for c, p in enumerate(probs))
            rows.extend(by_score(kf_rows, lambda r: r[4]))
    return rows


def write_rows(rows: list[tuple], path: str | os.PathLike) -> None:
    """AVA detection CSV (video, t, x1, y1, x2, y2, action, score), written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for video, t, (x1, y1, x2, y2), a, s in rows:
            f.write(f"{video},{t:g},{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},{a},{s:.6f}\n")
    os.replace(tmp, path)
