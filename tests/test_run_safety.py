"""evad-trt-run under races, kills and failures: the outputs in --out are at every moment
either complete and true (run.json says so and names each file's SHA-256) or clearly not done.

Every case is compared with one uninterrupted reference run of the same video and model:
two runs on one --out, a stale lock, SIGINT and SIGKILL then --resume, a model replaced at the
same path, the same model under another spelling, a failed run over a finished one, and a full
disk (a file-size limit, RLIMIT_FSIZE, in the child process).
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from conftest import make_video

from evad.runtime.cli import main as run_main

_CMD = [sys.executable, "-c",
        "import sys; from evad.runtime.cli import main; sys.exit(main(sys.argv[1:]))"]
STAGED = Path(".evad-staging") / "detections.jsonl"


def _args(video: Path, onnx_path: Path, out: Path, *more: str) -> list[str]:
    # batch 1 and a low person threshold: a JSONL line per keyframe and many CSV rows
    return [str(video), "--onnx", str(onnx_path), "--out", str(out), "--quiet",
            "--person-threshold", "0.05", "--batch-size", "1", "--threads", "1", *more]


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([*_CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _wait_for_lines(proc: subprocess.Popen, path: Path, lines: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.read_text().count("\n") >= lines:
            return
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {lines} keyframes: {proc.stderr.read()}"


def _outputs(out: Path) -> dict[str, object]:
    """What a finished folder holds, checked against its run.json: the CSV rows (as a sorted
    list), the JSONL records, and the settings."""
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*run["files"], "run.json"]), names  # no lock, no staging left
    for name, f in run["files"].items():
        data = (out / name).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    recs = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["keyframe"] for r in recs] == list(range(len(recs)))
    return {"csv": sorted((out / "detections.csv").read_text().splitlines()), "jsonl": recs,
            "settings": run["settings"]}


def _files(out: Path) -> dict[str, bytes]:
    """The finished outputs, by name (a killed run may leave its lock and staging beside
    them: hidden, and never mistaken for outputs)."""
    return {p.name: p.read_bytes() for p in out.iterdir()
            if p.is_file() and not p.name.startswith(".")}


def _errors(stderr: str) -> list[str]:
    """stderr's lines less the warnings of a run that goes on (a stale lock taken over)."""
    return [x for x in stderr.splitlines() if x.strip() and ": warning: " not in x]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("safety") / "walk.mp4", 14.0, 320, 180, 10.0)


@pytest.fixture(scope="module")
def reference(video, tiny_onnx, tmp_path_factory) -> dict[str, object]:
    """One uninterrupted run: what every other case must end with."""
    out = tmp_path_factory.mktemp("ref") / "o"
    assert run_main(_args(video, tiny_onnx, out)) == 0
    ref = _outputs(out)
    assert len(ref["jsonl"]) == 14 and len(ref["csv"]) > 14 * 80  # people on most keyframes
    return ref


def test_second_run_on_one_out_is_refused_naming_the_holder(video, tiny_onnx, reference,
                                                           tmp_path, capfd) -> None:
    out = tmp_path / "o"
    first = _spawn(_args(video, tiny_onnx, out))
    _wait_for_lines(first, out / STAGED, 1)
    capfd.readouterr()
    assert run_main(_args(video, tiny_onnx, out)) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is in use by evad-trt-run (pid {first.pid} on " \
        f"{socket.gethostname()}" in err[0] and "another output folder" in err[0]
    assert first.wait(120) == 0, first.stderr.read()
    assert _outputs(out) == reference  # the first run's files, whole and true


def test_stale_lock_of_a_dead_run_is_taken_over(video, tiny_onnx, reference, tmp_path,
                                                capfd) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / ".evad.lock").write_text(json.dumps({"command": "evad-trt-run", "pid": 999999,
                                                "host": "gone-host", "started": 0}))
    capfd.readouterr()
    assert run_main(_args(video, tiny_onnx, out)) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "took over the lock of evad-trt-run (pid 999999 on gone-host" \
        in err[0] and "no longer running" in err[0]
    assert _outputs(out) == reference


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL, signal.SIGTERM])
def test_interrupted_then_resumed_equals_one_run(video, tiny_onnx, reference, tmp_path,
                                                 sig) -> None:
    out = tmp_path / "o"
    proc = _spawn(_args(video, tiny_onnx, out))
    _wait_for_lines(proc, out / STAGED, 3)
    proc.send_signal(sig)
    code = proc.wait(60)
    err = proc.stderr.read()
    assert code == (130 if sig != signal.SIGKILL else -signal.SIGKILL), err
    if sig != signal.SIGKILL:
        lines = _errors(err)
        assert len(lines) == 1 and "rerun with --resume" in lines[0], err
    assert not (out / "run.json").exists() and not (out / "detections.csv").exists()
    done = (out / STAGED).read_text().count("\n")
    assert 3 <= done < 14
    resumed = subprocess.run([*_CMD, *_args(video, tiny_onnx, out, "--resume")],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    got = _outputs(out)
    assert got == reference  # no row lost or doubled, and the very same values
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["keyframes_resumed"] >= done


def test_resume_is_refused_after_the_model_changed(video, tiny_onnx, reference, tmp_path,
                                                   monkeypatch) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, model)
    out = tmp_path / "o"
    proc = _spawn(_args(video, model, out))
    _wait_for_lines(proc, out / STAGED, 2)
    proc.kill()
    proc.wait()
    staged = (out / STAGED).read_bytes()
    # another model at the same path: same graph, other bytes (what a re-export does)
    other = onnx.load(str(model))
    other.doc_string = "re-exported"
    onnx.save(other, str(model))
    r = subprocess.run([*_CMD, *_args(video, model, out, "--resume")], capture_output=True,
                       text=True, timeout=120)
    lines = _errors(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "cannot resume" in lines[0] and "the model file's content" in lines[0]
    assert "took over the lock" in r.stderr  # the killed run's lock, said once
    assert (out / STAGED).read_bytes() == staged  # the staged run is kept for its model
    # the first model back, named by another spelling of its path: it resumes
    shutil.copy(tiny_onnx, model)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run_main(_args(video, Path("sub/../m.onnx"), out, "--resume")) == 0
    assert _outputs(out) == reference


def test_resume_is_refused_after_the_video_or_a_setting_changed(video, tiny_onnx, tmp_path,
                                                                capfd) -> None:
    out = tmp_path / "o"
    proc = _spawn(_args(video, tiny_onnx, out))
    _wait_for_lines(proc, out / STAGED, 2)
    proc.kill()
    proc.wait()
    other = tmp_path / "walk.mp4"  # the same name, size and rate, other content
    make_video(other, 14.0, 320, 180, 10.0, seed=9)
    for args, word in ((_args(other, tiny_onnx, out, "--resume"), "the video's content"),
                       (_args(video, tiny_onnx, out, "--resume", "--top-k", "3"), "top_k")):
        capfd.readouterr()
        assert run_main(args) == 2
        err = _errors(capfd.readouterr().err)
        assert len(err) == 1 and "cannot resume" in err[0] and word in err[0], err


def test_resume_of_a_finished_run_never_rewrites_it(video, tiny_onnx, tmp_path,
                                                   capfd) -> None:
    """--resume of a finished run (with its render): another model is refused in one line
    naming the change, every file byte-identical; the same model and settings do nothing; a run
    without --resume says at its start that it will replace the finished one."""
    out = tmp_path / "o"
    assert run_main(_args(video, tiny_onnx, out, "--render")) == 0
    before = _files(out)
    assert "annotated.mp4" in before
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    other = tmp_path / "other.onnx"  # the same graph, other bytes: another model file
    proto = onnx.load(str(tiny_onnx))
    proto.doc_string = "re-exported"
    onnx.save(proto, str(other))
    for model, more in ((other, ()), (tiny_onnx, ("--top-k", "3"))):
        capfd.readouterr()
        assert run_main(_args(video, model, out, "--resume", "--render", *more)) == 2
        err = _errors(capfd.readouterr().err)
        assert len(err) == 1 and "cannot resume" in err[0] and "finished run" in err[0], err
        assert ("the model file's content" if model == other else "top_k") in err[0]
        assert _files(out) == before
    # the same model and settings: nothing to do, nothing rewritten (mtimes included)
    capfd.readouterr()
    assert run_main(_args(video, tiny_onnx, out, "--resume", "--render")) == 0
    assert _files(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # without --resume: the replacement is said at the start, before the first keyframe
    capfd.readouterr()
    assert run_main([a for a in _args(video, tiny_onnx, out) if a != "--quiet"]) == 0
    said = capfd.readouterr()
    lines = (said.out + said.err).splitlines()
    note = next(i for i, x in enumerate(lines) if "holds a finished run" in x)
    assert "this run replaces it" in lines[note]
    assert note < next(i for i, x in enumerate(lines) if " keyframes" in x and "people" in x)
    assert "annotated.mp4" not in _files(out)  # replaced by a run without --render


def test_failed_run_leaves_a_finished_run_intact(video, tiny_onnx, reference, tmp_path) -> None:
    out = tmp_path / "o"
    assert run_main(_args(video, tiny_onnx, out)) == 0
    before = _files(out)
    second = make_video(tmp_path / "other.mp4", 14.0, 320, 180, 10.0, seed=5)
    proc = _spawn(_args(second, tiny_onnx, out))
    _wait_for_lines(proc, out / STAGED, 2)
    proc.kill()
    proc.wait()
    assert _files(out) == before  # every finished file, byte for byte, run.json included
    assert json.loads((out / "run.json").read_text())["settings"] == reference["settings"]


def _limit_file_size(limit: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_disk_full_is_one_line_and_resumable(video, tiny_onnx, reference, tmp_path) -> None:
    out = tmp_path / "o"
    assert run_main(_args(video, tiny_onnx, out)) == 0
    before = _files(out)
    # a new run into the finished folder, files capped at 400 kB (a few keyframes of rows)
    r = subprocess.run([*_CMD, *_args(video, tiny_onnx, out)], capture_output=True, text=True,
                       timeout=120, preexec_fn=_limit_file_size(400_000))
    lines = _errors(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "file too large" in lines[0] and "detections.csv" in lines[0], lines[0]
    assert _files(out) == before  # the finished run is untouched
    staged = (out / STAGED).read_text().count("\n")
    assert 0 < staged < 14
    # space again: the run resumes and ends equal to one uninterrupted run
    assert run_main(_args(video, tiny_onnx, out, "--resume")) == 0
    assert _outputs(out) == reference


def test_failure_before_any_keyframe_leaves_nothing(video, tiny_onnx, tmp_path, capfd,
                                                     monkeypatch) -> None:
    """An error after the folder is taken but before a keyframe is written (here: the backend
    fails on its first clip) removes what the run made: no staging, no run.json, no lock, not
    even the folder it created."""
    from evad.export.ort_runner import OrtRunner

    def fail(self, clip, image_size):
        raise RuntimeError("injected backend failure")

    monkeypatch.setattr(OrtRunner, "__call__", fail)
    out = tmp_path / "new" / "o"
    capfd.readouterr()
    assert run_main(_args(video, tiny_onnx, out)) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "injected backend failure" in err[0] and "EVAD_DEBUG" in err[0]
    assert not out.exists()
    # into a folder holding a finished run: that run stays exactly as it was
    monkeypatch.undo()
    assert run_main(_args(video, tiny_onnx, out)) == 0
    before = _files(out)
    monkeypatch.setattr(OrtRunner, "__call__", fail)
    assert run_main(_args(video, tiny_onnx, out)) == 1
    assert _files(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
