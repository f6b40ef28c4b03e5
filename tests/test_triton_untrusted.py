"""The Triton ``evad`` model trusts nothing in a request (issue #28), in-process: no server.

``ClipDetector`` refuses every VIDEO that is not the bytes of an allow-listed container (an
HLS playlist naming a file on this disk, a concat list, random bytes) in one line that does not
depend on what the text names, and a VIDEO over the request bounds, while the containers users
send still answer; the runners refuse an ``image_size`` outside the clip (what the served
``evad_onnx`` graph would take without a word). The real server's 400 is in test_triton.py.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from evad.errors import BackendError, ConfigError, EvadError, VideoError
from evad.runtime.backends import open_runner
from evad.runtime.video_run import DetectOptions
from evad.serving import triton_model
from evad.serving.triton_model import ClipDetector, VideoLimits, ffmpeg_allow_only
from evad.serving.triton_repo import VIDEO_LIMITS, python_config_text
from evad.video import sniff_container


@pytest.fixture(scope="module")
def runner(tiny_onnx):
    with open_runner("ort", onnx=tiny_onnx)[0] as r:
        yield r


@pytest.fixture(scope="module")
def detector(runner) -> ClipDetector:
    return ClipDetector(runner, DetectOptions())


def _write(path: Path, fourcc: str, frames: int = 30, size: tuple[int, int] = (160, 90)) -> Path:
    """``frames`` frames of a moving square at 10 fps, ``size`` (w, h), by OpenCV's writer."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    assert w.isOpened(), path
    for i in range(frames):
        f = np.zeros((size[1], size[0], 3), np.uint8)
        f[20:60, 5 + i * 3:45 + i * 3] = (40, 200, 90)
        w.write(f)
    w.release()
    return path


def _refusal(detector: ClipDetector, data: bytes) -> str:
    with pytest.raises(VideoError) as e:
        detector.video(data, {})
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("send the bytes of an mp4/avi/mkv/webm/ts file")
    return msg


def test_playlists_and_lists_are_refused_before_decoding_whatever_they_name(
        detector, tmp_path, sample_mp4):
    segment = _write(tmp_path / "on_disk.ts", "mp4v")  # a real file on the server's disk
    assert sniff_container(segment).container == "MPEG-TS"

    def playlist(target: Path) -> bytes:
        return (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{target}\n"
                "#EXT-X-ENDLIST\n").encode()

    existing = _refusal(detector, playlist(segment))
    missing = _refusal(detector, playlist(tmp_path / "missing.ts"))
    # the answer says what the bytes are and nothing of the path they name: equal either way
    assert existing == missing == ("cannot open VIDEO: it is an HLS playlist (text), not a video "
                                   "container; send the bytes of an mp4/avi/mkv/webm/ts file")
    # with a BOM and leading blank lines too
    assert "HLS playlist" in _refusal(detector, b"\xef\xbb\xbf\n" + playlist(segment))
    concat = f"ffconcat version 1.0\nfile '{sample_mp4}'\n".encode()
    assert "an FFmpeg concat list (text)" in _refusal(detector, concat)
    assert "an FFmpeg concat list (text)" in _refusal(detector, f"file {sample_mp4}\n".encode())
    assert "an SDP session description (text)" in _refusal(
        detector, b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nm=video 5004 RTP/AVP 96\n")
    assert "a URL (text)" in _refusal(detector, b"file:///etc/passwd")
    assert "a URL (text)" in _refusal(detector, b"http://127.0.0.1:8000/v2")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 4096, np.uint8).tobytes()
    if noise[:1] == b"G":  # not an MPEG-TS sync byte by chance
        noise = b"\x00" + noise[1:]
    assert f"binary data in no container this project reads (first bytes {noise[:8].hex(' ')})" \
        in _refusal(detector, noise)
    assert "first bytes 00 00 00 00" in _refusal(detector, b"\x00" * 4096)
    with pytest.raises(ConfigError, match="VIDEO is empty"):
        detector.video(b"", {})


def test_allow_listed_containers_answer_from_a_private_temp_file(detector, tmp_path,
                                                                  monkeypatch):
    seen: list[tuple[int, int, str | None]] = []
    real = triton_model.open_video

    def recording(path, *a, **kw):  # what the decode is given: the temp file and its folder
        seen.append((os.stat(Path(path).parent).st_mode & 0o777, os.stat(path).st_mode & 0o777,
                     os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")))
        return real(path, *a, **kw)

    monkeypatch.setattr(triton_model, "open_video", recording)
    for name, fourcc, container in (("a.mp4", "mp4v", "MP4"), ("a.avi", "MJPG", "AVI"),
                                    ("a.mkv", "mp4v", "Matroska/WebM"),
                                    ("a.ts", "mp4v", "MPEG-TS")):
        data = _write(tmp_path / name, fourcc).read_bytes()
        assert sniff_container(data).container == container
        lines, rows = detector.video(data, {"video_id": "v"})
        # 3 s at 10 fps: a keyframe a second
        assert [json.loads(line)["time"] for line in lines] == [0.0, 1.0, 2.0], (name, lines)
        assert all(r.startswith("v,") for r in rows)
    assert {s[:2] for s in seen} == {(0o700, 0o600)}
    assert [s[2] for s in seen] == ["protocol_whitelist;file|format_whitelist;" + d
                                    for d in ("mov", "avi", "matroska", "mpegts")]
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") is None


def test_requests_over_the_bounds_are_refused_in_one_line(runner, tmp_path):
    data = _write(tmp_path / "v.mp4", "mp4v", frames=30).read_bytes()  # 3 s, 160 x 90
    cases = {VideoLimits(max_seconds=2.5): "VIDEO lasts 3.0 s; this server takes at most 2.5 s "
             "(the evad model's max_video_seconds)",
             VideoLimits(max_frames=29): "VIDEO has 30 frames; this server takes at most 29 "
             "(the evad model's max_video_frames)",
             VideoLimits(max_width=159): "VIDEO of 160x90 pixels is larger than this server "
             "takes, 159x4096 (the evad model's max_video_width / max_video_height)",
             VideoLimits(max_height=89): "VIDEO of 160x90 pixels is larger than this server "
             "takes, 4096x89"}
    for limits, msg in cases.items():
        with pytest.raises(ConfigError) as e:
            ClipDetector(runner, DetectOptions(), limits).video(data, {})
        assert str(e.value).startswith(msg) and "\n" not in str(e.value)
    small = ClipDetector(runner, DetectOptions(), VideoLimits(max_width=100, max_height=100))
    with pytest.raises(ConfigError, match="FRAMES of 160x90 pixels is larger than this server "
                       "takes, 100x100"):
        small.clip(np.zeros((16, 90, 160, 3), np.uint8), {})
    # a container that announces 0.5 s and holds 10 s: stopped when the keyframes pass 3 s
    long = bytearray(_write(tmp_path / "long.avi", "MJPG", frames=100).read_bytes())
    i, j = long.find(b"avih"), long.find(b"strh")
    struct.pack_into("<I", long, i + 8 + 16, 5)  # avih dwTotalFrames
    struct.pack_into("<I", long, j + 8 + 32, 5)  # strh dwLength
    bounded = ClipDetector(runner, DetectOptions(), VideoLimits(max_seconds=3.0))
    with pytest.raises(ConfigError, match=r"^VIDEO decodes to more than 4 keyframes, longer "
                       r"than the 3 s this server takes"):
        bounded.video(bytes(long), {})
    # the same video within the bounds answers every keyframe
    lines, _ = ClipDetector(runner, DetectOptions()).video(bytes(long), {})
    assert len(lines) == 10


def test_the_bounds_are_said_in_the_model_config(tmp_path):
    text = python_config_text("../../evad_onnx/1/model.onnx", "ort", {"num_frames": 16})
    for k, v in VIDEO_LIMITS.items():
        assert f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' in text
    assert VideoLimits.from_config({k: str(v) for k, v in VIDEO_LIMITS.items()}) == VideoLimits()
    assert VideoLimits() == VideoLimits(120.0, 3600, 4096, 4096)
    assert VideoLimits.from_config({"max_video_seconds": "5"}).max_seconds == 5.0
    for bad in ("0", "-1", "nan", "many"):
        with pytest.raises(ConfigError, match="max_video_frames = .* is not a positive int"):
            VideoLimits.from_config({"max_video_frames": bad})


def test_client_errors_map_to_invalid_arg():
    # the classes execute() answers with INVALID_ARG (HTTP 400); everything else is INTERNAL
    assert triton_model.CLIENT_ERRORS == (ConfigError, VideoError)
    assert not issubclass(BackendError, triton_model.CLIENT_ERRORS)
    assert issubclass(ConfigError, EvadError)


def test_ffmpeg_allow_only_keeps_opencv_from_following_a_playlist(tmp_path):
    import cv2

    segment = _write(tmp_path / "seg.ts", "mp4v")
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{segment}\n"
                        "#EXT-X-ENDLIST\n")
    mp4 = _write(tmp_path / "a.mp4", "mp4v")

    def opens(path: Path) -> bool:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            return cap.isOpened() and cap.read()[0]
        finally:
            cap.release()

    assert opens(playlist)  # the threat: FFmpeg follows the playlist to a file on this disk
    if int(cv2.__version__.split(".")[0]) < 5:
        pytest.skip(f"OpenCV {cv2.__version__} ignores OPENCV_FFMPEG_CAPTURE_OPTIONS: the "
                    "magic-byte allow-list alone guards the server")
    with ffmpeg_allow_only("mov"):
        assert opens(mp4)
        assert not opens(playlist)
    assert opens(playlist)  # restored


def test_runners_refuse_an_image_size_outside_the_clip(runner):
    clip = np.random.default_rng(0).standard_normal((2, 3, 16, 96, 192)).astype(np.float32)
    good = np.array([[96, 192], [60, 192]])
    out = runner(clip, good)
    assert out["boxes"].shape[0] == 2
    for bad, i in (([[0, 192], [60, 192]], 0), ([[96, 192], [-5, 100]], 1),
                   ([[97, 192], [60, 192]], 0), ([[96, 193], [60, 192]], 0),
                   ([[96, 192], [10 ** 12, 5]], 1)):
        with pytest.raises(BackendError) as e:
            runner(clip, np.array(bad))
        msg = str(e.value)
        assert msg == (f"image_size[{i}] = {bad[i]} (h, w) is outside the clip: each value must "
                       "be 1..96 (h) and 1..192 (w), the unpadded size of a clip padded to "
                       "96x192"), msg
