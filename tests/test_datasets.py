"""The procedural action clips: determinism, valid AVA annotations, readable videos."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import torch

from evad.datasets.ava import read_ava_csv, read_label_map
from evad.datasets.clips import ClipDataset, collate
from evad.datasets.synthetic import ACTIONS, generate_dataset, make_scene, render_frame
from evad.models import get_preset
from evad.preprocess import resized_size


def test_scene_and_frames_are_deterministic() -> None:
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    fa, pa = render_frame(a, 40)
    fb, pb = render_frame(b, 40)
    assert np.array_equal(fa, fb) and pa == pb
    assert not np.array_equal(fa, render_frame(c, 40)[0])
    assert fa.shape == (360, 640, 3) and fa.dtype == np.uint8


def test_generated_dataset(tmp_path) -> None:
    root = generate_dataset(tmp_path / "d", 3, seed=11, duration=5.0, progress=False)
    again = generate_dataset(tmp_path / "e", 3, seed=11, duration=5.0, progress=False)
    rows = list(csv.reader(open(root / "annotations.csv")))
    assert rows == list(csv.reader(open(again / "annotations.csv")))  # deterministic
    assert rows, "no annotations"
    for video, ts, x1, y1, x2, y2, action, person in rows:
        assert video.startswith("syn") and float(ts) in (1.0, 2.0, 3.0, 4.0)
        x1, y1, x2, y2 = map(float, (x1, y1, x2, y2))
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert 1 <= int(action) <= len(ACTIONS) and int(person) >= 0
    frames = read_ava_csv(root / "annotations.csv")
    for kf in frames.values():  # one box per person, several actions allowed
        assert len(set(kf.ids)) == len(kf.ids)
        assert all(acts for acts in kf.actions)
    assert read_label_map(root / "label_map.pbtxt") == {i + 1: n for i, n in enumerate(ACTIONS)}
    cap = cv2.VideoCapture(str(root / "videos" / "syn000011.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == 15.0
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 75
    ok, frame = cap.read()
    assert ok and frame.shape == (360, 640, 3)


def decode_video(path, size):
    """Every frame resized to ``size`` (h, w) bilinear, RGB, and the frame rate: the test's own
    decoder, independent of the clip path's."""
    cap = cv2.VideoCapture(str(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames), fps


def test_clip_dataset_preprocessing(tmp_path) -> None:
    root = generate_dataset(tmp_path / "d", 1, seed=3, duration=4.0, progress=False)
    p = get_preset("demo")
    ds = ClipDataset(root, p)
    assert resized_size(360, 640, 128, 1333) == (128, 228)
    clip, size, boxes, actions = ds.__getitem__(0, flip=False)
    t = p.num_frames
    assert clip.shape == (3, t, 128, 256) and size.tolist() == [128, 228]
    # frame j is the decoded frame keyframe + frame_stride * (j - T // 2), normalised
    kf = ds.keyframes[0]
    frames, fps = decode_video(root / "videos" / f"{kf.video}.mp4", (128, 228))
    centre = round(kf.timestamp * fps)
    # only frames some clip samples are held: 3 keyframes x 8 frames of the 60
    assert len(frames) == 60 and len(ds.frames[kf.video]) == 3 * t
    for j in (0, t // 2, t - 1):
        want = (frames[centre + p.frame_stride * (j - t // 2)].astype(np.float32)
                - np.float32(p.mean) * 255) / (np.float32(p.std) * 255)
        np.testing.assert_allclose(clip[:, j, :, :228].permute(1, 2, 0).numpy(), want,
                                   rtol=0, atol=1e-5)
    assert float(clip[:, :, :, 228:].abs().max()) == 0.0  # zero padding after normalisation
    assert actions.shape == (len(boxes), 8) and bool((actions.sum(1) >= 1).all())
    assert float(boxes[:, 2].max()) <= 228 and float(boxes[:, 0].min()) >= 0
    flipped, _, fboxes, _ = ds.__getitem__(0, flip=True)
    torch.testing.assert_close(flipped[:, :, :, :228], clip[:, :, :, :228].flip(-1))
    torch.testing.assert_close(fboxes[:, 0], 228 - boxes[:, 2])
    batch = collate([ds[0], ds[1]])
    assert batch[0].shape == (2, 3, t, 128, 256) and len(batch[2]) == 2
