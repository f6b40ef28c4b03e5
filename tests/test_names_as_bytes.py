"""File names are bytes: a name that is not UTF-8 (``bad\\xff.mp4``, a frame ``f005\\xff.jpg``, an
``--out`` folder) reaches Python as a str with surrogate escapes, which OpenCV took as UTF-8 and
crashed the whole job on (SIGSEGV: no message, no job.json, the lock left). Such names are valid
input: the video decodes, its id keeps the odd bytes as ``%XX`` (the CSV and JSON are UTF-8), and
a ``--video-id`` that is not text is refused in one line. Real videos, real ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import pytest
from conftest import make_video

from evad.command import text_name
from evad.runtime.cli import main

ARGS = ("--person-threshold", "0.05", "--quiet")


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _run(capfd, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", 1.0, 320, 180, 10.0)


def test_text_name_writes_the_odd_bytes_as_percent_codes():
    assert text_name(_name(b"bad\xff\xfe")) == "bad%FF%FE"
    assert text_name("caf\u00e9 \u52d5\u753b") == "caf\u00e9 \u52d5\u753b"  # text unchanged


def test_a_job_with_a_name_that_is_not_utf8_runs_every_video(tmp_path, capfd, clip, tiny_onnx):
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(clip, videos / "good.mp4")
    shutil.copy(clip, Path(_name(str(videos).encode() + b"/bad\xff.mp4")))
    out = tmp_path / "job"
    rc, _, err = _run(capfd, videos, "--onnx", tiny_onnx, "--out", out, *ARGS)
    assert rc == 0, err
    results = json.loads((out / "job.json").read_text(encoding="utf-8"))["results"]
    assert sorted((r["video_id"], r["status"]) for r in results) == [("bad%FF", "done"),
                                                                    ("good", "done")]
    rows = (out / "detections.csv").read_text(encoding="utf-8").splitlines()
    ids = {r.split(",")[0] for r in rows}
    assert ids == {"bad%FF", "good"}
    # the same clip under both names: the same detections
    assert [r.split(",", 1)[1] for r in rows if r.startswith("bad%FF,")] == \
        [r.split(",", 1)[1] for r in rows if r.startswith("good,")]


def test_single_runs_frames_and_out_folders_with_odd_bytes(tmp_path, capfd, clip, tiny_onnx):
    odd = Path(_name(str(tmp_path).encode() + b"/clip\xff.mp4"))
    shutil.copy(clip, odd)
    out = Path(_name(str(tmp_path).encode() + b"/out\xfe"))
    rc, _, err = _run(capfd, odd, "--onnx", tiny_onnx, "--out", out, "--render", *ARGS)
    assert rc == 0, err
    assert (out / "detections.csv").read_text(encoding="utf-8").startswith("clip%FF,")
    assert (out / "annotated.mp4").stat().st_size > 0
    frames = tmp_path / "frames"
    frames.mkdir()
    cap = cv2.VideoCapture(str(clip))
    for i in range(10):
        ok, frame = cap.read()
        assert ok
        ok, data = cv2.imencode(".png", frame)
        Path(_name(str(frames).encode() + b"/f%03d\xff.png" % i)).write_bytes(data.tobytes())
    cap.release()
    rc, _, err = _run(capfd, frames, "--onnx", tiny_onnx, "--out", tmp_path / "f", "--fps",
                      "10", *ARGS)
    assert rc == 0, err
    assert (tmp_path / "f" / "detections.jsonl").read_text(encoding="utf-8").count("\n") == 1


def test_a_video_id_that_is_not_text_is_one_line(tmp_path, capfd, clip, tiny_onnx):
    rc, _, err = _run(capfd, clip, "--onnx", tiny_onnx, "--out", tmp_path / "o", "--video-id",
                      _name(b"id\xff"), *ARGS)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "is not UTF-8 text" in lines[0], err
    assert not (tmp_path / "o").exists()
