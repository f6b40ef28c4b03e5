"""``evad-trt-run`` on a live source: an HTTP MJPEG stream served on loopback by the test.

The server (standard library only) sends real JPEG frames at their frame rate, then closes the
connection, which is how a dropped stream looks to the client. Detections must reach the JSONL
while the stream still plays, each keyframe's latency must be printed, and the run must end
with complete outputs and one line saying the stream stopped.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import MjpegStream, make_video, read_frames

from evad.runtime.cli import main

FPS = 20.0
SECONDS = 5.0


@pytest.fixture(scope="module")
def jpeg_frames(tmp_path_factory) -> list[bytes]:
    video = make_video(tmp_path_factory.mktemp("live") / "src.mp4", SECONDS, 320, 180, FPS)
    frames = [cv2.imencode(".jpg", f)[1].tobytes() for f in read_frames(video)]
    assert len(frames) == int(SECONDS * FPS)
    return frames


def test_live_stream_detections_arrive_while_it_plays(tmp_path, capfd, jpeg_frames,
                                                      tiny_onnx):
    out = tmp_path / "live"
    staged = out / ".evad-staging" / "detections.jsonl"
    seen: list[tuple[float, int]] = []  # (time, lines in the staged JSONL) while running
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                n = staged.read_text().count("\n")
            except OSError:
                n = 0
            seen.append((time.monotonic(), n))
            time.sleep(0.02)

    with MjpegStream(jpeg_frames, FPS) as stream:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            rc = main([stream.url, "--onnx", str(tiny_onnx), "--out", str(out),
                       "--person-threshold", "0.05"])
        finally:
            done.set()
            watcher.join()
        stdout, err = capfd.readouterr()
    assert rc == 0, err
    # one line for the stream stopping, nothing else on stderr but the synthetic-model warning
    stops = [ln for ln in err.splitlines() if "stopped sending" in ln]
    assert len(stops) == 1 and f"after {len(jpeg_frames)} frames" in stops[0], err
    # the first keyframes were on disk before the last frame was sent (on the connection
    # that detection read: the last one; the one before was the probe)
    played = stream.sessions[-1]
    during = [n for t, n in seen if t < played["last_sent"]]
    assert max(during) >= 2, seen[-5:]
    first = next(t for t, n in seen if n >= 1)
    assert first - played["first_sent"] < 1.4 + 1.0  # the clip's later half + slack
    # a latency line per keyframe: its clip wait is about half the clip's span (1.6 s)
    lat = [tuple(map(float, m)) for m in re.findall(
        r"keyframe ([\d.]+) s: \d+ \w+, latency ([\d.]+) s \(clip ([\d.]+) s \+ queue "
        r"([\d.]+) s \+ inference ([\d.]+) s \+ write ([\d.]+) s\)", stdout)]
    recs = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["keyframe"] for r in recs] == list(range(len(recs))) and len(recs) >= 4
    assert [t for t, *_ in lat] == [r["time"] for r in recs]
    # keyframes whose clip arrived in full waited for its later half: (16 / 2 - 1) * 4 = 28
    # frames, 1.4 s at 20 fps (the keyframe's own frame may be the one before the 1 s mark)
    for t, total, clip, queue, infer, write in lat[:2]:
        assert 1.4 - 0.05 < clip < 1.4 + 0.05 + 0.25, (t, clip)
        assert total == pytest.approx(clip + queue + infer + write, abs=0.02)
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["settings"]["video_identity"] == {"live": stream.url}
    assert run["settings"]["video_id"] == "front"
    assert not (out / ".evad-staging").exists()


def test_live_source_refusals(tmp_path, capfd, tiny_onnx):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/none.mjpg"
    for extra, msg in (([], f"cannot open stream {url}"),
                       (["--render"], "--render needs a video file"),
                       (["--resume"], "--resume needs a video file")):
        rc = main([url, "--onnx", str(tiny_onnx), "--out", str(tmp_path / "o"), *extra])
        _, err = capfd.readouterr()
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not Path(tmp_path / "o").exists()


def test_ctrl_c_ends_a_live_run_with_complete_outputs(tmp_path, jpeg_frames, tiny_onnx):
    import signal
    import subprocess
    import sys

    out = tmp_path / "live"
    staged = out / ".evad-staging" / "detections.jsonl"
    with MjpegStream(jpeg_frames * 4, FPS) as stream:  # 20 s: longer than the test waits
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from evad.runtime.cli import main; "
             "sys.exit(main(sys.argv[1:]))", stream.url, "--onnx", str(tiny_onnx), "--out",
             str(out), "--person-threshold", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if staged.is_file() and staged.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    recs = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert len(recs) >= 2 and [r["keyframe"] for r in recs] == list(range(len(recs)))
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["summary"]["stopped"] == "Ctrl-C"
    assert run["summary"]["keyframes"] == len(recs)
    assert stdout.count("latency") == len(recs) and not (out / ".evad-staging").exists()


def test_stream_passwords_are_not_printed_or_recorded():
    from evad.live import live_source, redact

    url = "rtsp://admin:s3cret@10.1.2.3:554/h264?channel=1"
    assert redact(url) == "rtsp://admin:***@10.1.2.3:554/h264?channel=1"
    assert redact("rtsp://10.1.2.3/x") == "rtsp://10.1.2.3/x" and redact("clip.mp4") == "clip.mp4"
    assert live_source(url) == url and live_source("0") == "0"
    assert live_source("clip.mp4") is None and live_source("ftp://host/x") is None
