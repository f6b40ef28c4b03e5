"""Pre-processing, the clip path's last step: exactly as the model was trained (docs/model.md,
"Pre-processing"); the runtime, ``evad-eval --data``, training data, Triton and the token picture
all pre-process here, with the numbers of the model's ``ModelSpec`` (its metadata).

1. Resize so the short side is ``short_side`` and the long side at most ``max_long_side``,
   bilinear, sizes rounded with ``int(x + 0.5)``.
2. BGR -> RGB, ``(x / 255 - mean) / std``.
3. Layout (3, T, H, W), zero padded at the bottom/right (after normalisation) to the model's
   input: the export's fixed H x W, or the next multiples of 32 for the torch reference.
Boxes come back in the resized, unpadded image's pixels; ``Preprocessor.scale`` maps them to
the original frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evad.errors import BackendError
from evad.lazy import lazy_import
from evad.runner import ModelSpec

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["Preprocessor", "resized_size"]


def _ceil32(x: int) -> int:
    return (x + 31) // 32 * 32


def resized_size(height: int, width: int, short_side: int,
                 max_long_side: int) -> tuple[int, int]:
    """(h, w) after resizing a ``height`` x ``width`` frame: short side ``short_side`` unless
    the long side would then pass ``max_long_side`` (then long side = ``max_long_side``); sizes
    rounded with ``int(x + 0.5)`` as the released pre-processing."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_long_side:
        scale = max_long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class Preprocessor:
    """Frames of one video -> model clips.

    Attributes:
        frame_size: (h, w) of the source frames, pixels.
        resized: (h, w) after the resize (= the model's ``image_size``), pixels.
        padded: (H, W) of the model input, pixels (multiples of 32).
        mean, std: per RGB channel, on the 0..1 scale.
        wanted: (h, w) the model's resize rule asks for; larger than ``resized`` when a fixed
            input could not hold it and the frame was shrunk to fit, pixels.
    """

    frame_size: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    wanted: tuple[int, int] = (0, 0)

    @classmethod
    def create(cls, frame_size: tuple[int, int], short_side: int, max_long_side: int,
               mean: Sequence[float], std: Sequence[float],
               input_size: Sequence[int] | None = None, model_name: str = "the model"
               ) -> Preprocessor:
        """Fit a video to a model.

        Args:
            frame_size: (h, w) of the video, pixels.
            short_side, max_long_side: resize targets, pixels.
            mean, std: normalisation, 0..1 scale, RGB.
            input_size: the model's fixed (H, W) (an ONNX export or engine), or None (torch:
                pad to multiples of 32).
            model_name: how errors name the model.

        A frame that does not fit a fixed input at the model's size (a portrait video and a
        landscape export) is shrunk until it fits, aspect kept, as a letterbox would; ``note``
        says so in one line.

        Raises:
            BackendError: a frame size that is not positive.
        """
        h, w = frame_size
        if h < 1 or w < 1:
            raise BackendError(f"frames of {w}x{h} pixels cannot be resized for {model_name}")
        if input_size is not None:
            # An export fixes the input; its short side wins when smaller than the preset's.
            short_side = min(short_side, *input_size)
        rh, rw = wanted = resized_size(h, w, short_side, max_long_side)
        if input_size is None:
            padded = (_ceil32(rh), _ceil32(rw))
        else:
            ih, iw = int(input_size[0]), int(input_size[1])
            if rh > ih or rw > iw:
                fit = min(ih / h, iw / w)
                rh = max(1, min(ih, int(h * fit + 0.5)))
                rw = max(1, min(iw, int(w * fit + 0.5)))
            padded = (ih, iw)
        return cls((h, w), (rh, rw), padded, tuple(mean), tuple(std),  # type: ignore[arg-type]
                   wanted)

    @classmethod
    def for_model(cls, spec: ModelSpec, frame_size: Sequence[int]) -> Preprocessor:
        """Fit frames of ``frame_size`` (h, w) pixels to the model ``spec`` describes (its
        resize targets, normalisation and fixed input, if any): the one way every caller makes
        a ``Preprocessor``."""
        return cls.create((int(frame_size[0]), int(frame_size[1])), spec.short_side,
                          spec.max_long_side, spec.mean, spec.std, spec.input_size, spec.name)

    def note(self, model_name: str = "the model") -> str | None:
        """One line when the model sees these frames otherwise than the torch reference would:
        shrunk to fit a fixed input, or zero padded beyond the next multiples of 32 (the zero
        tokens take part in attention, so detections differ from ``--backend torch``'s on the
        same video); None when the clip is the reference's."""
        (h, w), (rh, rw), (ph, pw) = self.frame_size, self.resized, self.padded
        wh, ww = self.wanted if self.wanted != (0, 0) else self.resized
        export = f"export it for this video with --height {_ceil32(wh)} --width {_ceil32(ww)}"
        if (rh, rw) != (wh, ww):
            return (f"note: this {w}x{h} video at {model_name}'s resize is {ww}x{wh} (w x h), "
                    f"larger than its fixed input {pw}x{ph}: frames are shrunk to {rw}x{rh} and "
                    f"zero padded, so people look smaller than the model was trained on; "
                    f"{export}")
        if (ph, pw) == (_ceil32(rh), _ceil32(rw)):
            return None
        return (f"note: {model_name} has a fixed {pw}x{ph} input (w x h); this {w}x{h} video "
                f"resizes to {rw}x{rh} and is zero padded to it, where the torch reference "
                f"pads to {_ceil32(rw)}x{_ceil32(rh)}: the padding takes part in attention, so "
                f"detections differ from --backend torch's; {export} to match it")

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): multiply resized-image x, y by these to get source-frame pixels."""
        return self.frame_size[1] / self.resized[1], self.frame_size[0] / self.resized[0]

    def resize(self, frame_bgr: np.ndarray) -> np.ndarray:
        """(h, w, 3) BGR uint8 source frame -> (rh, rw, 3) RGB uint8, bilinear."""

        rh, rw = self.resized
        out = cv2.resize(frame_bgr, (rw, rh), interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)

    def clip(self, frames_rgb: Sequence[np.ndarray], out: np.ndarray | None = None
             ) -> np.ndarray:
        """T resized RGB frames -> (3, T, H, W) float32, normalised, zero padded.

        ``out`` (3, T, H, W) float32 is filled in place when given (a slot of a batch).
        """
        rh, rw = self.resized
        ph, pw = self.padded
        t = len(frames_rgb)
        if out is None:
            out = np.zeros((3, t, ph, pw), np.float32)
        else:
            out[:, :, rh:, :] = 0.0
            out[:, :, :rh, rw:] = 0.0
        mean = np.asarray(self.mean, np.float32)
        inv = 1.0 / (255.0 * np.asarray(self.std, np.float32))
        bias = mean / np.asarray(self.std, np.float32)
        for j, f in enumerate(frames_rgb):
            # (x / 255 - mean) / std == x * inv - bias, per channel; (h, w, 3) -> (3, h, w)
            out[:, j, :rh, :rw] = (f.astype(np.float32) * inv - bias).transpose(2, 0, 1)
        return out
