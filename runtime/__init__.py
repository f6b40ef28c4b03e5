"""evad.runtime: a video in, per-person action detections out (``evad-trt-run``).

``video`` reads a container or frame directory with container timestamps, ``sampling`` picks
keyframes and their 16 x 4 clips, ``preprocess`` resizes and normalises, ``backends`` runs
TensorRT / ONNX Runtime / torch behind one interface, ``postprocess`` thresholds and maps boxes
back, ``pipeline`` overlaps decoding (a thread) with inference, ``outputs`` writes the CSV, JSONL
and run record, ``render`` the annotated video. Nothing here imports torch unless the torch or
TensorRT backend is used.
"""

from evad.runtime.backends import ModelSpec, create_backend
from evad.runtime.pipeline import RunStats, detect
from evad.runtime.preprocess import Preprocessor, resized_size
from evad.runtime.sampling import Keyframe, KeyframeSelector, clip_indices, select_keyframes
from evad.runtime.video import VideoInfo, iter_frames, open_video

__all__ = [
    "Keyframe",
    "KeyframeSelector",
    "ModelSpec",
    "Preprocessor",
    "RunStats",
    "VideoInfo",
    "clip_indices",
    "create_backend",
    "detect",
    "iter_frames",
    "open_video",
    "resized_size",
    "select_keyframes",
]
