"""``Source``: an input argument classified once (file, frame folder, live source, job), and the
typed records a run carries (``ModelRef``, ``TaskResult``, ``job.json``'s ``model``).

Real files made in the test; classification decodes nothing, so most files are a few bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_video

from evad.errors import ConfigError, EvadError, VideoError
from evad.runtime.job import JobRun, TaskResult, VideoTask, finish_job
from evad.runtime.source import ModelRef, Source


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_a_video_file_and_a_missing_path_are_files(tmp_path):
    video = make_video(tmp_path / "walk.mp4", 1.0, 160, 90, 10.0)
    source = Source.classify(video)
    assert (source.kind, source.text, source.videos) == ("file", str(video), ())
    info = source.open()
    assert (info.width, info.height, info.video_id) == (160, 90, "walk")
    missing = Source.classify(tmp_path / "nope.mp4")  # no glob character: a file to open
    assert missing.kind == "file"
    with pytest.raises(VideoError, match="does not exist"):
        missing.open()


def test_a_folder_of_images_is_frames_and_opens_at_the_given_rate(tmp_path):
    import cv2
    import numpy as np

    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"f{i}.png"), np.full((12, 20, 3), 40 * i, np.uint8))
    source = Source.classify(str(frames))
    assert source.kind == "frames" and not source.is_job and not source.is_live
    info = source.open(fps=5.0)
    assert (info.frame_count, info.fps, info.width, info.height) == (3, 5.0, 20, 12)


@pytest.mark.parametrize("text", ["0", "rtsp://cam.local/stream",
                                  "http://127.0.0.1:8080/video.mjpg?res=640",
                                  "rtsp://[fe80::1]/s", "RTSP://admin:pw@10.0.0.1/h264"])
def test_cameras_and_stream_urls_are_live_and_never_globs(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    source = Source.classify(text)
    assert (source.kind, source.videos) == ("live", ()) and source.is_live


def test_an_existing_file_named_like_a_live_source_stays_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "0", tmp_path / "rtsp:" / "cam" / "s")  # 'rtsp://cam/s' as a path
    assert Source.classify("0").kind == "file"
    assert Source.classify("rtsp://cam/s").kind == "file"
    assert Source.classify("rtsp://cam/other").kind == "live"


def test_a_folder_of_videos_a_glob_and_a_list_are_jobs(tmp_path):
    d = tmp_path / "in"
    _touch(d / "b.mp4", d / "a.mkv", d / "notes.txt", d / "sub" / "c.mp4", d / "clip#1.mp4")
    folder = Source.classify(d)
    assert folder.kind == "job" and folder.is_job
    assert [p.name for p in folder.videos] == ["a.mkv", "b.mp4", "clip#1.mp4"]  # sorted, flat
    deep = Source.classify(str(d / "**" / "*.mp4"))
    assert [p.relative_to(d).as_posix() for p in deep.videos] == ["b.mp4", "clip#1.mp4",
                                                                  "sub/c.mp4"]
    listing = tmp_path / "l.list"
    listing.write_text("# takes\nin/sub/c.mp4\n\nin/b.mp4  # again\n#in/a.mkv\n"
                       f"{d / 'clip#1.mp4'}\n")
    listed = Source.classify(listing)
    assert listed.kind == "job"
    assert listed.videos == (tmp_path / "in/sub/c.mp4", tmp_path / "in/b.mp4",
                             d / "clip#1.mp4")  # the list's order; relative to the list
    with pytest.raises(ConfigError, match="names 3 videos, not one"):
        listed.open()


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda t: str(t / "*.mkv"), ConfigError, "matches no video (files ending in .mp4"),
    (lambda t: (_touch(t / "x.jpg", t / "y.mp4"), t)[1], VideoError,
     "holds 1 videos and 1 images"),
    (lambda t: (_touch(t / "readme.md"), t)[1], VideoError, "has no frames (images ending in"),
    (lambda t: ((t / "l.txt").write_text("# none\n"), t / "l.txt")[1], ConfigError,
     "names no video (one path per line)"),
    (lambda t: ((t / "l.txt").write_text("\nnope.mp4\n"), t / "l.txt")[1], ConfigError,
     "l.txt line 2:"),
], ids=["glob-no-match", "videos-and-images", "empty-folder", "empty-list", "missing-entry"])
def test_what_cannot_be_classified_is_one_line(tmp_path, make, error, words):
    with pytest.raises(error) as e:
        Source.classify(make(tmp_path))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_list_file_is_utf8_with_or_without_a_byte_order_mark(tmp_path):
    """A list saved by a Windows editor starts with a BOM: it is not part of the first name;
    a list in another encoding is refused in one line naming the file and the line."""
    make_video(tmp_path / "é1.mp4", 0.5, 64, 48, 10.0)
    make_video(tmp_path / "b.mp4", 0.5, 64, 48, 10.0)
    listed = tmp_path / "videos.txt"
    listed.write_bytes(b"\xef\xbb\xbf" + "é1.mp4\nb.mp4\n".encode())
    assert Source.classify(str(listed)).videos == (tmp_path / "é1.mp4", tmp_path / "b.mp4")
    listed.write_bytes("b.mp4\né1.mp4\n".encode("latin-1"))
    with pytest.raises(EvadError) as e:
        Source.classify(str(listed))
    assert str(e.value) == (f"video list {listed} is not UTF-8 text: byte 0xe9 at line 2; save "
                            "it as UTF-8")


def test_model_ref_round_trips_and_resolves_to_absolute_checked_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m.onnx").write_bytes(b"onnx")
    ref = ModelRef.of(onnx=Path("m.onnx"), backend="ort", threads=2)
    assert ref.to_json() == {"engine": None, "onnx": "m.onnx", "ckpt": None, "backend": "ort",
                             "threads": 2, "precision": "fp32"}
    assert ModelRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    assert ref.resolved().onnx == str(tmp_path / "m.onnx")
    assert ref.files() == (None, Path("m.onnx"), None)
    with pytest.raises(ConfigError, match="unknown keys: name"):
        ModelRef.from_json({**ref.to_json(), "name": "x"})
    with pytest.raises(EvadError, match="does not exist"):
        ModelRef.of(ckpt=Path("gone.pth")).resolved()


def test_job_json_has_one_model_shape_and_the_task_results_as_dicts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "detections.csv").write_text("a,1,0.1,0.1,0.5,0.5,3,0.900000\n")
    tasks = [VideoTask("a.mp4", "a", str(tmp_path / "a")),
             VideoTask("b.mp4", "b", str(tmp_path / "b"))]
    done = TaskResult("a.mp4", "a", "done", 1, 1, 0.25, "", str(tmp_path / "a"))
    failed = TaskResult.failed(tasks[1], "cannot open b.mp4", 0.5)
    assert list(done.to_json()) == ["video", "video_id", "status", "keyframes", "people",
                                    "seconds", "error", "out"]
    assert TaskResult.from_json(failed.to_json()) == failed
    model = ModelRef.of(onnx=tmp_path / "m.onnx", backend="ort")
    shapes = []
    for ran in (JobRun("ONNX model m.onnx", "ab" * 32, "onnxruntime-cpu"),
                JobRun(ray="local", actors=2)):
        out = tmp_path / f"job-{ran.ray}"
        out.mkdir()
        summary = finish_job(out, tasks, [failed, done], model, ran)
        job = json.loads((out / "job.json").read_text())
        assert job == summary and (job["done"], job["failed"], job["keyframes"]) == (1, 1, 1)
        assert job["results"] == [done.to_json(), failed.to_json()]  # task order
        assert (out / "detections.csv").read_text() == "a,1,0.1,0.1,0.5,0.5,3,0.900000\n"
        assert job["model"]["onnx"] == str(tmp_path / "m.onnx")
        shapes.append(list(job["model"]))
    assert shapes[0] == shapes[1] == ["engine", "onnx", "ckpt", "backend", "threads",
                                      "precision", "name", "sha256", "runner", "ray", "actors",
                                      "gpus_per_actor"]
