"""``evad-trt-run`` end to end: real OpenCV video through real ONNX Runtime (the tiny model).

The tiny model has random (calmed) weights, so its detections mean nothing; the tests use a low
``--person-threshold`` to get rows and check their structure, timestamps and ranges.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_video

from evad.runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 192  # the test export: short side 96, 16:9 video fits (171 x 96)


def _run(capfd, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _check_outputs(out: Path, video_id: str, fps: float, n_keyframes: int,
                   frame_size: tuple[int, int], stride: float = 1.0) -> list[dict]:
    """Assert the CSV and JSONL are complete and consistent; return the JSONL records."""
    # nothing staged or locked is left, and run.json names exactly the files beside it
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    recs = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["keyframe"] for r in recs] == list(range(n_keyframes))
    assert [r["time"] for r in recs] == pytest.approx([k * stride for k in range(n_keyframes)])
    h, w = frame_size
    for r in recs:
        assert r["frame"] == round(r["time"] * fps)  # constant-rate source: exact frame
        assert r["frame_time"] == pytest.approx(r["frame"] / fps, abs=1e-6)
        scores = [p["person_score"] for p in r["people"]]
        assert scores == sorted(scores, reverse=True)
        for p in r["people"]:
            x1, y1, x2, y2 = p["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            np.testing.assert_allclose(p["box_norm"], [x1 / w, y1 / h, x2 / w, y2 / h],
                                       atol=2e-3)
            assert all(a["score"] >= 0.5 for a in p["actions"]) and len(p["actions"]) <= 5
    rows = _rows(out / "detections.csv")
    people = sum(len(r["people"]) for r in recs)
    assert len(rows) == people * 80  # --csv-min-score 0: every class of every person
    times = {r["time"] for r in recs if r["people"]}
    assert {float(row[1]) for row in rows} == times
    for row in rows:
        assert len(row) == 8 and row[0] == video_id
        x1, y1, x2, y2 = map(float, row[2:6])
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
        assert 1 <= int(row[6]) <= 80 and 0 <= float(row[7]) <= 1
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["summary"]["keyframes"] == n_keyframes
    assert sorted(run["files"]) == sorted(p.name for p in out.iterdir() if p.name != "run.json")
    for name, f in run["files"].items():
        assert f["bytes"] == (out / name).stat().st_size
        assert f["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    return recs


def test_end_to_end_ort_tiny_model(tmp_path, capfd, tiny_onnx, sample_mp4):
    out = tmp_path / "o"
    rc, stdout, err = _run(capfd, sample_mp4, "--onnx", tiny_onnx, "--out", out, "--render",
                           "--person-threshold", "0.05", "--quiet")
    assert rc == 0, err
    recs = _check_outputs(out, "sample", 10.0, 4, (180, 320))
    assert sum(len(r["people"]) for r in recs) > 0  # the threshold lets some through
    assert "4 keyframes" in stdout and "ort (CPUExecutionProvider)" in stdout
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert (cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (10.0, 320, 180)
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 40


def test_auto_backend_says_which_it_chose_and_official_threshold(tmp_path, capfd, tiny_onnx,
                                                                 sample_mp4):
    out = tmp_path / "o"
    rc, stdout, err = _run(capfd, sample_mp4, "--onnx", tiny_onnx, "--out", out,
                           "--keyframe-stride", "2", "--batch-size", "2")
    assert rc == 0, err
    assert "backend ort (CPUExecutionProvider) (auto; skipped trt" in stdout
    recs = _check_outputs(out, "sample", 10.0, 2, (180, 320), stride=2.0)
    # default threshold: the model's (0.7)
    assert all(p["person_score"] >= 0.7 for r in recs for p in r["people"])


def test_vtest_avi_real_footage(tmp_path, capfd, tiny_onnx):
    """OpenCV's pedestrian clip (MP43 in AVI, 10 fps, 795 frames); fetch: .ci/test_data.sh."""
    root = Path(os.environ.get("EVAD_TEST_DATA") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evad-deploy/test-data")
    video = root / "vtest.avi"
    if not video.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{video} is missing in CI: run .ci/test_data.sh first")
        pytest.skip(f"{video} is absent: run .ci/test_data.sh to fetch it")
    out = tmp_path / "o"
    rc, _, err = _run(capfd, video, "--onnx", tiny_onnx, "--out", out, "--quiet",
                      "--keyframe-stride", "10", "--person-threshold", "0.05")
    assert rc == 0, err
    # 795 frames at 10 fps: last frame at 79.4 s -> keyframes at 0, 10, ..., 70 s
    recs = _check_outputs(out, "vtest", 10.0, 8, (576, 768), stride=10.0)
    assert [r["frame"] for r in recs] == [100 * k for k in range(8)]
    assert json.loads((out / "run.json").read_text())["summary"]["frames"] == 795


def test_torch_backend_matches_ort_through_the_runtime(tmp_path, capfd, tiny_model, tiny_onnx):
    """The same weights through both backends: a 2:1 video resizes to exactly the export's
    96 x 192, so both get the same input and must give the same detections."""
    from evad.models import build_model, save_checkpoint

    # the checkpoint's config carries short side 96 (AVA.MIN_SIZE_TEST), like the export
    model = build_model(tiny_model.preset.replace(short_side=96))
    model.load_state_dict(tiny_model.state_dict())
    ckpt = save_checkpoint(model, tmp_path / "tiny.pyth")
    video = make_video(tmp_path / "wide.mp4", 2.0, 320, 160, 8.0)
    torch.set_num_threads(2)
    recs = {}
    for backend, model_arg in (("torch", ["--ckpt", ckpt]), ("ort", ["--onnx", tiny_onnx])):
        out = tmp_path / backend
        rc, stdout, err = _run(capfd, video, *model_arg, "--backend", backend, "--out", out,
                               "--person-threshold", "0.05")
        assert rc == 0, err
        assert f"backend {backend} (" in stdout and "input 96x192" in stdout
        recs[backend] = _check_outputs(out, "wide", 8.0, 2, (160, 320))
    for a, b in zip(recs["torch"], recs["ort"], strict=True):
        assert len(a["people"]) == len(b["people"]) > 0
        for p, q in zip(a["people"], b["people"], strict=True):
            np.testing.assert_allclose(p["box"], q["box"], atol=0.15)  # JSONL rounds to 0.1
            assert p["person_score"] == pytest.approx(q["person_score"], abs=2e-4)
            assert [x["id"] for x in p["actions"]] == [x["id"] for x in q["actions"]]


BAD = {
    "missing": ("missing.mp4", "does not exist"),
    "empty": ("empty.mp4", "is empty (0 bytes)"),
    "corrupt": ("corrupt.mp4", "no readable video stream"),
    "truncated": ("truncated.mp4", "no readable video stream"),
    "no frames": ("noframes", "has no frames"),
    "codec": ("codec.avi", "no decoder for its video codec 'ZZZZ'"),
    "trt": ("sample", "the trt backend needs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_nonzero_and_no_files(tmp_path, capfd, tiny_onnx, sample_mp4, case):
    name, msg = BAD[case]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(8192))
    (tmp_path / "truncated.mp4").write_bytes(sample_mp4.read_bytes()[:20000])
    (tmp_path / "noframes").mkdir()
    mj = make_video(tmp_path / "mj.avi", 0.5, 64, 48, 10.0)
    (tmp_path / "codec.avi").write_bytes(mj.read_bytes().replace(b"MJPG", b"ZZZZ"))
    video = sample_mp4 if name == "sample" else tmp_path / name
    model = {"trt": ["--backend", "trt", "--engine", tiny_onnx],
             }.get(case, ["--onnx", tiny_onnx])
    out = tmp_path / "o"
    rc, stdout, err = _run(capfd, video, *model, "--out", out)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evad-trt-run: error: "), err
    assert msg in lines[0]
    assert not out.exists()  # nothing written, not even the folder


def test_a_frame_larger_than_the_fixed_input_is_shrunk_to_fit_and_said(tmp_path, capfd,
                                                                        tiny_onnx):
    """A portrait video and a landscape export (96x192): the frames are shrunk to fit, aspect
    kept (54x96 for 180x320), the run says so in one line with the export that would match,
    and the boxes come back in the source frame's pixels."""
    video = make_video(tmp_path / "portrait.mp4", 2.0, 180, 320, 10.0)
    out = tmp_path / "o"
    rc, stdout, err = _run(capfd, video, "--onnx", tiny_onnx, "--out", out,
                           "--person-threshold", "0.05")
    assert rc == 0, err
    note = [line for line in stdout.splitlines() if "note:" in line]
    assert len(note) == 1 and "frames are shrunk to 54x96" in note[0]
    assert "export it for this video with --height 192 --width 96" in note[0]
    assert "frames resized to 96x54, padded to the input 96x192" in stdout
    _check_outputs(out, "portrait", 10.0, 2, (320, 180))


def test_resume_after_kill(tmp_path, capfd, tiny_onnx):
    video = make_video(tmp_path / "long.mp4", 16.0, 320, 180, 10.0)
    out = tmp_path / "o"
    # batch 1: the JSONL grows a line per keyframe, so the kill lands mid-run
    args = [str(video), "--onnx", str(tiny_onnx), "--out", str(out), "--quiet",
            "--person-threshold", "0.05", "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from evad.runtime.cli import "
                             "main; sys.exit(main(sys.argv[1:]))", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = out / ".evad-staging" / "detections.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if part.is_file() and part.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "detections.jsonl").exists()  # never renamed into place
    done = part.read_text().count("\n")
    assert 2 <= done < 16
    rc, stdout, err = _run(capfd, *args, "--resume", "--render")
    assert rc == 0, err
    recs = _check_outputs(out, "long", 10.0, 16, (180, 320))
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["keyframes_resumed"] >= done  # the finished keyframes were not rerun
    assert f"({summary['keyframes_resumed']} resumed)" in stdout
    assert len(recs) == 16 and (out / "annotated.mp4").is_file()


def test_demo_model_on_another_video_says_what_it_is(tmp_path, capfd) -> None:
    """The default model (the demo checkpoint, here on the torch backend with no --ckpt) names
    itself, and on a video the user chose warns once that it knows synthetic figures only."""
    from evad.cli.trt_run import main as trt_run_main

    video = make_video(tmp_path / "street.mp4", 2.0, 320, 180, 10.0)
    rc = trt_run_main([str(video), "--backend", "torch", "--out", str(tmp_path / "o")])
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert "model checkpoint " in out and "(preset demo, trained on synthetic stick-figure " \
        "clips only (not real footage))" in out
    warnings = [x for x in err.splitlines() if ": warning: " in x]
    assert len(warnings) == 1 and "synthetic stick figures" in warnings[0]
    assert "MCG-NJU/EVAD" in warnings[0] and "evad-export --ckpt" in warnings[0]
