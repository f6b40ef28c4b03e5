"""Training and evaluation clips from a folder of videos and an AVA CSV, made by the one clip
path of the core (``evad.video`` -> ``evad.sampling`` -> ``evad.preprocess``), so a keyframe's
clip here is the one ``evad-trt-run`` makes for the same video and model: the same decoded
frames with their container times, the same keyframe -> frame rule and clamp, the same resize,
normalisation and padding to the model's input (docs/model.md, "Pre-processing")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evad.datasets.ava import read_ava_csv
from evad.lazy import lazy_import
from evad.models.presets import Preset, model_spec
from evad.preprocess import Preprocessor
from evad.runner import ModelSpec
from evad.sampling import clip_indices, frame_at
from evad.video import iter_frames, open_video

if TYPE_CHECKING:
    import torch
else:  # evad-eval --data with an ONNX model runs without torch; training loads it
    torch = lazy_import("torch", "pip install torch")

__all__ = ["ClipDataset", "collate"]


class ClipDataset:
    """Annotated keyframes of ``root`` (``videos/<id>.mp4`` + ``annotations.csv``) as
    pre-processed clips with person boxes and multi-hot actions: a map-style dataset for
    ``torch.utils.data.DataLoader`` (items are torch tensors), and numpy clips (``clip``)
    without torch.

    Args:
        root: the dataset folder.
        model: the model the clips are for: its ``ModelSpec`` (an export's fixes the input
            size) or a ``Preset`` (the torch model: padded to multiples of 32).
        flip: random horizontal flips (training).
        annotations: the CSV's name in ``root``.
        seed: the flips' random seed.

    Item: (clip (3, T, H, W) float32 normalised and zero padded to the model's input,
    image_size (2,) int64 resized unpadded (h, w), boxes (P, 4) float32 x1y1x2y2 in resized
    pixels, actions (P, C) multi-hot float32).
    """

    def __init__(self, root: str | os.PathLike, model: ModelSpec | Preset, flip: bool = False,
                 annotations: str = "annotations.csv", seed: int = 0) -> None:
        root = Path(root)
        self.spec = model if isinstance(model, ModelSpec) else model_spec(model, str(root))
        self.num_classes = (model.num_classes if isinstance(model, Preset)
                            else len(self.spec.labels))
        self.flip = flip
        self.rng = np.random.default_rng(seed)  # horizontal flips
        self.keyframes = list(read_ava_csv(root / annotations).values())
        # Only the frames some clip samples are kept (about half of them at the demo's 8 x 2
        # sampling of 15 fps video), so a large training set fits in memory; ``slot`` maps a
        # video's frame index to its row in ``frames`` (-1: not kept), ``centre`` a keyframe
        # to its frame.
        self.frames: dict[str, np.ndarray] = {}
        self.slot: dict[str, np.ndarray] = {}
        self.pre: dict[str, Preprocessor] = {}
        self.centre: list[int] = [0] * len(self.keyframes)
        by_video: dict[str, list[int]] = {}
        for i, kf in enumerate(self.keyframes):
            by_video.setdefault(kf.video, []).append(i)
        for video in sorted(by_video):
            info = open_video(root / "videos" / f"{video}.mp4")
            pre = Preprocessor.for_model(self.spec, (info.height, info.width))
            times: list[float] = []
            resized: list[np.ndarray] = []
            for _, t, frame in iter_frames(info):
                times.append(t)
                resized.append(pre.resize(frame))
            used: set[int] = set()
            for i in by_video[video]:
                self.centre[i] = frame_at(times, self.keyframes[i].timestamp)
                used.update(self._indices(i, len(times)))
            kept = sorted(used)
            slot = np.full(len(times), -1, dtype=np.int64)
            slot[kept] = np.arange(len(kept))
            self.frames[video] = np.stack([resized[j] for j in kept])
            self.slot[video], self.pre[video] = slot, pre

    def _indices(self, i: int, count: int) -> list[int]:
        """Keyframe ``i``'s clip: frame indices in a video of ``count`` frames."""
        return clip_indices(self.centre[i], self.spec.num_frames, self.spec.frame_stride, count)

    def __len__(self) -> int:
        return len(self.keyframes)

    def clip(self, i: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Keyframe ``i``'s clip (3, T, H, W) float32 and its person boxes (P, 4) float32
        x1y1x2y2 in resized pixels, mirrored left-right when ``flip``."""
        kf = self.keyframes[i]
        pre, slot = self.pre[kf.video], self.slot[kf.video]
        frames = [self.frames[kf.video][slot[j]] for j in self._indices(i, len(slot))]
        h, w = pre.resized
        boxes = np.array(kf.boxes, dtype=np.float32).reshape(-1, 4) * np.float32([w, h, w, h])
        if flip:
            frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
            boxes = np.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), 1)
        return pre.clip(frames), boxes

    def __getitem__(self, i: int, flip: bool | None = None):
        flip = flip if flip is not None else (self.flip and self.rng.random() < 0.5)
        clip, boxes = self.clip(i, flip)
        pre = self.pre[self.keyframes[i].video]
        return (torch.from_numpy(clip), torch.tensor(pre.resized), torch.from_numpy(boxes),
                torch.from_numpy(self.keyframes[i].multi_hot(self.num_classes)))


def collate(items):
    """A DataLoader batch: clips (B, 3, T, H, W), image sizes (B, 2), and the boxes and
    multi-hot actions of each item as lists (their person counts differ)."""
    clips, sizes, boxes, actions = zip(*items, strict=True)
    return torch.stack(clips), torch.stack(sizes), list(boxes), list(actions)
