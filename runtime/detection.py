"""The detection step, one batch of keyframe clips -> the people of each keyframe: the runner
runs the clips, ``keyframe_people`` applies the one person rule and maps boxes back to the
source frame. ``evad-trt-run`` (``pipeline.detect``), the Triton model and ``evad-eval --data``
all call :func:`detect_clips`, so they cannot disagree on thresholds, fallbacks or boxes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evad.preprocess import Preprocessor
from evad.runner import OUTPUT_ACTION_PROBS, OUTPUT_BOXES, OUTPUT_PERSON_SCORES, ModelSpec, Runner
from evad.runtime.postprocess import Person, keyframe_people

__all__ = ["PersonRule", "detect_clips"]


@dataclass(frozen=True)
class PersonRule:
    """Which proposals are people: person score >= ``threshold`` (a probability); with
    ``keep_all_if_none`` every proposal of a keyframe where none passes (the official
    evaluation's fallback)."""

    threshold: float
    keep_all_if_none: bool = False

    @classmethod
    def for_model(cls, spec: ModelSpec, threshold: float | None = None,
                  keep_all_if_none: bool = False) -> PersonRule:
        """The one threshold rule: ``threshold`` when given, else the model's (its metadata:
        0.7 for the released models)."""
        return cls(spec.person_threshold if threshold is None else float(threshold),
                   keep_all_if_none)


def detect_clips(runner: Runner, clips: np.ndarray, pres: Sequence[Preprocessor],
                 rule: PersonRule) -> tuple[list[list[Person]], float]:
    """Run a batch of keyframe clips and return each keyframe's people.

    Args:
        runner: the model.
        clips: (B, 3, T, H, W) float32, made by ``pres[b].clip``.
        pres: each clip's pre-processing (its resized size is the model's ``image_size``, its
            scale maps boxes back to the source frame).
        rule: which proposals are people.

    Returns:
        (people of each clip, most confident first; seconds the runner took).
    """
    size = np.array([pre.resized for pre in pres], np.int64).reshape(len(pres), 2)
    t = time.perf_counter()
    out = runner(clips, size)
    seconds = time.perf_counter() - t
    return [keyframe_people(out[OUTPUT_BOXES][b], out[OUTPUT_PERSON_SCORES][b],
                            out[OUTPUT_ACTION_PROBS][b], pre.scale, pre.frame_size,
                            rule.threshold, rule.keep_all_if_none)
            for b, pre in enumerate(pres)], seconds
