"""Pre-processing exactly as the model was trained (evad-architecture.md, "Pre-processing").

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
from evad.resize import resized_size

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["Preprocessor", "resized_size"]


def _ceil32(x: int) -> int:
    return (x + 31) // 32 * 32


@dataclass(frozen=True)
class Preprocessor:
    """Frames of one video -> model clips.

    Attributes:
        frame_size: (h, w) of the source frames, pixels.
        resized: (h, w) after the resize (= the model's ``image_size``), pixels.
        padded: (H, W) of the model input, pixels (multiples of 32).
        mean, std: per RGB channel, on the 0..1 scale.
    """

    frame_size: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

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
            model_name: how the error names the model.

        Raises:
            BackendError: the resized frame does not fit ``input_size``; the message says which
                ``--height`` / ``--width`` to export with.
        """
        h, w = frame_size
        if input_size is not None:
            # An export fixes the input; its short side wins when smaller than the preset's.
            short_side = min(short_side, *input_size)
        rh, rw = resized_size(h, w, short_side, max_long_side)
        if input_size is None:
            padded = (_ceil32(rh), _ceil32(rw))
        else:
            ih, iw = int(input_size[0]), int(input_size[1])
            if rh > ih or rw > iw:
                raise BackendError(
                    f"the video ({w}x{h}) resized to short side {short_side} is {rw}x{rh} "
                    f"(w x h), larger than {model_name}'s fixed input {iw}x{ih}: export it for "
                    f"this video with --height {_ceil32(rh)} --width {_ceil32(rw)}")
            padded = (ih, iw)
        return cls((h, w), (rh, rw), padded, tuple(mean), tuple(std))  # type: ignore[arg-type]

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
