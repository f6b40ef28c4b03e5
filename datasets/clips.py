"""Training clips from a folder of videos and an AVA CSV: the preset's ``num_frames`` frames
``frame_stride`` apart around each annotated keyframe (16 x 4 for the released presets),
pre-processed exactly as at inference (docs/model.md, "Pre-processing")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from evad.datasets.ava import Keyframe, read_ava_csv
from evad.errors import EvadError
from evad.lazy import lazy_import
from evad.models.presets import Preset
from evad.resize import resized_size

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["ClipDataset", "collate", "decode_video", "resized_size"]


def decode_video(path: str | os.PathLike, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """All frames of a video, resized to ``size`` (h, w) bilinear, RGB uint8 (F, h, w, 3), and
    its frame rate."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EvadError(f"OpenCV cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames or fps <= 0:
        raise EvadError(f"video {path} has no frames or no frame rate")
    return np.stack(frames), fps


class ClipDataset(torch.utils.data.Dataset):
    """Annotated keyframes of ``root`` (``videos/<id>.mp4`` + ``annotations.csv``) as
    pre-processed clips with person boxes and multi-hot actions.

    Item: (clip (3, T, H, W) float32 normalised and padded to multiples of 32, image_size (2,)
    int64 unpadded (h, w), boxes (P, 4) float32 x1y1x2y2 in resized pixels, actions (P, C)).
    """

    def __init__(self, root: str | os.PathLike, preset: Preset, flip: bool = False,
                 annotations: str = "annotations.csv", seed: int = 0) -> None:
        root = Path(root)
        self.preset, self.flip = preset, flip
        self.rng = np.random.default_rng(seed)  # horizontal flips
        self.keyframes: list[Keyframe] = list(read_ava_csv(root / annotations).values())
        # Only the frames some clip samples are kept (about half of them at the demo's 8 x 2
        # sampling of 15 fps video), so a large training set fits in memory; ``slot`` maps a
        # video's frame index to its row in ``frames`` (-1: not kept).
        self.frames: dict[str, np.ndarray] = {}
        self.slot: dict[str, np.ndarray] = {}
        self.fps: dict[str, float] = {}
        by_video: dict[str, list[Keyframe]] = {}
        for kf in self.keyframes:
            by_video.setdefault(kf.video, []).append(kf)
        for video in sorted(by_video):
            path = root / "videos" / f"{video}.mp4"
            cap = cv2.VideoCapture(str(path))
            h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            cap.release()
            if h <= 0 or w <= 0:
                raise EvadError(f"OpenCV cannot open video {path}")
            size = resized_size(h, w, preset.short_side, preset.max_long_side)
            frames, fps = decode_video(path, size)
            used = np.unique(np.concatenate(
                [self._frame_indices(kf.timestamp, fps, len(frames)) for kf in by_video[video]]))
            slot = np.full(len(frames), -1, dtype=np.int64)
            slot[used] = np.arange(len(used))
            self.frames[video], self.slot[video], self.fps[video] = frames[used], slot, fps
        self.mean = np.array(preset.mean, dtype=np.float32) * 255
        self.std = np.array(preset.std, dtype=np.float32) * 255

    def _frame_indices(self, timestamp: float, fps: float, count: int) -> np.ndarray:
        """The clip's ``num_frames`` frame indices, ``frame_stride`` apart round the keyframe at
        ``timestamp`` seconds, clamped to the video's ``count`` frames."""
        p = self.preset
        centre = int(round(timestamp * fps))
        return np.clip(centre + p.frame_stride * (np.arange(p.num_frames) - p.num_frames // 2),
                       0, count - 1)

    def __len__(self) -> int:
        return len(self.keyframes)

    def __getitem__(self, i: int, flip: bool | None = None):
        p, kf = self.preset, self.keyframes[i]
        slot = self.slot[kf.video]
        idx = slot[self._frame_indices(kf.timestamp, self.fps[kf.video], len(slot))]
        clip = (self.frames[kf.video][idx].astype(np.float32) - self.mean) / self.std  # (T,h,w,3)
        t, h, w, _ = clip.shape
        boxes = np.array(kf.boxes, dtype=np.float32).reshape(-1, 4) * np.float32([w, h, w, h])
        if flip if flip is not None else (self.flip and self.rng.random() < 0.5):
            clip = clip[:, :, ::-1]
            boxes = np.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), 1)
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        out = np.zeros((3, t, hp, wp), dtype=np.float32)
        out[:, :, :h, :w] = clip.transpose(3, 0, 1, 2)
        return (torch.from_numpy(out), torch.tensor([h, w]), torch.from_numpy(boxes),
                torch.from_numpy(kf.multi_hot(p.num_classes)))


def collate(items):
    clips, sizes, boxes, actions = zip(*items, strict=True)
    return torch.stack(clips), torch.stack(sizes), list(boxes), list(actions)
