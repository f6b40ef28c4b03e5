"""evad.runtime: a video in, per-person action detections out (``evad-trt-run``).

The clip path it reads with lives in the core, shared with datasets, evaluation and serving:
``evad.video`` reads a container, frame directory or live source with its timestamps,
``evad.sampling`` picks keyframes and their clips (T frames, every s-th), ``evad.preprocess``
resizes and normalises. Here ``backends`` chooses the :class:`evad.runner.Runner` (TensorRT,
ONNX Runtime, OpenVINO, torch), ``detection`` runs a batch of clips and keeps the people
(``postprocess`` thresholds and maps boxes back), ``pipeline`` overlaps decoding (a thread)
with inference, ``outputs`` makes the CSV and JSONL records inside ``staging``'s transaction
(nothing in place until a run completes), ``render`` the annotated video. ``source`` classifies
an input once (a file, frame folder, live source or a job of many videos), ``video_run`` runs
one video into one folder, ``job`` and ``ray_job`` run jobs of many. Nothing here imports
torch unless the torch or TensorRT backend is used.
"""

from evad.runtime.backends import open_runner
from evad.runtime.detection import PersonRule, detect_clips
from evad.runtime.pipeline import RunStats, detect

__all__ = ["PersonRule", "RunStats", "detect", "detect_clips", "open_runner"]
