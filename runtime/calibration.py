"""Calibration clips for the INT8 export: the keyframes a ``CalibrationPlan`` chose, decoded
and pre-processed by the runtime's own ``ClipProducer``, so the quantizer sees exactly the clips
``evad-trt-run`` feeds the model (the one clip path; ``evad.export.int8`` plans and quantizes,
this module only produces)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from evad.errors import VideoError
from evad.export.int8 import CALIBRATION_STRIDE_S, CalibrationPlan
from evad.preprocess import Preprocessor
from evad.runner import ModelSpec
from evad.runtime.pipeline import ClipProducer
from evad.video import open_video

__all__ = ["calibration_clips"]


def calibration_clips(plan: CalibrationPlan, spec: ModelSpec
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``plan``'s clips for the model ``spec`` describes, in plan order: (clip (1, 3, T, H, W)
    float32 normalised and padded, image_size (1, 2) int64 resized unpadded (h, w)).

    Each video is decoded once, keyframes every ``CALIBRATION_STRIDE_S`` seconds, and only the
    chosen ones are assembled; decoding stops after the last one."""
    for path, wanted in plan.picks:
        info = open_video(path)
        pre = Preprocessor.for_model(spec, (info.height, info.width))
        size = np.array([pre.resized], np.int64)
        left = set(wanted)
        # the keyframes not asked for are skipped (never assembled); those past the video's end
        # settle on its last frame, as the selector settles any time past the end
        skip = set(range(max(wanted) + 1)) - left
        producer = ClipProducer(info, pre, CALIBRATION_STRIDE_S, spec.num_frames,
                                spec.frame_stride, skip=skip)
        producer.start()
        try:
            for kf, clip in producer.clips():
                if kf.index not in left:
                    continue
                left.discard(kf.index)
                yield clip[None], size
                if not left:
                    break
        finally:
            producer.stop()
        if left:
            raise VideoError(f"calibration video {path} ended before its keyframes "
                             f"{sorted(left)} (one each {CALIBRATION_STRIDE_S:g} s): was it "
                             "changed while calibrating?")
