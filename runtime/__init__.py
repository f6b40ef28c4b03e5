"""evad.runtime: a video in, per-person action detections out (``evad-trt-run``).

``video`` reads a container or frame directory with container timestamps, ``sampling`` picks
keyframes and their clips (T frames, every s-th), ``preprocess`` resizes and normalises,
``backends`` chooses the :class:`evad.runner.Runner` (TensorRT, ONNX Runtime, torch),
``postprocess`` thresholds and maps boxes
back, ``pipeline`` overlaps decoding (a thread) with inference, ``outputs`` writes the CSV, JSONL
and run record, ``render`` the annotated video. Nothing here imports torch unless the torch or
TensorRT backend is used.
"""

from evad.runtime.backends import open_runner
from evad.runtime.pipeline import RunStats, detect
from evad.runtime.preprocess import Preprocessor, resized_size
from evad.runtime.sampling import Keyframe, KeyframeSelector, clip_indices, select_keyframes
from evad.runtime.video import VideoInfo, iter_frames, open_video

__all__ = [
    "Keyframe",
    "KeyframeSelector",
    "Preprocessor",
    "RunStats",
    "VideoInfo",
    "clip_indices",
    "detect",
    "iter_frames",
    "open_runner",
    "open_video",
    "resized_size",
    "select_keyframes",
]
