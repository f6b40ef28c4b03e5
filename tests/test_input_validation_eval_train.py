"""Input validation of evad-eval and evad-train (in the manner of Triton's L0_input_validation):
a table of generated bad inputs, each run through the command's ``main`` in-process.

For every case: a non-zero exit, exactly one line on stderr (``<prog>: error: ...``) holding the
expected words (the file, the line, the fix), no traceback and no raw exception class name, and
the files on disk exactly as they were (no ``.tmp``, no half-written JSON / CSV / run folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from evad.datasets.synthetic import generate_dataset
from evad.evaluation.cli import main as eval_main
from evad.models import build_model
from evad.models.checkpoint import save_checkpoint
from evad.training.cli import main as train_main

RAW = re.compile(r"Traceback|Errno|\b\w+(Error|Exception|Warning)\b|csv\.Error|"
                 r"StopIteration|<class ")

GT = "v,1,0,0,0.5,0.5,1,0\nv,2,0,0,0.5,0.5,1,0\n"
DET = "v,1,0,0,0.5,0.5,1,0.9\nv,1,0.6,0.6,0.9,0.9,1,0.8\nv,2,0,0,0.5,0.5,1,0.7\n"
LABELS = 'item {\n  name: "walk"\n  id: 1\n}\nitem {\n  name: "run"\n  id: 2\n}\n'


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a regular file by its content, else its kind."""
    out = {}
    for p in sorted(root.rglob("*")):
        mode = p.lstat().st_mode
        rel = str(p.relative_to(root))
        if stat.S_ISREG(mode):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir" if stat.S_ISDIR(mode) else "other"
    return out


def run(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse usage errors exit from parse_args
        return int(e.code) if isinstance(e.code, int) else 1


def assert_refused(capfd, root: Path, main, prog: str, argv: list[str], words) -> str:
    before = snapshot(root)
    code = run(main, argv)
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert code != 0, (argv, out, err)
    assert len(lines) == 1, f"want one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    for w in words:
        assert w in line, f"{w!r} not in: {line}"
    assert not RAW.search(line), f"raw exception name in: {line}"
    assert out == "", out
    assert snapshot(root) == before, "files changed on a refused input"
    return line


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


# ------------------------------------------------------------------------------ evad-eval

EVAL_CASES: list = []


def eval_case(*words: str, root_ok: bool = True):
    def register(fn):
        marks = [] if root_ok else [pytest.mark.skipif(
            os.geteuid() == 0, reason="root reads and writes files without permission")]
        EVAL_CASES.append(pytest.param(fn, words, id=fn.__name__, marks=marks))
        return fn
    return register


def good(t: Path) -> list[str]:
    write(t / "gt.csv", GT)
    write(t / "det.csv", DET)
    write(t / "map.pbtxt", LABELS)
    return ["--gt", str(t / "gt.csv"), "--det", str(t / "det.csv")]


@eval_case("gt.csv", "not UTF-8", "line 2", "save it as UTF-8")
def gt_not_utf8(t):
    argv = good(t)
    write(t / "gt.csv", b"v,1,0,0,0.5,0.5,1,0\nv\xe9,2,0,0,0.5,0.5,1,0\n")
    return argv


@eval_case("det.csv", "not UTF-8", "line 4")
def det_not_utf8(t):
    argv = good(t)
    write(t / "det.csv", DET.encode()[:-1] + b"\n\xff\n")
    return argv


@eval_case("ex.csv", "not UTF-8", "line 1")
def exclusions_not_utf8(t):
    write(t / "ex.csv", b"\xc3\x28,1\n")
    return [*good(t), "--exclusions", str(t / "ex.csv")]


@eval_case("map.pbtxt", "not UTF-8", "UTF-16")
def labelmap_utf16(t):
    argv = good(t)
    write(t / "map.pbtxt", LABELS.encode("utf-16"))
    return [*argv, "--labelmap", str(t / "map.pbtxt")]


@eval_case("map.pbtxt:3", "id 'one'", "not an integer", 'id: 1')
def labelmap_id_not_a_number(t):
    argv = good(t)
    write(t / "map.pbtxt", LABELS.replace("id: 1", "id: one"))
    return [*argv, "--labelmap", str(t / "map.pbtxt")]


@eval_case("map.pbtxt", "has no items")
def labelmap_without_items(t):
    argv = good(t)
    write(t / "map.pbtxt", "# nothing here\n")
    return [*argv, "--labelmap", str(t / "map.pbtxt")]


@eval_case("label map", "maps", "is a directory")
def labelmap_is_a_directory(t):
    (t / "maps").mkdir()
    return [*good(t), "--labelmap", str(t / "maps")]


@eval_case("ex.csv:2", "1 column(s)", "video, seconds")
def exclusions_missing_column(t):
    write(t / "ex.csv", "v,1\nv\n")
    return [*good(t), "--exclusions", str(t / "ex.csv")]


@eval_case("ex.csv:1", "seconds", "'noon'", "not a number")
def exclusions_timestamp_not_a_number(t):
    write(t / "ex.csv", "v,noon\n")
    return [*good(t), "--exclusions", str(t / "ex.csv")]


@eval_case("ex.csv:1", "'inf'", "finite")
def exclusions_timestamp_infinite(t):
    write(t / "ex.csv", "v,inf\n")
    return [*good(t), "--exclusions", str(t / "ex.csv")]


@eval_case("gt.csv:2", "longer than 131072 characters")
def gt_huge_field(t):
    argv = good(t)
    write(t / "gt.csv", "v,1,0,0,0.5,0.5,1,0\n" + "x" * 200_000 + "\n")
    return argv


@eval_case("det.csv:2", "longer than", "unclosed quote")
def det_unclosed_quote(t):
    argv = good(t)
    write(t / "det.csv", '"v,1,0,0,0.5,0.5,1,0.9\n' + "y" * 140_000 + "\n")
    return argv


@eval_case("det.csv:2", "column 5 (x2)", "'nan'", "finite number")
def det_nan_box(t):
    argv = good(t)
    write(t / "det.csv", DET.replace("0.6,0.6,0.9,0.9", "0.6,0.6,nan,0.9"))
    return argv


@eval_case("det.csv:3", "column 8 (score)", "'inf'", "finite number")
def det_infinite_score(t):
    argv = good(t)
    write(t / "det.csv", DET.replace(",0.7\n", ",inf\n"))
    return argv


@eval_case("gt.csv:2", "column 2 (seconds)", "'NaN'")
def gt_nan_timestamp(t):
    argv = good(t)
    write(t / "gt.csv", GT.replace("v,2,", "v,NaN,"))
    return argv


@eval_case("gt.csv:1", "'timestamp'", "header row")
def gt_header_row(t):
    argv = good(t)
    write(t / "gt.csv", "video,timestamp,x1,y1,x2,y2,action,person\n" + GT)
    return argv


@eval_case("det.csv:1", "7 column(s)", "has 8", "score")
def det_without_score(t):
    argv = good(t)
    write(t / "det.csv", "v,1,0,0,0.5,0.5,1\n")
    return argv


@eval_case("gt.csv:2", "column 7 (action id)", "'walk'", "not an integer")
def gt_action_not_an_integer(t):
    argv = good(t)
    write(t / "gt.csv", GT.replace("0.5,1,0\nv,2", "0.5,1,0\nv,2").replace(
        "v,2,0,0,0.5,0.5,1,0", "v,2,0,0,0.5,0.5,walk,0"))
    return argv


@eval_case("gt.csv:1", "column 1 (video) is empty")
def gt_empty_video_id(t):
    argv = good(t)
    write(t / "gt.csv", "," + GT.split(",", 1)[1])
    return argv


@eval_case("missing.csv", "does not exist")
def gt_missing(t):
    good(t)
    return ["--gt", str(t / "missing.csv"), "--det", str(t / "det.csv")]


@eval_case("gt.csv", "is a directory")
def gt_is_a_directory(t):
    argv = good(t)
    (t / "gt.csv").unlink()
    (t / "gt.csv").mkdir()
    return argv


@eval_case("gt.csv", "is a FIFO")
def gt_is_a_fifo(t):
    argv = good(t)
    (t / "gt.csv").unlink()
    os.mkfifo(t / "gt.csv")
    return argv


@eval_case("gt.csv", "is empty")
def gt_empty(t):
    argv = good(t)
    write(t / "gt.csv", "")
    return argv


@eval_case("gt.csv", "has no rows")
def gt_blank_lines_only(t):
    argv = good(t)
    write(t / "gt.csv", "\n\n,,\n")
    return argv


@eval_case("gt.csv", "not readable", root_ok=False)
def gt_unreadable(t):
    argv = good(t)
    (t / "gt.csv").chmod(0)
    return argv


@eval_case("--json", "is a directory", "give a file name")
def json_is_a_directory(t):
    (t / "out.json").mkdir()
    return [*good(t), "--json", str(t / "out.json")]


@eval_case("--json", "is the --gt input", "another file name")
def json_is_the_ground_truth(t):
    argv = good(t)
    return [*argv, "--json", str(t / "gt.csv")]


@eval_case("--json", "not writable", root_ok=False)
def json_folder_unwritable(t):
    argv = good(t)
    (t / "ro").mkdir(mode=0o500)
    return [*argv, "--json", str(t / "ro" / "r.json")]


@eval_case("--json", "is a file, not a folder")
def json_under_a_file(t):
    argv = good(t)
    return [*argv, "--json", str(t / "det.csv" / "r.json")]


@eval_case("argument --iou", "(0, 1]", "--help")
def iou_negative(t):
    return [*good(t), "--iou", "-1"]


@eval_case("argument --iou", "nan", "(0, 1]")
def iou_nan(t):
    return [*good(t), "--iou", "nan"]


@eval_case("argument --iou", "(0, 1]")
def iou_zero(t):
    return [*good(t), "--iou", "0"]


@eval_case("argument --iou", "(0, 1]")
def iou_above_one(t):
    return [*good(t), "--iou", "1.5"]


@eval_case("argument --iou", "'half' is not a number")
def iou_not_a_number(t):
    return [*good(t), "--iou", "half"]


@eval_case("either --det", "--data")
def neither_det_nor_data(t):
    good(t)
    return ["--gt", str(t / "gt.csv")]


@eval_case("either --det", "--data")
def both_det_and_data(t):
    return [*good(t), "--data", str(t)]


@eval_case("--ckpt", "--data")
def ckpt_without_data(t):
    return [*good(t), "--ckpt", str(t / "m.pth")]


@eval_case("--write-det", "--data")
def write_det_without_data(t):
    return [*good(t), "--write-det", str(t / "d.csv")]


def data_dir(t: Path, video: bytes | None = b"not really a video") -> Path:
    """A --data folder that passes the file checks (the model fails before any decoding)."""
    d = t / "data"
    write(d / "annotations.csv", GT)
    if video is not None:
        write(d / "videos" / "v.mp4", video)
    return d


@eval_case("exactly one of --ckpt", "--onnx")
def data_with_ckpt_and_onnx(t):
    d = data_dir(t)
    return ["--data", str(d), "--ckpt", str(t / "a.pth"), "--onnx", str(t / "a.onnx")]


@eval_case("annotations of --data", "annotations.csv", "does not exist")
def data_without_annotations(t):
    d = data_dir(t)
    (d / "annotations.csv").unlink()
    write(t / "m.pth", b"x")
    return ["--data", str(d), "--ckpt", str(t / "m.pth")]


@eval_case("--data", "is not a directory")
def data_is_a_file(t):
    write(t / "m.pth", b"x")
    return ["--data", str(t / "m.pth"), "--ckpt", str(t / "m.pth")]


@eval_case("v.mp4", "does not exist", "annotations.csv")
def data_video_missing(t):
    d = data_dir(t, video=None)
    write(t / "m.pth", b"x")
    return ["--data", str(d), "--ckpt", str(t / "m.pth")]


@eval_case("checkpoint", "missing.pth", "does not exist")
def data_ckpt_missing(t):
    return ["--data", str(data_dir(t)), "--ckpt", str(t / "missing.pth")]


@eval_case("cannot read checkpoint", "bad.pth", "truncated")
def data_ckpt_garbage(t):
    write(t / "bad.pth", os.urandom(4096))
    # the outputs are checked and left unwritten when the model cannot load
    return ["--data", str(data_dir(t)), "--ckpt", str(t / "bad.pth"),
            "--write-det", str(t / "det_out.csv"), "--json", str(t / "r.json")]


@eval_case("dict.pth", "no state dict")
def data_ckpt_not_a_checkpoint(t):
    torch.save({"weights": [1, 2, 3]}, t / "dict.pth")
    return ["--data", str(data_dir(t)), "--ckpt", str(t / "dict.pth")]


@eval_case("gt.csv:2", "finite")
def data_gt_checked_before_the_model(t):
    """A bad --gt is refused before the (slow) model would run, with a bad model too."""
    write(t / "bad.pth", b"junk")
    write(t / "gt.csv", GT.replace("v,2,", "v,inf,"))
    return ["--data", str(data_dir(t)), "--gt", str(t / "gt.csv"), "--ckpt",
            str(t / "bad.pth")]


@pytest.mark.parametrize(("build", "words"), EVAL_CASES)
def test_eval_refuses(build, words, tmp_path, capfd) -> None:
    argv = build(tmp_path)
    assert_refused(capfd, tmp_path, eval_main, "evad-eval", argv, words)


def test_eval_good_path_and_json(tmp_path, capfd) -> None:
    argv = good(tmp_path)
    before = set(snapshot(tmp_path))
    code = eval_main([*argv, "--labelmap", str(tmp_path / "map.pbtxt"),
                      "--json", str(tmp_path / "r.json")])
    out, err = capfd.readouterr()
    assert code == 0 and err == "", err
    assert "walk" in out and "frame mAP@0.5: 0.8333" in out
    res = json.loads((tmp_path / "r.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert res["mAP"] == pytest.approx(5 / 6) and res["keyframes"] == 2
    assert res["per_class"]["1"]["ap"] == pytest.approx(5 / 6)
    assert res["per_class"]["2"]["ap"] is None and res["names"] == {"1": "walk", "2": "run"}
    assert set(snapshot(tmp_path)) == before | {"r.json"}  # no temporary file left


def test_eval_tolerates_what_ava_files_hold(tmp_path, capfd) -> None:
    """A UTF-8 byte-order mark, CRLF lines, blank lines, an empty exclusions file, label_id
    items, --iou 1, a JSON in a folder to create; a mean without any AP is null in the JSON."""
    write(tmp_path / "gt.csv", ("\ufeff" + GT.replace("\n", "\r\n") + "\r\n").encode())
    write(tmp_path / "det.csv", "\n" + DET)
    write(tmp_path / "ex.csv", "")
    write(tmp_path / "map.pbtxt", 'label {\n  name: "walk"\n  label_id: 1\n  label_type: X\n}\n')
    argv = ["--gt", str(tmp_path / "gt.csv"), "--det", str(tmp_path / "det.csv"),
            "--exclusions", str(tmp_path / "ex.csv"), "--labelmap", str(tmp_path / "map.pbtxt"),
            "--iou", "1", "--json", str(tmp_path / "new" / "r.json")]
    assert eval_main(argv) == 0
    out, err = capfd.readouterr()
    assert err == "" and "frame mAP@1.0: 0.8333" in out
    assert json.loads((tmp_path / "new" / "r.json").read_text())["mAP"] == pytest.approx(5 / 6)
    write(tmp_path / "map.pbtxt", 'item { name: "jump" id: 9 }\n')  # no ground truth: n/a
    assert eval_main(argv) == 0
    assert "frame mAP@1.0: n/a" in capfd.readouterr().out
    assert json.loads((tmp_path / "new" / "r.json").read_text())["mAP"] is None


# ----------------------------------------------------------------------------- evad-train


@pytest.fixture(scope="module")
def demo_blob(tmp_path_factory) -> dict[str, bytes]:
    """Checkpoint files (bytes) a run might find in OUT/last.pth."""
    d = tmp_path_factory.mktemp("ckpts")
    model = build_model("demo")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = list(__import__("random").Random(0).getstate())
    files = {
        "resumable": save_checkpoint(model, d / "a.pth", epoch=5, optimizer_state=opt.state_dict(),
                                     extra={"step": 5, "rng": rng}),
        "half": save_checkpoint(model, d / "h.pth", epoch=5, half=True),
        "foreign_opt": save_checkpoint(
            model, d / "o.pth", epoch=5, extra={"step": 5, "rng": rng},
            optimizer_state=torch.optim.AdamW(list(model.parameters())[:3]).state_dict()),
    }
    return {k: p.read_bytes() for k, p in files.items()}


def fake_data(t: Path) -> Path:
    """Passes the file checks of --data; the checks under test refuse before any decoding."""
    d = t / "data"
    write(d / "annotations.csv", "v,1,0.1,0.1,0.5,0.9,1,0\n")
    write(d / "videos" / "v.mp4", b"not really a video")
    return d


def train_args(t: Path, *extra: str) -> list[str]:
    return ["--data", str(fake_data(t)), "--out", str(t / "run"), "--quiet", *extra]


TRAIN_CASES: list = []


def train_case(*words: str, root_ok: bool = True):
    def register(fn):
        marks = [] if root_ok else [pytest.mark.skipif(
            os.geteuid() == 0, reason="root reads and writes files without permission")]
        TRAIN_CASES.append(pytest.param(fn, words, id=fn.__name__, marks=marks))
        return fn
    return register


@train_case("--out", "is a file, not a folder")
def out_is_a_file(t, blobs):
    write(t / "run", "x")
    return train_args(t)


@train_case("--out", "is a file, not a folder")
def out_under_a_file(t, blobs):
    write(t / "f", "x")
    return [*train_args(t), "--out", str(t / "f" / "run")]


@train_case("--out", "not writable", root_ok=False)
def out_unwritable(t, blobs):
    (t / "run").mkdir(mode=0o500)
    return train_args(t)


@train_case("last.pth", "is a directory", "another --out")
def last_pth_is_a_directory(t, blobs):
    (t / "run" / "last.pth").mkdir(parents=True)
    return train_args(t, "--resume")


@train_case("last.pth", "cannot read checkpoint", "truncated")
def resume_corrupt(t, blobs):
    write(t / "run" / "last.pth", os.urandom(10_000))
    return train_args(t, "--resume")


@train_case("last.pth", "cannot read checkpoint", "truncated")
def resume_truncated(t, blobs):
    data = blobs["resumable"]
    write(t / "run" / "last.pth", data[: len(data) // 2])
    return train_args(t, "--resume")


@train_case("last.pth", "is empty")
def resume_empty(t, blobs):
    write(t / "run" / "last.pth", b"")
    return train_args(t, "--resume")


@train_case("last.pth", "not a checkpoint dict")
def resume_not_a_checkpoint(t, blobs):
    (t / "run").mkdir()
    torch.save([1, 2, 3], t / "run" / "last.pth")
    return train_args(t, "--resume")


@train_case("last.pth", "trained with preset 'demo', not 'tiny'", "--preset demo")
def resume_other_preset(t, blobs):
    write(t / "run" / "last.pth", blobs["resumable"])
    return train_args(t, "--resume", "--preset", "tiny")


@train_case("last.pth", "not a resumable training checkpoint", "--half-weights")
def resume_half_weights_copy(t, blobs):
    write(t / "run" / "last.pth", blobs["half"])
    return train_args(t, "--resume")


@train_case("last.pth", "optimizer state does not fit")
def resume_foreign_optimizer_state(t, blobs):
    write(t / "run" / "last.pth", blobs["foreign_opt"])
    return train_args(t, "--resume", "--steps", "10")


@train_case("already trained 5 steps", "--steps > 5")
def resume_nothing_left_to_do(t, blobs):
    write(t / "run" / "last.pth", blobs["resumable"])
    return train_args(t, "--resume", "--steps", "5")


@train_case("--data", "does not exist", "--make-data")
def data_missing(t, blobs):
    return ["--data", str(t / "nodata"), "--out", str(t / "run")]


@train_case("--data", "annotations.csv", "does not exist", "--make-data")
def data_without_annotations_csv(t, blobs):
    (t / "data").mkdir()
    return ["--data", str(t / "data"), "--out", str(t / "run")]


@train_case("annotations.csv", "not UTF-8", "line 1")
def data_annotations_not_utf8(t, blobs):
    argv = train_args(t)
    write(t / "data" / "annotations.csv", b"v\xff,1,0,0,1,1,1,0\n")
    return argv


@train_case("annotations.csv:1", "column 3 (x1)", "finite")
def data_annotations_nan_box(t, blobs):
    argv = train_args(t)
    write(t / "data" / "annotations.csv", "v,1,nan,0.1,0.5,0.9,1,0\n")
    return argv


@train_case("v.mp4", "does not exist")
def data_annotated_video_missing(t, blobs):
    argv = train_args(t)
    (t / "data" / "videos" / "v.mp4").unlink()
    return argv


@train_case("--val", "does not exist")
def val_missing(t, blobs):
    return train_args(t, "--val", str(t / "noval"))


@train_case("--seed", "[0, 4294967295]")
def seed_too_large(t, blobs):
    return train_args(t, "--seed", str(2**64))


@train_case("pass --data DIR")
def no_data(t, blobs):
    return ["--out", str(t / "run")]


@train_case("unknown preset 'huge'", "demo")
def unknown_preset(t, blobs):
    return train_args(t, "--preset", "huge")


@train_case("--make-data", "is a file")
def make_data_into_a_file(t, blobs):
    write(t / "d", "x")
    return ["--make-data", str(t / "d"), "--videos", "1"]


@train_case("--half-weights", "is a directory")
def half_weights_is_a_directory(t, blobs):
    (t / "h.pth").mkdir()
    return train_args(t, "--half-weights", str(t / "h.pth"))


for _flag, _value, _want in [
        ("--steps", "0", ">= 1"), ("--steps", "2.5", "not an integer"),
        ("--batch", "0", ">= 1"), ("--lr", "0", "> 0"), ("--lr", "-0.001", "> 0"),
        ("--lr", "nan", "> 0"), ("--lr", "inf", "> 0"), ("--warmup", "-1", ">= 0"),
        ("--checkpoint-every", "0", ">= 1"), ("--val-every", "0", ">= 1"),
        ("--videos", "0", ">= 1"), ("--duration", "0", "[2, 3600]"),
        ("--duration", "nan", "[2, 3600]"), ("--threads", "-1", "[0, 1024]"),
        ("--seed", "-1", ">= 0"), ("--steps", "many", "'many' is not an integer")]:
    TRAIN_CASES.append(pytest.param(
        lambda t, blobs, f=_flag, v=_value: train_args(t, f, v),
        (f"argument {_flag}", _want), id=f"flag{_flag}={_value}"))


@pytest.mark.parametrize(("build", "words"), TRAIN_CASES)
def test_train_refuses(build, words, tmp_path, capfd, request) -> None:
    blobs = request.getfixturevalue("demo_blob") if "resume" in request.node.name else {}
    argv = build(tmp_path, blobs)
    assert_refused(capfd, tmp_path, train_main, "evad-train", argv, words)


@pytest.fixture(scope="module")
def one_keyframe(tmp_path_factory) -> Path:
    """A real (tiny) dataset: one video of 2 s, one annotated keyframe."""
    return generate_dataset(tmp_path_factory.mktemp("data") / "d", 1, seed=3, duration=2.0,
                            progress=False)


def test_train_batch_larger_than_the_data(one_keyframe, tmp_path, capfd) -> None:
    assert_refused(capfd, tmp_path, train_main, "evad-train",
                   ["--data", str(one_keyframe), "--out", str(tmp_path / "run"), "--batch", "2",
                    "--quiet"], ("1 annotated keyframe", "fewer than --batch 2", "--batch 1"))


def test_train_runs_and_resumes(one_keyframe, tmp_path, capfd) -> None:
    """The good path: a one-step run, resumed for one more step; then nothing left to do."""
    run_dir = tmp_path / "run"
    base = ["--data", str(one_keyframe), "--out", str(run_dir), "--batch", "1", "--warmup", "0",
            "--quiet", "--threads", "2"]
    assert train_main([*base, "--steps", "1"]) == 0
    assert train_main([*base, "--steps", "2", "--resume"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.count("evad-train: checkpoint") == 2
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "last.pth", "loss_log.jsonl", "train_config.json"]  # nothing temporary left
    steps = [json.loads(line)["step"] for line in open(run_dir / "loss_log.jsonl")]
    assert steps == [0, 1]  # continued after step 1, not from 0
    assert json.loads((run_dir / "train_config.json").read_text())["steps"] == 2
    assert_refused(capfd, tmp_path, train_main, "evad-train", [*base, "--steps", "2",
                   "--resume"], ("already trained 2 steps",))


def test_unwritable_outputs_as_any_user(tmp_path, capfd, monkeypatch) -> None:
    """The permission checks, also where the tests run as root (who may write anywhere): the
    folder is reported unwritable by ``os.access`` and both commands refuse before writing."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro and
                        mode & os.W_OK else real(p, mode, **kw))
    assert_refused(capfd, tmp_path, eval_main, "evad-eval",
                   [*good(tmp_path), "--json", str(ro / "r.json")], ("--json", "not writable"))
    assert_refused(capfd, tmp_path, train_main, "evad-train",
                   [*train_args(tmp_path), "--out", str(ro / "run")],
                   ("--out", "not writable", "permission denied"))
