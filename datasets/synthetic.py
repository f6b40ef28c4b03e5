"""Procedural action clips: stick figures with limbs acting on textured, panning backgrounds.

Every video is a pure function of its seed: 1-4 actors, each performing a timeline of action
segments (a movement such as walk, run, jump, sit, crouch or spin, optionally with a hand action,
wave or carry), with occluding poles, scale change (actors walk towards or away from the camera)
and camera pan. Annotations follow the AVA CSV format at one keyframe per second: video id,
timestamp (s), x1, y1, x2, y2 (normalised), action id (1-based), person id.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evad.atomic import atomic_path, write_text_atomic
from evad.ava_csv import TruthRow, write_truth_csv_atomic
from evad.datasets import GENERATOR_VERSION
from evad.lazy import lazy_import
from evad.models.labels import SYNTHETIC_ACTIONS

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = [
    "ACTIONS",
    "GENERATOR_VERSION",
    "Actor",
    "Scene",
    "generate_dataset",
    "make_demo_video",
    "render_scene_video",
    "write_label_map",
]

ACTIONS: tuple[str, ...] = SYNTHETIC_ACTIONS
_ID = {name: i + 1 for i, name in enumerate(ACTIONS)}
_MOVES = ("stand", "walk", "run", "jump", "sit", "crouch", "spin")
# hand actions each movement allows ("stand" alone is not an action: it needs one)
_HANDS = {"stand": ("wave", "carry"), "walk": (None, "wave", "carry"), "run": (None, "carry"),
          "jump": (None, "wave"), "sit": (None, "wave"), "crouch": (None, "wave"),
          "spin": (None,)}


@dataclass
class Segment:
    start: float  # s
    move: str
    hand: str | None

    @property
    def labels(self) -> list[int]:
        ids = [] if self.move == "stand" else [_ID[self.move]]
        return ids + ([_ID[self.hand]] if self.hand else [])


@dataclass
class Actor:
    """One figure: feet position (x, y) in background pixels at t = 0, height in pixels."""

    x: float
    y: float
    height: float
    direction: int  # +1 right, -1 left
    growth: float  # relative height change per second (towards/away from the camera)
    color: tuple[int, int, int]
    segments: list[Segment] = field(default_factory=list)

    def segment(self, t: float) -> Segment:
        seg = self.segments[0]
        for s in self.segments:
            if s.start <= t:
                seg = s
        return seg


@dataclass
class Scene:
    seed: int
    width: int
    height: int
    fps: float
    duration: float
    background: np.ndarray  # (H + pad, W + pan, 3) uint8
    pan: float  # pixels per second
    actors: list[Actor]
    poles: list[tuple[float, float, int]]  # (x at t=0 in frame pixels, speed px/s, width px)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random texture with stripes and blobs: enough structure to need learning."""
    # muted, mid-tone backgrounds: the figures (saturated colours) must stay separable
    grey = rng.uniform(70, 170)
    base = grey + rng.uniform(-25, 25, size=3)
    small = rng.normal(0, 1, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(6, 16)
    img += base
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(2, 5)):
        ang, freq = rng.uniform(0, math.pi), rng.uniform(0.01, 0.06)
        amp = rng.uniform(5, 20)
        img += (amp * np.sin(freq * (xx * math.cos(ang) + yy * math.sin(ang))))[..., None]
    for _ in range(rng.integers(1, 5)):
        c = tuple(float(v) for v in grey + rng.uniform(-50, 50, size=3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(20, 120)),
                                      y0 + int(rng.integers(20, 120))), c, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _actor_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour, very dark or very bright: figures contrast with the background."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(180, 256),
                      rng.choice([rng.integers(20, 60), rng.integers(210, 256)])]]], np.uint8)
    b, g, r = (int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r


def make_scene(seed: int, width: int = 640, height: int = 360, fps: float = 15.0,
               duration: float = 12.0) -> Scene:
    """The scene of one video (everything random is drawn here, from ``seed``)."""
    rng = np.random.default_rng(seed)
    pan = float(rng.choice([0.0, rng.uniform(-30, 30)]))
    bg = _texture(rng, height, width + int(abs(pan) * duration) + 2)
    actors = []
    for _ in range(int(rng.integers(1, 5))):
        h = float(rng.uniform(0.4, 0.7) * height)
        segs, t = [], 0.0
        while t < duration:
            move = str(rng.choice(_MOVES))
            hand = rng.choice(_HANDS[move])
            segs.append(Segment(t, move, None if hand is None else str(hand)))
            t += float(rng.uniform(3.0, 6.0))
        actors.append(Actor(
            x=float(rng.uniform(0.1, 0.9) * width), y=float(rng.uniform(0.75, 0.98) * height),
            height=h, direction=int(rng.choice([-1, 1])), growth=float(rng.uniform(-0.04, 0.04)),
            color=_actor_colour(rng), segments=segs))
    poles = [(float(rng.uniform(0, width)), float(rng.uniform(-60, 60)), int(rng.integers(8, 25)))
             for _ in range(int(rng.integers(0, 3)))]
    return Scene(seed, width, height, fps, duration, bg, pan, actors, poles)


_SPEED = {"walk": 0.45, "run": 1.3}  # body heights per second
BOX_MARGIN = 0.08  # person-box margin on every side, in figure heights


def _position(a: Actor, t: float, width: int) -> tuple[float, float, float]:
    """Feet x, y and height at time t (movement integrated over the segments, bouncing at the
    frame edges)."""
    x = a.x
    for i, s in enumerate(a.segments):
        end = a.segments[i + 1].start if i + 1 < len(a.segments) else math.inf
        if s.start >= t:
            break
        x += a.direction * _SPEED.get(s.move, 0.0) * a.height * (min(t, end) - s.start)
    span = 2 * width
    x = x % span
    x = x if x <= width else span - x  # bounce: walk back after leaving
    h = a.height * (1.0 + a.growth * t)
    return x, a.y + 0.25 * a.height * a.growth * t, h


def _skeleton(move: str, hand: str | None, phase: float, h: float) -> dict[str, tuple]:
    """Joint offsets (dx, dy) from the feet point, y up negative, in pixels, for one pose."""
    def at(ang: float, length: float) -> tuple[float, float]:
        return math.sin(ang) * length, math.cos(ang) * length

    thigh, shin, torso, upper, fore = 0.25 * h, 0.25 * h, 0.3 * h, 0.15 * h, 0.15 * h
    hip_y, lean, swing, arm_swing, bend = -(thigh + shin), 0.0, 0.0, 0.0, 0.0
    lift = 0.0
    w = 2 * math.pi * phase
    if move == "walk":
        swing, arm_swing = 0.45 * math.sin(w * 1.5), -0.4 * math.sin(w * 1.5)
    elif move == "run":
        swing, arm_swing, lean, bend = 0.8 * math.sin(w * 3), -0.8 * math.sin(w * 3), 0.25, 0.9
    elif move == "jump":
        lift = 0.35 * h * abs(math.sin(w * 0.8))
        bend = 1.2 * abs(math.sin(w * 0.8))
    elif move == "sit":
        hip_y, swing = -shin, 0.0
    elif move == "crouch":
        hip_y, lean, bend = -0.45 * (thigh + shin), 0.5, 2.0
    squash = math.cos(w * 1.2) if move == "spin" else 1.0
    hip = (0.0, hip_y - lift)
    neck = (hip[0] + math.sin(lean) * torso, hip[1] - math.cos(lean) * torso)
    head = (neck[0], neck[1] - 0.09 * h)

    def leg(side: int) -> tuple[tuple, tuple]:
        if move == "sit":
            knee = (hip[0] + side * 0.05 * h + thigh, hip[1])
            return knee, (knee[0], knee[1] + shin)
        a = side * swing
        dx, dy = at(a - 0.3 * bend * (1 if side > 0 else 0.6), thigh)
        knee = (hip[0] + dx * squash, hip[1] + dy)
        dx2, dy2 = at(a + 0.6 * bend, shin)
        return knee, (knee[0] - dx2 * 0.3 * squash, knee[1] + dy2)

    def arm(side: int) -> tuple[tuple, tuple]:
        if move == "spin":
            return ((neck[0] + side * upper * squash, neck[1]),
                    (neck[0] + side * (upper + fore) * squash, neck[1]))
        if hand == "carry":
            elbow = (neck[0] + 0.6 * upper, neck[1] + 0.8 * upper)
            return elbow, (elbow[0] + fore, elbow[1] - 0.1 * fore)
        if hand == "wave" and side > 0:
            elbow = (neck[0] + 0.7 * upper, neck[1] - 0.7 * upper)
            ang = math.pi + 0.5 * math.sin(w * 2.5)
            dx, dy = at(ang, fore)
            return elbow, (elbow[0] + dx, elbow[1] + dy)
        a = side * arm_swing + (0.5 if move == "jump" else 0.0) * side
        dx, dy = at(a, upper)
        elbow = (neck[0] + dx, neck[1] + dy)
        dx2, dy2 = at(a + 0.4 * bend, fore)
        return elbow, (elbow[0] + dx2, elbow[1] + dy2)

    kl, fl = leg(-1)
    kr, fr = leg(1)
    el, hl = arm(-1)
    er, hr = arm(1)
    return {"hip": hip, "neck": neck, "head": head, "kl": kl, "fl": fl, "kr": kr, "fr": fr,
            "el": el, "hl": hl, "er": er, "hr": hr}


def _draw_actor(frame: np.ndarray, a: Actor, t: float, width: int) -> tuple[float, ...]:
    """Draw one actor at time t; returns its person box (x1, y1, x2, y2) in frame pixels."""
    x, y, h = _position(a, t, width)
    seg = a.segment(t)
    j = _skeleton(seg.move, seg.hand, t, h)
    flip = -a.direction if seg.move in ("walk", "run") else 1
    pts = {k: (x + flip * dx, y + dy) for k, (dx, dy) in j.items()}
    thick = max(3, int(0.11 * h))
    col = a.color
    dark = tuple(int(c * 0.6) for c in col)

    def line(p: str, q: str, c=col) -> None:
        cv2.line(frame, (int(pts[p][0]), int(pts[p][1])), (int(pts[q][0]), int(pts[q][1])), c,
                 thick, cv2.LINE_AA)

    for p, q in (("hip", "kl"), ("kl", "fl"), ("neck", "el"), ("el", "hl")):
        line(p, q, dark)
    line("hip", "neck")
    for p, q in (("hip", "kr"), ("kr", "fr"), ("neck", "er"), ("er", "hr")):
        line(p, q)
    r = max(4, int(0.1 * h))
    cv2.circle(frame, (int(pts["head"][0]), int(pts["head"][1])), r, col, -1, cv2.LINE_AA)
    if seg.hand == "carry":
        cx, cy = pts["hr"]
        s = int(0.22 * h)  # a parcel a third of the body high: visible at the demo's 128 px
        cv2.rectangle(frame, (int(cx), int(cy - s)), (int(cx + flip * 1.4 * s), int(cy + s // 2)),
                      (200 - col[0] // 2, 120, 60 + col[2] // 3), -1)
    xs = [p[0] for p in pts.values()]
    ys = [p[1] for p in pts.values()] + [pts["head"][1] - r]
    # The box is the figure's extent plus a margin of BOX_MARGIN heights, loose like AVA's
    # annotated boxes: a tight box round a side-on stick figure is a few pixels wide, which
    # would make IoU 0.5 a test of sub-pixel precision rather than of finding the person.
    pad = thick / 2 + BOX_MARGIN * h
    return (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)


def render_frame(scene: Scene, index: int) -> tuple[np.ndarray, list[tuple[int, tuple, list]]]:
    """Frame ``index`` (BGR uint8, H x W x 3) and its actors: (person id, box, labels)."""
    t = index / scene.fps
    off = int(round(abs(scene.pan) * t)) if scene.pan >= 0 else int(
        round(abs(scene.pan) * (scene.duration - t)))
    frame = np.ascontiguousarray(scene.background[:, off:off + scene.width])
    people = []
    order = sorted(range(len(scene.actors)), key=lambda i: scene.actors[i].y)  # far first
    for i in order:
        a = scene.actors[i]
        box = _draw_actor(frame, a, t, scene.width)
        people.append((i, box, a.segment(t).labels))
    for x0, speed, w in scene.poles:
        px = int((x0 + speed * t) % (scene.width + 60)) - 30
        cv2.rectangle(frame, (px, 0), (px + w, scene.height), (70, 70, 70), -1)
    return frame, sorted(people)


def _visible(box: tuple, width: int, height: int) -> tuple[tuple, float]:
    x1, y1, x2, y2 = box
    cx1, cy1 = max(0.0, x1), max(0.0, y1)
    cx2, cy2 = min(width - 1.0, x2), min(height - 1.0, y2)
    area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    vis = max(0.0, cx2 - cx1) * max(0.0, cy2 - cy1)
    return (cx1, cy1, cx2, cy2), vis / area if area > 0 else 0.0


def render_scene_video(scene: Scene, path: str | os.PathLike, video_id: str) -> list[TruthRow]:
    """Write the scene as an mp4 (mp4v; whole or not at all) and return its AVA ground-truth
    rows: one per person and action at every whole second from 1 to duration - 1, the box
    normalised by the frame size; people less than 40% visible are left out.

    Raises:
        RuntimeError: OpenCV cannot write mp4v video here.
    """
    n = int(round(scene.duration * scene.fps))
    rows: list[TruthRow] = []
    keyframes = {int(round(s * scene.fps)): s for s in range(1, int(scene.duration))}
    with atomic_path(path, ".tmp.mp4") as tmp:  # OpenCV picks the container from the suffix
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), scene.fps,
                                 (scene.width, scene.height))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write mp4v video here")
        try:
            for i in range(n):
                frame, people = render_frame(scene, i)
                writer.write(frame)
                if i in keyframes:
                    for pid, box, labels in people:
                        (x1, y1, x2, y2), vis = _visible(box, scene.width, scene.height)
                        if vis < 0.4 or not labels:
                            continue
                        norm = (x1 / scene.width, y1 / scene.height, x2 / scene.width,
                                y2 / scene.height)
                        rows.extend((video_id, keyframes[i], norm, a, pid) for a in labels)
        finally:
            writer.release()
    return rows


def write_label_map(path: str | os.PathLike) -> None:
    """The label map in AVA's pbtxt format (``item { name: "walk" id: 1 }``)."""
    write_text_atomic(path, "".join(f'item {{\n  name: "{n}"\n  id: {i + 1}\n}}\n'
                                    for i, n in enumerate(ACTIONS)))


def generate_dataset(out: str | os.PathLike, num_videos: int, seed: int = 0,
                     width: int = 640, height: int = 360, fps: float = 15.0,
                     duration: float = 12.0, progress: bool = True) -> Path:
    """Write ``num_videos`` videos (seeds ``seed`` .. ``seed + num_videos - 1``), their AVA CSV
    ``annotations.csv`` and ``label_map.pbtxt`` into ``out``. Deterministic in ``seed``."""
    from tqdm import tqdm

    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in tqdm(range(num_videos), desc="videos", disable=not progress):
        vid = f"syn{seed + k:06d}"
        scene = make_scene(seed + k, width, height, fps, duration)
        rows += render_scene_video(scene, out / "videos" / f"{vid}.mp4", vid)
    write_truth_csv_atomic(rows, out / "annotations.csv")
    write_label_map(out / "label_map.pbtxt")
    return out


DEMO_SEED = 424242  # the demo video's scene: never among the training seeds (0 .. 10**5)


def make_demo_video(path: str | os.PathLike, duration: float = 20.0) -> Path:
    """Write the demo video (640x360, 15 fps, ``duration`` s; a held-out scene) and its AVA
    ground truth beside it (``<stem>.csv``). Deterministic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = make_scene(DEMO_SEED, duration=duration)
    write_truth_csv_atomic(render_scene_video(scene, path, path.stem), path.with_suffix(".csv"))
    return path
