"""``--resume`` re-verifies what it skips: a finished video whose files no longer match the
sizes and SHA-256 its ``run.json`` records (a truncated or edited CSV, a removed render) is run
again and said so in one line, alone or in a job, and the job's merged CSV is whole again.
Real OpenCV videos through real ONNX Runtime (the tiny model)."""

from __future__ import annotations

import json

import pytest
from conftest import make_video

from evad.runtime.cli import main
from evad.runtime.staging import damage

ARGS = ("--person-threshold", "0.05", "--keyframe-stride", "0.5")


def _run(capfd, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.mark.parametrize("harm", ["truncate", "edit", "remove"])
def test_a_damaged_finished_run_is_run_again(tmp_path, capfd, tiny_onnx, harm):
    video = make_video(tmp_path / "v.mp4", 2.0, 320, 180, 10.0)
    out = tmp_path / "o"
    assert _run(capfd, video, "--onnx", tiny_onnx, "--out", out, *ARGS)[0] == 0
    csv = out / "detections.csv"
    whole = csv.read_bytes()
    files = json.loads((out / "run.json").read_text())["files"]
    assert damage(out, files) == ""
    if harm == "truncate":
        csv.write_bytes(whole[: len(whole) // 2])
        why = f"detections.csv is {len(whole) // 2} bytes where run.json records {len(whole)}"
    elif harm == "edit":  # the same size, other bytes
        csv.write_bytes(whole.replace(b"v,", b"w,", 1))
        why = "detections.csv no longer has the SHA-256 run.json records"
    else:
        csv.unlink()
        why = "detections.csv is missing"
    assert damage(out, files) == why
    rc, stdout, err = _run(capfd, video, "--onnx", tiny_onnx, "--out", out, *ARGS, "--resume")
    assert rc == 0, err
    said = [line for line in stdout.splitlines() if why in line]
    assert len(said) == 1 and "running it again" in said[0], stdout
    assert csv.read_bytes() == whole
    assert damage(out, json.loads((out / "run.json").read_text())["files"]) == ""
    # whole again: the next --resume has nothing to do
    rc, stdout, _ = _run(capfd, video, "--onnx", tiny_onnx, "--out", out, *ARGS, "--resume")
    assert rc == 0 and "nothing to resume" in stdout


def test_a_job_resume_reruns_the_damaged_video_and_merges_it_whole(tmp_path, capfd, tiny_onnx):
    videos = tmp_path / "in"
    videos.mkdir()
    for name, seconds in (("a", 2.0), ("b", 1.5)):
        make_video(videos / f"{name}.mp4", seconds, 320, 180, 10.0)
    job = tmp_path / "job"
    assert _run(capfd, videos, "--onnx", tiny_onnx, "--out", job, *ARGS, "--quiet")[0] == 0
    merged = (job / "detections.csv").read_bytes()
    rows_b = (job / "b" / "detections.csv").read_bytes()
    (job / "b" / "detections.csv").write_bytes(rows_b[: len(rows_b) // 3])
    rc, _, err = _run(capfd, videos, "--onnx", tiny_onnx, "--out", job, *ARGS, "--quiet",
                      "--resume")
    assert rc == 0, err
    status = {r["video_id"]: r["status"] for r in
              json.loads((job / "job.json").read_text())["results"]}
    assert status == {"a": "skipped", "b": "done"}
    assert (job / "b" / "detections.csv").read_bytes() == rows_b
    assert (job / "detections.csv").read_bytes() == merged


def test_the_jobs_own_outputs_are_never_its_inputs(tmp_path, capfd, tiny_onnx):
    """``--out`` inside the globbed tree: the renders the job wrote there match the glob on
    ``--resume``, and are left out (said once), so the job is the same job."""
    tree = tmp_path / "tree"
    tree.mkdir()
    make_video(tree / "a.mp4", 1.0, 320, 180, 10.0)
    job = tree / "job"
    pattern = str(tree / "**" / "*.mp4")
    assert _run(capfd, pattern, "--onnx", tiny_onnx, "--out", job, *ARGS, "--render")[0] == 0
    assert (job / "a" / "annotated.mp4").is_file()
    rc, stdout, err = _run(capfd, pattern, "--onnx", tiny_onnx, "--out", job, *ARGS, "--render",
                           "--resume")
    assert rc == 0, err
    assert "1 of the videos named lie inside --out" in stdout
    results = json.loads((job / "job.json").read_text())["results"]
    assert [(r["video_id"], r["status"]) for r in results] == [("a", "skipped")]
