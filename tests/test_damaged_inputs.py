"""Damaged input is named as damaged: a decoder error is not a codec error, a live source
survives unreadable frames (skipped, counted, ended only by a run of them or the source's end),
and a camera index OpenCV cannot take is refused in one line.

The videos are made here with OpenCV's own mp4v encoder and damaged in three ways (the MP4
sample table zeroed, the media data overwritten with noise, the file cut before its sample
table); the live source is an MJPEG stream served on loopback with garbage in place of some
JPEGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_H, TINY_W, MjpegStream

from evad.errors import VideoError
from evad.live import iter_live, live_source
from evad.runtime.cli import main
from evad.video import decodes, open_video

W, H, FPS, N = 64, 48, 30.0, 60


def _mp4v(path: Path, frames: int = N) -> bytes:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (H, W, 3), np.uint8))
    writer.release()
    return path.read_bytes()


def _damaged(folder: Path) -> dict[str, Path]:
    """name -> a damaged copy of one good mp4v file (OpenCV writes the sample table last)."""
    good = _mp4v(folder / "good.mp4")
    mdat, moov = good.find(b"mdat"), good.find(b"moov")
    assert 0 < mdat < moov, "OpenCV's MP4 writer put the sample table first"
    rng = np.random.default_rng(1)
    variants = {
        "table": good[:moov] + bytes(200) + good[moov + 200:],
        "noise": good[:mdat + 8] + rng.integers(0, 256, moov - 100 - mdat - 8, np.uint8).tobytes()
        + good[moov - 100:],
        "cut": good[:moov - 1000],
    }
    paths = {}
    for name, data in variants.items():
        paths[name] = folder / f"{name}.mp4"
        paths[name].write_bytes(data)
    return paths


def test_this_opencv_decodes_mp4v_and_says_so():
    assert decodes("mp4v", ".mp4") is True
    # no encoder for a made-up codec: the question stays open rather than a guess
    assert decodes("ZZZZ", ".avi") is None


@pytest.mark.parametrize("case,says", [
    ("table", "its MP4 container is damaged or truncated (its codec 'mp4v' is one this "
              "OpenCV decodes)"),
    ("noise", "its 'FMP4' video stream is damaged (no frame of the 60 it announces decodes"),
    ("cut", "OpenCV finds no readable video stream in it (its MP4 container is damaged or "
            "truncated)"),
])
def test_a_damaged_mp4v_file_is_not_a_missing_decoder(tmp_path, case, says):
    path = _damaged(tmp_path)[case]
    with pytest.raises(VideoError) as e:
        open_video(path)
    msg = str(e.value)
    assert says in msg and str(path) in msg and "no decoder" not in msg
    assert "\n" not in msg
    assert open_video(tmp_path / "good.mp4").frame_count == N  # the original still opens


def test_a_damaged_file_in_a_job_is_recorded_as_damaged(tmp_path, capfd, tiny_onnx):
    videos = tmp_path / "videos"
    videos.mkdir()
    _mp4v(videos / "a_good.mp4")
    (videos / "b_table.mp4").write_bytes(_damaged(tmp_path)["table"].read_bytes())
    rc = main([str(videos), "--onnx", str(tiny_onnx), "--out", str(tmp_path / "out"),
               "--quiet"])
    _, err = capfd.readouterr()
    assert rc == 1, err
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    status = {v["video_id"]: v for v in job["results"]}
    assert status["a_good"]["status"] == "done"
    assert status["b_table"]["status"] == "failed"
    assert "container is damaged or truncated" in status["b_table"]["error"]
    assert "no decoder" not in status["b_table"]["error"]


GARBAGE = b"\xff\xd8" + b"not a JPEG " * 10


def _jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(2)
    return [cv2.imencode(".jpg", rng.integers(0, 255, (H, W, 3), np.uint8))[1].tobytes()
            for _ in range(n)]


def test_a_live_stream_skips_unreadable_frames_and_counts_them(capfd):
    good = _jpegs(30)
    parts = good[:10] + [GARBAGE] + good[10:20] + [GARBAGE] + good[20:]
    with MjpegStream(parts, 60.0) as stream:
        got = [frame for _, _, frame in iter_live(stream.url, 60.0)]
    _, err = capfd.readouterr()
    assert len(got) == 30, err  # every good frame, past both garbage parts
    decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in good]
    # in order, none lost or repeated (FFmpeg's chroma upsampling differs from libjpeg's: on
    # noise images ~12 levels apart; different images ~60)
    diff = np.array([[np.abs(a.astype(int) - b).mean() for b in decoded] for a in got])
    assert (diff.argmin(axis=1) == np.arange(30)).all() and diff.min(axis=1).max() < 25
    lines = err.strip().splitlines()
    assert lines[0].endswith("sent an unreadable frame: skipping it (the count is given at the "
                             "end)"), err
    assert "stopped sending after 30 frames" in lines[-1]
    assert lines[-1].endswith("; 2 unreadable frames skipped"), err
    assert len(lines) == 2, err


def test_a_run_of_unreadable_frames_ends_the_live_source(capfd):
    good = _jpegs(20)
    parts = good[:8] + [GARBAGE] * 3 + good[8:]
    with MjpegStream(parts, 60.0) as stream:
        got = list(iter_live(stream.url, 60.0, max_bad_frames=3))
    _, err = capfd.readouterr()
    assert len(got) == 8, err  # ended at the third failure in a row, not at the first
    assert "stopped sending after 8 frames" in err and "unreadable frames skipped" not in err


def test_the_live_flag_reaches_the_reader(tmp_path, capfd, tiny_onnx):
    good = _jpegs(48)
    parts = good[:24] + [GARBAGE] * 2 + good[24:]
    with MjpegStream(parts, 48.0) as stream:
        rc = main([stream.url, "--onnx", str(tiny_onnx), "--out", str(tmp_path / "live"),
                   "--live-max-bad-frames", "2", "--quiet"])
    _, err = capfd.readouterr()
    assert rc == 0, err
    assert "stopped sending after 24 frames" in err, err


@pytest.mark.parametrize("text", ["99999999999999999999", "2147483648"])
def test_a_camera_index_beyond_opencv_is_one_line(tmp_path, capfd, tiny_onnx, text):
    with pytest.raises(VideoError, match=f"camera index {text} is out of range"):
        live_source(text)
    rc = main([text, "--onnx", str(tiny_onnx), "--out", str(tmp_path / "o")])
    _, err = capfd.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "out of range" in err and "OpenCV(" not in err and "error: error" not in err
    assert not (tmp_path / "o").exists()


def test_digits_that_are_not_ascii_are_a_path(tmp_path):
    # "²".isdigit() holds, int("²") fails: such a name is a file name, never a camera
    assert live_source("²") is None
    assert live_source("0") == "0"


def test_the_graph_clamps_an_image_size_outside_the_clip(tiny_onnx, tiny_model):
    """What Triton's ONNX Runtime backend runs for a client of ``evad_onnx``: no runner stands
    in front to refuse a size, so the graph clamps it into [1, H] x [1, W] (the reference
    does the same) and boxes stay in the frame."""
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    clip = np.random.default_rng(3).standard_normal((1, 3, 16, TINY_H, TINY_W), np.float32)
    for bad, clamped in (([-5, 0], [1, 1]), ([0, 10**12], [1, TINY_W]),
                         ([10**12, -(10**12)], [TINY_H, 1]), ([40, 10**6], [40, TINY_W])):
        got = sess.run(["boxes", "action_probs"],
                       {"clip": clip, "image_size": np.array([bad], np.int64)})
        want = sess.run(["boxes", "action_probs"],
                        {"clip": clip, "image_size": np.array([clamped], np.int64)})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert (got[0] >= 0).all() and (got[0][..., 0::2] <= clamped[1] - 1).all()
        assert (got[0][..., 1::2] <= clamped[0] - 1).all()
        with torch.no_grad():
            ref = tiny_model(torch.from_numpy(clip), torch.tensor([bad]))
        np.testing.assert_allclose(ref.boxes.numpy(), got[0], atol=1e-3)
