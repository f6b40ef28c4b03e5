"""evad.runtime without a model: sampling, timestamps, pre/post-processing, video errors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from evad.ava_csv import format_time
from evad.errors import BackendError, EvadError, VideoError
from evad.preprocess import Preprocessor, resized_size
from evad.runtime.outputs import DetectionWriter
from evad.runtime.postprocess import keyframe_people, short_label
from evad.sampling import (
    Keyframe,
    KeyframeSelector,
    clip_indices,
    clip_offsets,
    expected_keyframes,
    frame_at,
)
from evad.video import iter_frames, open_video


def select_keyframes(times_s, stride_s):
    """Every keyframe the streaming selector settles for frames at ``times_s``."""
    sel = KeyframeSelector(stride_s)
    return [kf for i, t in enumerate(times_s) for kf in sel.push(i, t)]

# -- clip sampling ---------------------------------------------------------------------------


def test_clip_offsets_put_the_keyframe_at_index_8():
    offs = clip_offsets(16, 4)
    assert offs == list(range(-32, 32, 4))
    assert offs[8] == 0


def test_clip_indices_repeat_the_first_frame_at_the_start():
    assert clip_indices(0, 16, 4, 1000) == [0] * 9 + [4, 8, 12, 16, 20, 24, 28]
    assert clip_indices(10, 16, 4, 1000) == [0] * 6 + [2, 6, 10, 14, 18, 22, 26, 30, 34, 38]


def test_clip_indices_repeat_the_last_frame_at_the_end():
    assert clip_indices(99, 16, 4, 100) == [67, 71, 75, 79, 83, 87, 91, 95, 99] + [99] * 7
    assert clip_indices(97, 16, 4, 100) == [65, 69, 73, 77, 81, 85, 89, 93, 97] + [99] * 7


@pytest.mark.parametrize("total", [1, 5, 20, 63])
def test_clip_indices_short_video(total):
    for center in range(total):
        idx = clip_indices(center, 16, 4, total)
        assert len(idx) == 16 and idx[8] == center
        assert all(0 <= i < total for i in idx)
        assert idx == sorted(idx)  # time order survives the clamping
    assert clip_indices(0, 16, 4, 1) == [0] * 16


def test_keyframes_constant_rate():
    kfs = select_keyframes([i / 25 for i in range(500)], 1.0)  # 20 s at 25 fps
    assert [k.time_s for k in kfs] == [float(k) for k in range(20)]
    assert [k.frame for k in kfs] == [25 * k for k in range(20)]
    assert expected_keyframes(499 / 25, 1.0) == 20


def test_keyframes_short_video_and_fractional_stride():
    assert [k.frame for k in select_keyframes([i / 30 for i in range(10)], 1.0)] == [0]
    kfs = select_keyframes([i / 10 for i in range(10)], 0.3)
    assert [k.time_s for k in kfs] == [0.0, 0.3, 0.6, 0.9]
    assert [k.frame for k in kfs] == [0, 3, 6, 9]


def test_keyframes_variable_frame_rate_take_the_nearest_frame():
    # 10 fps for 1 s, then 20 fps: a constant-rate assumption would pick frame 20 for t = 2 s.
    times = [i / 10 for i in range(10)] + [1.0 + j / 20 for j in range(30)]
    kfs = select_keyframes(times, 1.0)
    assert [(k.time_s, k.frame) for k in kfs] == [(0.0, 0), (1.0, 10), (2.0, 30)]
    # a gap: 0, 0.4, 1.4 -> t = 1 is nearer 1.4 (0.4 away) than 0.4 (0.6 away)
    kfs = select_keyframes([0.0, 0.4, 1.4, 1.7], 1.0)
    assert [(k.frame, k.frame_time_s) for k in kfs] == [(0, 0.0), (2, 1.4)]
    # a tie goes to the earlier frame
    assert select_keyframes([0.0, 0.5, 1.5], 1.0)[1].frame == 1


def test_keyframes_stream_start_after_zero():
    kfs = select_keyframes([0.25, 0.5, 1.0], 1.0)
    assert [(k.index, k.frame) for k in kfs] == [(0, 0), (1, 2)]


@pytest.mark.parametrize("times", [
    [i / 25 for i in range(500)], [i / 10 for i in range(10)],
    [i / 10 for i in range(10)] + [1.0 + j / 20 for j in range(30)], [0.0, 0.4, 1.4, 1.7],
    [0.0, 0.5, 1.5], [0.25, 0.5, 1.0]])
def test_frame_at_is_the_selectors_rule(times):
    """``frame_at`` (evad-eval's annotated keyframes) picks the frame the streaming selector
    (evad-trt-run) settles, ties and gaps included; past the end, the last frame."""
    for stride in (1.0, 0.3):
        for kf in select_keyframes(times, stride):
            assert frame_at(times, kf.time_s) == kf.frame
    assert frame_at(times, times[-1] + 5.0) == len(times) - 1
    assert frame_at([0.0, 0.5, 1.5], 1.0) == 1  # the tie: the earlier frame


def test_keyframe_selector_rejects_bad_stride():
    with pytest.raises(ValueError):
        KeyframeSelector(0.0)


# -- pre-processing ----------------------------------------------------------------------------


def test_resized_size_short_side_and_long_cap():
    assert resized_size(360, 640, 288, 1333) == (288, 512)
    assert resized_size(1080, 1920, 288, 1333) == (288, 512)
    assert resized_size(576, 768, 288, 1333) == (288, 384)
    assert resized_size(100, 2000, 288, 1333) == (67, 1333)  # long side capped
    assert resized_size(180, 320, 96, 1333) == (96, 171)  # int(170.67 + 0.5)


def test_preprocessor_fits_export_and_pads_with_zeros():
    pre = Preprocessor.create((360, 640), 288, 1333, (0.45,) * 3, (0.225,) * 3, (288, 512))
    assert pre.resized == (288, 512) and pre.padded == (288, 512)
    # the export's short side wins over a larger preset short side
    pre = Preprocessor.create((180, 320), 288, 1333, (0.45,) * 3, (0.225,) * 3, (96, 192))
    assert pre.resized == (96, 171) and pre.padded == (96, 192)
    assert pre.scale == pytest.approx((320 / 171, 180 / 96))
    frame = np.zeros((180, 320, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    rgb = pre.resize(frame)
    assert rgb.shape == (96, 171, 3) and rgb[0, 0].tolist() == [255, 0, 0]
    clip = pre.clip([rgb] * 16)
    assert clip.shape == (3, 16, 96, 192) and clip.dtype == np.float32
    np.testing.assert_allclose(clip[0, :, :, :171], (1 - 0.45) / 0.225, rtol=1e-6)
    np.testing.assert_allclose(clip[1, :, :, :171], -0.45 / 0.225, rtol=1e-6)
    assert not clip[:, :, :, 171:].any()  # padding stays zero after normalisation
    # torch (no fixed input): pad to multiples of 32
    pre = Preprocessor.create((576, 768), 288, 1333, (0.45,) * 3, (0.225,) * 3, None)
    assert pre.resized == (288, 384) and pre.padded == (288, 384)


def test_preprocessor_mismatched_input_size_names_the_export_to_make():
    """A portrait frame and a landscape export: shrunk to fit (aspect kept), and the note names
    the export that would take it at the model's size."""
    pre = Preprocessor.create((640, 360), 288, 1333, (0.45,) * 3, (0.225,) * 3, (288, 512))
    assert pre.wanted == (512, 288) and pre.resized == (288, 162) and pre.padded == (288, 512)
    note = pre.note("x.onnx")
    assert note is not None and "--height 512 --width 288" in note
    assert "frames are shrunk to 162x288" in note
    with pytest.raises(BackendError, match="cannot be resized"):
        Preprocessor.create((0, 360), 288, 1333, (0.45,) * 3, (0.225,) * 3, (288, 512))


# -- post-processing -------------------------------------------------------------------------


def test_keyframe_people_threshold_order_and_scale():
    boxes = np.array([[10, 20, 50, 90], [0, 0, 171, 96], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.8, 0.95, 0.2], np.float32)
    probs = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (3, 1))
    people = keyframe_people(boxes, scores, probs, (320 / 171, 180 / 96), (180, 320), 0.7)
    assert [p.score for p in people] == pytest.approx([0.95, 0.8])
    np.testing.assert_allclose(people[0].box, [0, 0, 320, 180])
    np.testing.assert_allclose(people[0].box_norm, [0, 0, 1, 1])
    np.testing.assert_allclose(people[1].box, [10 * 320 / 171, 20 * 180 / 96,
                                               50 * 320 / 171, 90 * 180 / 96], rtol=1e-6)
    top = people[0].top_actions([f"a{i}" for i in range(80)], 0.5, 3)
    assert [a["id"] for a in top] == [80, 79, 78] and top[0]["name"] == "a79"
    assert keyframe_people(boxes, scores * 0.1, probs, (1, 1), (96, 171), 0.7) == []
    assert len(keyframe_people(boxes, scores * 0.1, probs, (1, 1), (96, 171), 0.7,
                               keep_all_if_none=True)) == 3
    assert short_label("carry/hold (an object)") == "carry/hold"


def test_format_time():
    assert [format_time(t) for t in (0.0, 902.0, 1.5, 0.3)] == ["0", "902", "1.5", "0.3"]


def test_writer_resume_drops_a_cut_line_and_its_csv_rows(tmp_path):
    settings = {"video": "v", "keyframe_stride": 1.0}
    w = DetectionWriter(tmp_path, "v", ["a", "b"], settings)
    w.open()
    people = keyframe_people(np.array([[0, 0, 4, 4]], np.float32), np.array([0.9], np.float32),
                             np.array([[0.6, 0.1]], np.float32), (1, 1), (8, 8), 0.5)
    w.write_batch([(Keyframe(0, 0.0, 0, 0.0), people), (Keyframe(1, 1.0, 10, 1.0), people)])
    w.close()
    part = tmp_path / ".evad-staging" / "detections.jsonl"
    text = part.read_text()
    part.write_text(text[: text.index("\n") + 1] + text[text.index("\n") + 1:][:20])  # cut
    w2 = DetectionWriter(tmp_path, "v", ["a", "b"], settings, resume=True)
    w2.open()
    assert w2.done == {0}
    rows = (tmp_path / ".evad-staging" / "detections.csv").read_text().splitlines()
    assert rows == ["v,0,0.0000,0.0000,0.5000,0.5000,1,0.600000",
                    "v,0,0.0000,0.0000,0.5000,0.5000,2,0.100000"]
    # a keyframe's rows are listed by descending score across people and classes
    two = keyframe_people(np.array([[0, 0, 4, 4], [4, 4, 8, 8]], np.float32),
                          np.array([0.9, 0.8], np.float32),
                          np.array([[0.2, 0.1], [0.7, 0.3]], np.float32), (1, 1), (8, 8), 0.5)
    w2.write_batch([(Keyframe(1, 1.0, 10, 1.0), two)])
    rows = (tmp_path / ".evad-staging" / "detections.csv").read_text().splitlines()[2:]
    assert [r.split(",")[-2:] for r in rows] == [["1", "0.700000"], ["2", "0.300000"],
                                                 ["1", "0.200000"], ["2", "0.100000"]]
    w2.close()
    with pytest.raises(EvadError, match="keyframe_stride"):
        DetectionWriter(tmp_path, "v", ["a"], {**settings, "keyframe_stride": 2.0},
                        resume=True).open()
    assert json.loads((tmp_path / ".evad-staging" / "run.json").read_text())["complete"] is False
    assert not (tmp_path / "run.json").exists()  # nothing outside staging until it completes


# -- video input and its errors ---------------------------------------------------------------


def _write(path: Path, n: int, fps: float = 10.0, size=(64, 48), fourcc: str = "mp4v") -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), (i * 5) % 256, np.uint8))
    w.release()
    return path


def make_vfr_mp4(path: Path, deltas: list[int], size=(64, 48)) -> Path:
    """An mp4 with per-frame durations ``deltas`` (container time units): OpenCV writes
    constant rate, so its time-to-sample table (``stts``) is rewritten, one entry a frame."""
    _write(path, len(deltas), 10.0, size)
    data = path.read_bytes()
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
    order = []

    def rebuild(buf: bytes) -> bytes:
        out, i = b"", 0
        while i < len(buf):
            size_, typ = struct.unpack(">I4s", buf[i:i + 8])
            payload = buf[i + 8:i + size_]
            order.append(typ)
            if typ in containers:
                payload = rebuild(payload)
            elif typ == b"stts":
                payload = struct.pack(">II", 0, len(deltas)) + b"".join(
                    struct.pack(">II", 1, d) for d in deltas)
            out += struct.pack(">I4s", len(payload) + 8, typ) + payload
            i += size_
        return out

    new = rebuild(data)
    # moov after mdat: growing moov moves no sample, so the chunk offsets stay right
    assert order.index(b"mdat") < order.index(b"moov")
    path.write_bytes(new)
    return path


def test_variable_frame_rate_timestamps_come_from_the_container(tmp_path):
    # the writer's time base is 10240 units/s at 10 fps: 1024 = 0.1 s, 512 = 0.05 s
    path = make_vfr_mp4(tmp_path / "vfr.mp4", [1024] * 10 + [512] * 30)
    info = open_video(path)
    times = [t for _, t, _ in iter_frames(info)]
    expect = [i / 10 for i in range(10)] + [1.0 + j / 20 for j in range(30)]
    np.testing.assert_allclose(times, expect, atol=1e-6)
    kfs = select_keyframes(times, 1.0)
    assert [(k.frame, k.frame_time_s) for k in kfs] == [(0, 0.0), (10, 1.0), (30, 2.0)]


def test_frame_directory(tmp_path):
    for i in (1, 2, 10):  # natural order: 2 before 10
        cv2.imwrite(str(tmp_path / f"f_{i}.png"), np.full((24, 32, 3), i, np.uint8))
    info = open_video(tmp_path, fps=5)
    assert (info.width, info.height, info.frame_count, info.video_id) == (32, 24, 3,
                                                                          tmp_path.name)
    got = [(i, t, int(f[0, 0, 0])) for i, t, f in iter_frames(info)]
    assert got == [(0, 0.0, 1), (1, 0.2, 2), (2, 0.4, 10)]


def test_video_file_info_and_times(tmp_path):
    info = open_video(_write(tmp_path / "a.mp4", 25, fps=25.0))
    assert (info.width, info.height, info.fps, info.frame_count) == (64, 48, 25.0, 25)
    assert [t for _, t, _ in iter_frames(info)] == pytest.approx([i / 25 for i in range(25)])


def test_bad_videos_raise_one_line(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "noframes").mkdir()
    (tmp_path / "noframes" / "notes.txt").write_text("x")
    avi = _write(tmp_path / "mj.avi", 5, fourcc="MJPG")
    (tmp_path / "codec.avi").write_bytes(avi.read_bytes().replace(b"MJPG", b"ZZZZ"))
    cases = {"missing.mp4": "does not exist", "empty.mp4": "is empty",
             "junk.mp4": "no readable video stream", "noframes": "has no frames",
             "codec.avi": "no decoder for its video codec 'ZZZZ'"}
    for name, msg in cases.items():
        with pytest.raises(VideoError, match=msg) as e:
            open_video(tmp_path / name)
        assert "\n" not in str(e.value)


def test_truncated_stream_warns(tmp_path, capsys) -> None:
    """A file that decodes only partly (cut at 60% of its bytes) keeps the decoded frames and
    says that decoding stopped early."""
    from evad.video import iter_frames, open_video

    path = tmp_path / "t.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(50):
        writer.write(np.full((48, 64, 3), i * 5, np.uint8))
    writer.release()
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    info = open_video(cut)
    n = sum(1 for _ in iter_frames(info))
    err = capsys.readouterr().err
    assert 0 < n < 0.95 * info.frame_count
    assert f"stopped at frame {n} of the {info.frame_count}" in err
    assert sum(1 for _ in iter_frames(open_video(path))) == 50  # the whole file: no warning
    assert "warning" not in capsys.readouterr().err


def test_the_ort_path_imports_no_torch(tmp_path) -> None:
    """The runtime's modules and the demo video lookup work where torch cannot be imported
    (a CPU/ORT deployment needs no torch; docs/design.md)."""
    from evad.datasets import GENERATOR_VERSION

    cached = tmp_path / f"video_v{GENERATOR_VERSION}" / "demo.mp4"
    cached.parent.mkdir()
    cached.write_bytes(b"")  # present: no generation needed
    code = ("import sys; sys.modules['torch'] = None\n"
            "import evad.runtime.backends, evad.runtime.cli, evad.runtime.outputs\n"
            "import evad.runtime.pipeline, evad.runtime.render\n"
            "from evad.datasets.demo import demo_video\n"
            "print(demo_video())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "EVAD_CACHE": str(tmp_path)}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(cached)
