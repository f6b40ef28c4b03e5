"""What a job's input names, and what it refuses before it starts (issue 28, finding 9).

A job's ids are the names the user gave (a folder of links is named by the links, the data read
is the targets'); a glob walks its tree without following a folder link (one to ``..`` made
``glob.glob`` recurse for ever); dangling links, loops and unreadable entries are listed in
``job.json`` with why, never dropped silently; and a job folder that cannot take the job's
records (``job.json`` a folder, a held lock, ...) is refused before the model opens, not after
every video ran. Real videos, real ONNX Runtime (the tiny model), real file systems.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_video

from evad.errors import ConfigError
from evad.run_lock import FolderLock
from evad.runtime.cli import main
from evad.runtime.job import JobPlan, JobRun, TaskResult, finish_job, plan_job
from evad.runtime.source import ModelRef, SkippedInput, Source

ARGS = ("--person-threshold", "0.05", "--quiet")
PROG = "evad-trt-run"


def _run(capfd, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


def _job(out: Path) -> dict:
    return json.loads((out / "job.json").read_text(encoding="utf-8"))


def _rows(csv: Path) -> list[tuple[str, str]]:
    """(video id, the rest of the row) of each CSV row."""
    return [tuple(r.split(",", 1)) for r in csv.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", 1.0, 320, 180, 10.0)


def test_a_folder_glob_or_list_of_links_names_each_video_by_its_link(tmp_path, capfd, clip,
                                                                      tiny_onnx):
    """Before, the job resolved its paths first: ``kitchen.mp4 -> take_0412.mp4`` became the
    id ``take_0412`` while a single run of the link said ``kitchen``."""
    data, named = tmp_path / "data", tmp_path / "in"
    data.mkdir()
    named.mkdir()
    for link, target in (("kitchen", "take_0412"), ("garden", "take_0413")):
        shutil.copy(clip, data / f"{target}.mp4")
        (named / f"{link}.mp4").symlink_to(Path("..") / "data" / f"{target}.mp4")
    single = tmp_path / "single"
    assert _run(capfd, named / "kitchen.mp4", "--onnx", tiny_onnx, "--out", single, *ARGS)[0] == 0
    want = _rows(single / "detections.csv")
    assert want and {vid for vid, _ in want} == {"kitchen"}
    listing = named / "videos.txt"
    listing.write_text("garden.mp4\nkitchen.mp4\n")
    for arg in (named, str(named / "*.mp4"), listing):
        out = tmp_path / f"job-{len(list(tmp_path.iterdir()))}"
        rc, _, err = _run(capfd, arg, "--onnx", tiny_onnx, "--out", out, *ARGS)
        assert rc == 0, err
        results = _job(out)["results"]
        assert [(r["video_id"], r["video"]) for r in results] == [
            ("garden", str(named / "garden.mp4")), ("kitchen", str(named / "kitchen.mp4"))]
        assert sorted(p.name for p in out.iterdir()) == ["detections.csv", "garden", "job.json",
                                                         "kitchen"]
        # the data read is the target's: the same clip, the same rows under each link's id
        rows = _rows(out / "detections.csv")
        assert [r for r in rows if r[0] == "kitchen"] == want
        assert [rest for vid, rest in rows if vid == "garden"] == [rest for _, rest in want]


_CLASSIFY = """
import json, sys
from pathlib import Path
from evad.runtime.source import Source
root = Path(sys.argv[1])
for pattern in sys.argv[2:]:
    s = Source.classify(pattern)
    print(json.dumps({"videos": [str(Path(v).relative_to(root)) for v in s.videos],
                      "skipped": {str(Path(k.path).relative_to(root)): k.reason
                                  for k in s.skipped}}))
"""


def test_a_glob_walks_its_tree_without_following_a_folder_link(tmp_path):
    """A link to ``..``, a link to itself and a link out of the tree: ``**`` over them ends (in
    a child process with a time limit, so a hang fails) with the tree's own videos, and each
    link listed with why it was not followed. A folder the pattern spells out is followed."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    for f in (tree / "a.mp4", tree / "sub" / "b.mp4", outside / "o.mp4"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (tree / "sub" / "up").symlink_to("..")
    (tree / "self").symlink_to("self")
    (tree / "away").symlink_to(Path("..") / "outside")
    (tree / "again").symlink_to("sub")
    patterns = [str(tree / "**" / "*.mp4"), str(tree / "**"), str(tree / "away" / "*.mp4")]
    done = subprocess.run([sys.executable, "-c", _CLASSIFY, str(tmp_path), *patterns],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    deep, everything, named = (json.loads(line) for line in done.stdout.splitlines())
    assert deep == everything
    assert deep["videos"] == ["tree/a.mp4", "tree/sub/b.mp4"]
    assert deep["skipped"] == {
        "tree/again": f"a link to the folder {tree / 'sub'}: not followed (a glob walks each "
                      "folder of its tree by its own name)",
        "tree/away": f"a link to {outside}, out of the tree {tree}: not followed",
        "tree/self": "a symlink loop",
        "tree/sub/up": f"a link to {tree}, a folder that holds it (a loop): not followed"}
    assert named == {"videos": ["tree/away/o.mp4"], "skipped": {}}


def test_loops_and_dangling_links_are_listed_in_job_json_with_why(tmp_path, capfd, clip,
                                                                  tiny_onnx):
    """Before, a folder's or glob's dangling links and loops vanished without a word."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(clip, d / "good.mp4")
    (d / "gone.mp4").symlink_to("missing.mp4")
    (d / "loop.mp4").symlink_to("loop.mp4")
    (d / "ring_a.mp4").symlink_to("ring_b.mp4")
    (d / "ring_b.mp4").symlink_to("ring_a.mp4")
    (d / "notes").symlink_to("nowhere")  # no video's ending: no input, nothing to say
    skipped = [{"path": str(d / "gone.mp4"),
                "reason": "a link to missing.mp4, which does not exist"},
               {"path": str(d / "loop.mp4"), "reason": "a symlink loop"},
               {"path": str(d / "ring_a.mp4"), "reason": "a symlink loop"},
               {"path": str(d / "ring_b.mp4"), "reason": "a symlink loop"}]
    out = tmp_path / "job"
    for arg, extra, counts in ((d, (), "1 done, 0 already done"),
                               (str(d / "**" / "*.mp4"), ("--resume",), "0 done, 1 already done")):
        rc, stdout, err = _run(capfd, arg, "--onnx", tiny_onnx, "--out", out, *ARGS, *extra)
        assert rc == 0, err
        assert f"{counts}, 0 failed, 4 inputs skipped;" in stdout
        assert [line for line in err.splitlines() if "skipped" in line] == [
            f"{PROG}: warning: {s['path']}: skipped: {s['reason']}" for s in skipped]
        job = _job(out)
        assert job["skipped_inputs"] == skipped and job["complete"]
        assert [r["video_id"] for r in job["results"]] == ["good"]
    # named one by one in a list, what cannot be read is refused, naming its line
    listing = d / "l.txt"
    listing.write_text("good.mp4\nring_b.mp4\n")
    with pytest.raises(ConfigError) as e:
        Source.classify(listing)
    assert str(e.value) == f"{listing} line 2: {d / 'ring_b.mp4'}: a symlink loop"
    # a glob that finds only what it cannot read says what it skipped
    with pytest.raises(ConfigError, match=r"matches no video .*; 1 skipped: .*gone\.mp4: a link"):
        Source.classify(str(d / "gone*"))


def _without_root_reads() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so
    that root, after exec, obeys file modes as any user does (prctl PR_CAPBSET_DROP)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _obeying_modes():  # noqa: ANN202 - a preexec_fn or None
    """The ``preexec_fn`` that makes a child obey file modes: none for a user, for root
    :func:`_without_root_reads` (the test is skipped where root cannot drop it)."""
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_without_root_reads,
                       check=True, timeout=60)
    except subprocess.SubprocessError as e:
        pytest.skip(f"root cannot drop its read override here ({e}): a mode-000 file stays "
                    "readable to it")
    return _without_root_reads


_JOB = """
import sys
from evad.runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_unreadable_files_and_folders_are_skipped_with_why(tmp_path, clip, tiny_onnx):
    """A file and a folder with mode 000. Root reads them anyway, so the job runs in a child
    that has dropped root's right to override file modes (the same check as any user)."""
    tree = tmp_path / "tree"
    (tree / "closed").mkdir(parents=True)
    for f in (tree / "ok.mp4", tree / "locked.mp4", tree / "closed" / "c.mp4"):
        shutil.copy(clip, f)
    out = tmp_path / "job"
    cmd = [sys.executable, "-c", _JOB, str(tree / "**" / "*.mp4"), "--onnx", str(tiny_onnx),
           "--out", str(out), *ARGS]
    preexec = _obeying_modes()
    (tree / "locked.mp4").chmod(0)
    (tree / "closed").chmod(0)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              preexec_fn=preexec)
    finally:
        (tree / "closed").chmod(0o755)
        (tree / "locked.mp4").chmod(0o644)
    assert done.returncode == 0, done.stderr
    job = _job(out)
    assert job["skipped_inputs"] == [
        {"path": str(tree / "closed"), "reason": "cannot be listed: Permission denied"},
        {"path": str(tree / "locked.mp4"), "reason": "not readable (permission denied)"}]
    assert [(r["video_id"], r["status"]) for r in job["results"]] == [("ok", "done")]
    assert "2 inputs skipped" in done.stdout


@pytest.mark.parametrize("case", ["job.json", "detections.csv", ".evad.lock", "video folder",
                                  "out a file", "held"])
def test_the_job_folder_is_refused_before_the_model_opens(tmp_path, capfd, clip, case):
    """The model named does not exist: the job folder's refusal must come before it is
    looked at (before, ``job.json`` as a folder was found after every video ran)."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(clip, d / "a.mp4")
    out = tmp_path / "job"
    out.mkdir()
    lock = None
    if case in ("job.json", "detections.csv", ".evad.lock"):
        (out / case).mkdir()
        what = {"job.json": "the job summary", "detections.csv": "the merged CSV",
                ".evad.lock": "the lock"}[case]
        want = (f"{out / case} is a folder, where the job writes {what}: remove or rename it, "
                "or choose another --out")
    elif case == "video folder":
        (out / "a").write_text("x")
        want = (f"{out / 'a'} is a file, where the job writes the folder of {d / 'a.mp4'}: "
                "remove or rename it, or choose another --out")
    elif case == "out a file":
        out.rmdir()
        out.write_text("x")
        want = f"--out {out} is a file, not a folder"
    else:
        lock = FolderLock(out, "another-run").acquire()
        want = f"{out} is in use by another-run (pid {os.getpid()}"
    try:
        rc, _, err = _run(capfd, d, "--onnx", tmp_path / "missing.onnx", "--out", out, *ARGS)
    finally:
        if lock is not None:
            lock.release()
    assert rc == 2 and err.startswith(f"{PROG}: error: {want}"), err
    assert len(err.strip().splitlines()) == 1 and "missing.onnx" not in err
    assert not (out / "a").is_dir()  # no video ran


def test_a_job_json_folder_stops_the_job_before_any_video_runs(tmp_path, capfd, clip, tiny_onnx):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(clip, d / "a.mp4")
    out = tmp_path / "job"
    (out / "job.json").mkdir(parents=True)
    rc, _, err = _run(capfd, d, "--onnx", tiny_onnx, "--out", out, *ARGS)
    assert rc == 2 and f"{out / 'job.json'} is a folder" in err
    assert sorted(p.name for p in out.iterdir()) == ["job.json"]  # no video ran, no lock left
    (out / "job.json").rmdir()
    assert _run(capfd, d, "--onnx", tiny_onnx, "--out", out, *ARGS)[0] == 0
    assert [r["video_id"] for r in _job(out)["results"]] == ["a"]


def test_a_plan_carries_what_it_skipped_into_job_json(tmp_path):
    """What a Ray job writes too: ``run_job_ray`` hands the plan to the same ``finish_job``.
    The job's own outputs inside ``--out`` join the skipped inputs, sorted by path."""
    out = tmp_path / "job"
    (out / "a").mkdir(parents=True)
    (out / "a" / "detections.csv").write_text("a,1,0.1,0.1,0.5,0.5,3,0.900000\n")
    video, render = tmp_path / "a.mp4", out / "a" / "annotated.mp4"
    video.write_bytes(b"x")
    render.write_bytes(b"x")
    gone = SkippedInput(str(tmp_path / "b.mp4"), "a symlink loop")
    plan = plan_job([video, render], out, [gone])
    assert isinstance(plan, JobPlan) and [t.video_id for t in plan] == ["a"]
    own = SkippedInput(str(render), f"inside --out {out}: the job's own output")
    assert plan.skipped == (gone, own)
    done = TaskResult(str(video), "a", "done", 1, 1, 0.1, "", str(out / "a"))
    job = finish_job(out, plan, [done], ModelRef.of(onnx=tmp_path / "m.onnx"),
                     JobRun(ray="local", actors=2))
    assert _job(out) == job
    assert job["skipped_inputs"] == [gone.to_json(), own.to_json()] and job["complete"]
    # plain tasks (no plan) skip nothing: one shape of job.json
    assert finish_job(out, list(plan), [done], ModelRef(), JobRun())["skipped_inputs"] == []
