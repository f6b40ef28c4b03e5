"""``evad-trt-run`` over many videos: a directory, a glob or a list file makes one job.

Real OpenCV videos through real ONNX Runtime (the tiny model). Each video's folder must hold
exactly what a single ``evad-trt-run`` of that video writes; the merged CSV is their rows in job
order; a failing video is recorded and the job goes on; ``--resume`` redoes only what is not
finished with the same model and settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import make_video

from evad.runtime.cli import main

ARGS = ("--person-threshold", "0.05", "--keyframe-stride", "0.5", "--quiet")


def _run(capfd, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    for name, seconds, fps in (("a", 2.0, 10.0), ("b", 1.5, 8.0), ("c", 2.5, 12.0)):
        make_video(d / f"{name}.mp4", seconds, 320, 180, fps)
    return d


@pytest.fixture(scope="module")
def singles(tmp_path_factory, videos, tiny_onnx) -> dict[str, Path]:
    """Each video run alone: the reference a job's folders must equal."""
    out = {}
    for v in sorted(videos.glob("*.mp4")):
        o = tmp_path_factory.mktemp("single") / v.stem
        assert main([str(v), "--onnx", str(tiny_onnx), "--out", str(o), *ARGS]) == 0
        out[v.stem] = o
    return out


def _same_as_single(job_dir: Path, single: Path) -> None:
    for name in ("detections.csv", "detections.jsonl"):
        assert (job_dir / name).read_bytes() == (single / name).read_bytes(), name
    assert sorted(p.name for p in job_dir.iterdir()) == ["detections.csv", "detections.jsonl",
                                                         "run.json"]


def test_directory_job_equals_single_runs_and_records_a_failure(tmp_path, capfd, videos,
                                                                 singles, tiny_onnx):
    d = tmp_path / "in"
    d.mkdir()
    for v in videos.iterdir():
        (d / v.name).write_bytes(v.read_bytes())
    (d / "broken.mp4").write_bytes(b"\x00" * 4096)  # sorts between a/b and c: the job goes on
    out = tmp_path / "job"
    rc, stdout, err = _run(capfd, d, "--onnx", tiny_onnx, "--out", out, *ARGS)
    assert rc == 1
    assert "1 of 4 videos failed" in err and "broken.mp4: failed: cannot open" in err
    assert "3 done, 0 already done, 1 failed" in stdout
    for vid, single in singles.items():
        _same_as_single(out / vid, single)
    assert not (out / "broken").exists()
    merged = b"".join((singles[v] / "detections.csv").read_bytes() for v in ("a", "b", "c"))
    assert (out / "detections.csv").read_bytes() == merged and merged
    job = json.loads((out / "job.json").read_text())
    assert [(r["video_id"], r["status"]) for r in job["results"]] == [
        ("a", "done"), ("b", "done"), ("broken", "failed"), ("c", "done")]
    broken = job["results"][2]
    assert broken["error"].startswith("cannot open") and broken["keyframes"] == 0
    assert job["complete"] and (job["done"], job["failed"], job["skipped"]) == (3, 1, 0)
    recs = {v: len((singles[v] / "detections.jsonl").read_text().splitlines()) for v in singles}
    assert job["keyframes"] == sum(recs.values())
    assert not (out / ".evad.lock").exists()


def test_resume_skips_finished_videos_and_a_changed_model_redoes_all(tmp_path, capfd, videos,
                                                                     singles, tiny_onnx):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the job\n{videos / 'c.mp4'}\n\n{videos / 'a.mp4'}  # first\n")
    out = tmp_path / "job"
    assert _run(capfd, listing, "--onnx", tiny_onnx, "--out", out, *ARGS)[0] == 0
    run_a = (out / "a" / "run.json").stat().st_mtime_ns
    rc, stdout, _ = _run(capfd, listing, "--onnx", tiny_onnx, "--out", out, "--resume", *ARGS)
    assert rc == 0 and "0 done, 2 already done, 0 failed" in stdout
    assert (out / "a" / "run.json").stat().st_mtime_ns == run_a  # not redone
    job = json.loads((out / "job.json").read_text())
    assert [r["video_id"] for r in job["results"]] == ["c", "a"]  # the list's order
    merged = b"".join((singles[v] / "detections.csv").read_bytes() for v in ("c", "a"))
    assert (out / "detections.csv").read_bytes() == merged
    # another option redoes every video
    rc, stdout, _ = _run(capfd, listing, "--onnx", tiny_onnx, "--out", out, "--resume",
                         *ARGS, "--top-k", "3")
    assert rc == 0 and "2 done, 0 already done" in stdout
    # so does another model (same graph, other content)
    proto = onnx.load(str(tiny_onnx))
    proto.doc_string = "fine-tuned"
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    rc, stdout, _ = _run(capfd, listing, "--onnx", other, "--out", out, "--resume", *ARGS,
                         "--top-k", "3")
    assert rc == 0 and "2 done, 0 already done" in stdout
    assert json.loads((out / "a" / "run.json").read_text())["settings"]["model_sha256"] != \
        json.loads((singles["a"] / "run.json").read_text())["settings"]["model_sha256"]


def test_resume_continues_an_interrupted_video(tmp_path, capfd, videos, singles, tiny_onnx):
    out = tmp_path / "job"
    pattern = str(videos / "[ab].mp4")
    assert _run(capfd, pattern, "--onnx", tiny_onnx, "--out", out, *ARGS)[0] == 0
    # make b look killed after its first keyframe: its finished files back into staging
    b = out / "b"
    staging = b / ".evad-staging"
    staging.mkdir()
    lines = (b / "detections.jsonl").read_text().splitlines(keepends=True)
    first_t = json.loads(lines[0])["time"]
    (staging / "detections.jsonl").write_text(lines[0])
    rows = [r for r in (b / "detections.csv").read_text().splitlines(keepends=True)
            if float(r.split(",")[1]) == first_t]
    (staging / "detections.csv").write_text("".join(rows))
    run = json.loads((b / "run.json").read_text())
    (staging / "run.json").write_text(json.dumps({"complete": False,
                                                  "settings": run["settings"]}))
    (b / "run.json").unlink()
    rc, stdout, _ = _run(capfd, pattern, "--onnx", tiny_onnx, "--out", out, "--resume", *ARGS)
    assert rc == 0 and "1 done, 1 already done" in stdout
    _same_as_single(b, singles["b"])
    summary = json.loads((b / "run.json").read_text())["summary"]
    assert summary["keyframes_resumed"] == 1


def test_job_arguments_refused_in_one_line(tmp_path, capfd, videos, tiny_onnx):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        (tmp_path / d / "same.mp4").write_bytes((videos / "a.mp4").read_bytes())
    listing = tmp_path / "dup.txt"
    listing.write_text("x/same.mp4\ny/same.mp4\n")
    missing = tmp_path / "missing.txt"
    missing.write_text("x/same.mp4\nnope.mp4\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    cases = {listing: "have the same video id 'same'",
             missing: "line 2:",
             tmp_path / "empty.txt": "names no video",
             str(tmp_path / "*.mkv"): "matches no video"}
    for arg, msg in cases.items():
        rc, _, err = _run(capfd, arg, "--onnx", tiny_onnx, "--out", tmp_path / "o", *ARGS)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = _run(capfd, tmp_path / "x", "--onnx", tiny_onnx, "--video-id", "v", *ARGS)
    assert rc == 2 and "--video-id names one video" in err
    rc, _, err = _run(capfd, videos / "a.mp4", "--onnx", tiny_onnx, "--ray", *ARGS)
    assert rc == 2 and "--ray runs jobs of many videos" in err
    assert not (tmp_path / "o").exists()


def test_what_a_job_argument_names(tmp_path, videos):
    from evad.errors import EvadError
    from evad.runtime.job import plan_job
    from evad.runtime.source import Source

    def find_videos(text: str) -> list[Path] | None:
        """The videos of a job argument, None when it names one video (``Source``)."""
        source = Source.classify(text)
        return list(source.videos) if source.is_job else None

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.mp4").write_bytes((videos / "a.mp4").read_bytes())
    (mixed / "cover.jpg").write_bytes(b"jpg")
    with pytest.raises(EvadError, match="1 videos and 1 images"):
        find_videos(str(mixed))
    # a glob keeps videos only; a '#' inside a name is part of it
    (mixed / "notes.txt").write_text("x")
    (mixed / "clip#1.mp4").write_bytes(b"x")
    assert [p.name for p in find_videos(str(mixed / "*"))] == ["a.mp4", "clip#1.mp4"]
    listing = tmp_path / "l.txt"
    listing.write_text("mixed/clip#1.mp4  # the second take\n#mixed/a.mp4\n")
    assert [p.name for p in find_videos(str(listing))] == ["clip#1.mp4"]
    # a stream URL with a query string or an IPv6 host is one live source, not a glob
    assert find_videos("http://127.0.0.1:8080/video.mjpg?res=640") is None
    assert find_videos("rtsp://[fe80::1]/s") is None
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "job.json.mp4").write_bytes(b"x")
    with pytest.raises(EvadError, match="a name the job's folder uses itself"):
        plan_job(find_videos(str(odd)), tmp_path / "o")


def test_ctrl_c_in_a_job_keeps_what_finished_and_says_so(tmp_path, capfd, videos, tiny_onnx,
                                                         monkeypatch):
    import evad.runtime.job as job

    real = job.run_video
    calls = []

    def run_video(*args, **kw):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(job, "run_video", run_video)
    out = tmp_path / "job"
    rc, _, err = _run(capfd, videos, "--onnx", tiny_onnx, "--out", out, *ARGS)
    assert rc == 130 and "interrupted after 1 of 3 videos" in err and "--resume" in err
    summary = json.loads((out / "job.json").read_text())
    assert not summary["complete"] and [r["video_id"] for r in summary["results"]] == ["a"]
    assert summary["not_run"] == 2 and not (out / ".evad.lock").exists()


def test_resume_with_render_renders_what_was_not(tmp_path, capfd, videos, tiny_onnx):
    out = tmp_path / "job"
    pattern = str(videos / "[b].mp4")  # a glob: a job of one video
    assert _run(capfd, pattern, "--onnx", tiny_onnx, "--out", out, *ARGS)[0] == 0
    rc, stdout, _ = _run(capfd, pattern, "--onnx", tiny_onnx, "--out", out, "--resume",
                         "--render", *ARGS)
    assert rc == 0 and "1 done, 0 already done" in stdout
    assert (out / "b" / "annotated.mp4").is_file()
    rc, stdout, _ = _run(capfd, pattern, "--onnx", tiny_onnx, "--out", out, "--resume",
                         "--render", *ARGS)
    assert rc == 0 and "0 done, 1 already done" in stdout


def test_ray_flag_does_not_swallow_the_videos(capfd, videos):
    with pytest.raises(SystemExit) as e:
        main(["--ray", str(videos), "--quiet"])
    assert e.value.code == 2
    err = capfd.readouterr().err
    assert "is no Ray address" in err and "put the videos before --ray" in err
