"""The one interface every inference backend offers, and the graph's input and output names.

A :class:`Runner` takes a batch of clips and returns the detector's outputs by name, as numpy
arrays, whatever runs underneath (the torch reference, ONNX Runtime, a TensorRT engine). The
runtime, ``evad-eval --data``, ``evad-parity`` and the benchmarks all call runners through it;
``evad.runtime.backends.open_runner`` is the one place that chooses one.

Inputs (the exported graph's, the engine's, the torch model's call):
    ``clip`` (B, 3, T, H, W) float32, normalised and zero padded to the input size;
    ``image_size`` (B, 2) int64, the unpadded (h, w) of each clip, input pixels.
Outputs:
    ``boxes`` (B, n, 4) float32 x1y1x2y2 in the unpadded input's pixels;
    ``person_scores`` (B, n) float32 person probabilities;
    ``action_probs`` (B, n, classes) float32, sigmoid applied;
    ``kept_idx_<block>`` (B, K) int64 per pruning block: the kept non-keyframe tokens in top-k
    order (what parity judges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from evad.errors import BackendError

__all__ = ["DETECTIONS", "INPUTS", "INPUT_CLIP", "INPUT_IMAGE_SIZE", "KEPT_IDX_PREFIX",
           "OUTPUT_ACTION_PROBS", "OUTPUT_BOXES", "OUTPUT_PERSON_SCORES", "ModelSpec", "Runner",
           "kept_blocks", "kept_idx_name"]

INPUT_CLIP = "clip"
INPUT_IMAGE_SIZE = "image_size"
INPUTS = (INPUT_CLIP, INPUT_IMAGE_SIZE)
OUTPUT_BOXES = "boxes"
OUTPUT_PERSON_SCORES = "person_scores"
OUTPUT_ACTION_PROBS = "action_probs"
#: the outputs a detection consumer reads
DETECTIONS = (OUTPUT_BOXES, OUTPUT_PERSON_SCORES, OUTPUT_ACTION_PROBS)
KEPT_IDX_PREFIX = "kept_idx_"


def kept_idx_name(block: int) -> str:
    """Output name of a pruning block's kept indices (``kept_idx_3``)."""
    return f"{KEPT_IDX_PREFIX}{block}"


def kept_blocks(outputs: dict[str, Any]) -> list[int]:
    """The pruning blocks whose kept indices ``outputs`` holds, in block order."""
    return sorted(int(k[len(KEPT_IDX_PREFIX):]) for k in outputs if k.startswith(KEPT_IDX_PREFIX))


@dataclass(frozen=True)
class ModelSpec:
    """The numbers a model was trained and exported with, as the runtime needs them.

    name: what the model is, for messages (``ONNX model exports/x.onnx``).
    input_size: fixed (H, W) input pixels of an export or engine; None for the torch reference.
    num_frames, frame_stride: the clip (16 frames, every 4th).
    short_side, max_long_side: resize targets, pixels.
    mean, std: normalisation, 0..1 scale, RGB.
    person_threshold: the official person score threshold.
    labels: action names, output i is action id i + 1.
    sha256: the model file's SHA-256 (what a resumed run checks), None for a model in memory.
    preset: the preset's name; trained_on: what the weights learnt from (``AVA v2.2 (80
    actions)``, ``synthetic stick-figure clips only``); synthetic_only: the demo model, which
    knows no real footage. patch_size, tubelet_size: token size (pixels, frames).
    """

    name: str
    input_size: tuple[int, int] | None
    num_frames: int
    frame_stride: int
    short_side: int
    max_long_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    person_threshold: float
    labels: list[str] = field(default_factory=list)
    sha256: str | None = None
    preset: str = ""
    trained_on: str = ""
    synthetic_only: bool = False
    patch_size: int = 16
    tubelet_size: int = 2

    def describe(self) -> str:
        """One line on what the model is: ``ONNX model x.onnx (preset demo, trained on ...)``."""
        parts = [f"preset {self.preset}" if self.preset else "",
                 f"trained on {self.trained_on}" if self.trained_on else ""]
        inner = ", ".join(p for p in parts if p)
        return f"{self.name} ({inner})" if inner else self.name

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], name: str,
                      sha256: str | None = None) -> ModelSpec:
        """From an artefact's evad metadata (ONNX ``evad.*`` props or an engine's sidecar).

        Raises:
            BackendError: a key is missing, of the wrong type or out of range (named).
        """
        def bad(key: str, why: str) -> BackendError:
            return BackendError(f"{name} has broken evad metadata: {key} {why}; re-export it "
                                "with evad-export")

        if not isinstance(meta, dict):
            raise bad("(all)", "is not a mapping")
        missing = [k for k in _SPEC_KEYS if k not in meta]
        if missing:
            raise bad(", ".join(missing), "missing")

        def count(key: str, lo: int = 1, hi: int = 1 << 16) -> int:
            v = meta[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise bad(key, f"= {v!r} is not an integer in {lo}..{hi}")
            return v

        size = meta["input_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16
                for v in size)):
            raise bad("input_size", f"= {size!r} is not two positive integers")

        def triple(key: str, positive: bool) -> tuple[float, float, float]:
            v = meta[key]
            ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                and (x > 0 or not positive) for x in v)
            if not ok:
                raise bad(key, f"= {v!r} is not three finite numbers"
                          + (" > 0" if positive else ""))
            return (float(v[0]), float(v[1]), float(v[2]))

        thr = meta["person_threshold"]
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1:
            raise bad("person_threshold", f"= {thr!r} is not a number in [0, 1]")
        labels = meta["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise bad("labels", "is not a list of names")
        preset = meta.get("preset_name", "")
        trained = meta.get("trained_on", "")
        if not isinstance(preset, str) or not isinstance(trained, str):
            raise bad("preset_name / trained_on", "is not text")
        # exports made before these keys: the demo preset was the only synthetic one
        synthetic = meta.get("synthetic_only", preset == "demo" and "random_seed" not in meta)
        stored = meta.get("preset")
        grid: dict[str, Any] = stored if isinstance(stored, dict) else {}
        patch, tubelet = grid.get("patch_size", 16), grid.get("tubelet_size", 2)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                   for v in (patch, tubelet)):
            raise bad("preset.patch_size / tubelet_size", "is not a positive integer")
        return cls(name, (size[0], size[1]), count("num_frames"), count("frame_stride"),
                   count("short_side"), count("max_long_side"), triple("mean", False),
                   triple("std", True), float(thr), labels, sha256, preset, trained,
                   bool(synthetic), patch, tubelet)


_SPEC_KEYS = ("input_size", "num_frames", "frame_stride", "short_side", "max_long_side",
              "mean", "std", "person_threshold", "labels")


@runtime_checkable
class Runner(Protocol):
    """A model that runs clips.

    name: which backend and device, for summaries (``ort (CPUExecutionProvider)``).
    spec: what the model expects (:class:`ModelSpec`).
    on_gpu: whether it computes on a GPU (the runtime's default batch size follows it).
    """

    name: str
    spec: ModelSpec
    on_gpu: bool

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 unpadded (h, w) -> every
        output by name (see the module docstring), numpy, batch B."""
        ...
