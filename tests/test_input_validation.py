"""Input validation, in the spirit of Triton's L0_input_validation: generated bad checkpoints,
videos, ONNX files, engines, flags and output folders for evad-trt-run, evad-export,
evad-parity, evad-flops, evad-build-engine and evad-build-plugins.

Each case asserts the exit code (non-zero), that stderr is exactly one line starting with
``<command>: error:`` holding the expected words and no traceback or raw exception name, and
that the files under the test folder are exactly those that were there before (nothing
half-written, not even an output folder). The process tests (two runs on one --out, kills,
a model replaced, a failed run over a finished one, a full disk) are in test_run_safety.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from conftest import make_video
from onnx import TensorProto, helper

from evad.cli.export import main as export_main
from evad.cli.parity import main as parity_main
from evad.engines.cli import main as build_engine_main
from evad.evaluation.cli import main as eval_main
from evad.models.checkpoint import save_checkpoint
from evad.models.flops import main as flops_main
from evad.plugins.build import main as build_plugins_main
from evad.runtime.cli import main as run_main

#: what a user must never see: a traceback or a bare exception class name
RAW = re.compile(r"Traceback|\b(KeyError|JSONDecodeError|TypeError|ValueError|IndexError|"
                 r"UnicodeDecodeError|AttributeError|RuntimeError|UnpicklingError|"
                 r"OverflowError|ZeroDivisionError|csv\.Error)\b")


class Obj:
    """A class whose pickled instance the safe checkpoint loader refuses."""


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _call(main: Callable, argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # the argument parser's refusal
        return int(e.code or 0)


def assert_refused(capfd, prog: str, main: Callable, argv: list, words: tuple[str, ...],
                   root: Path) -> str:
    """Run ``main(argv)``; assert one clear line and nothing left under ``root``."""
    before = _snapshot(root)
    capfd.readouterr()
    code = _call(main, argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"exit 0 for {argv}"
    assert len(lines) == 1, f"not one line:\n{err}"
    assert lines[0].startswith(f"{prog}: error:"), lines[0]
    assert not RAW.search(lines[0]), lines[0]
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    assert _snapshot(root) == before, "files were left behind"
    return lines[0]


# -- generated bad artefacts (made once) -------------------------------------------------------

@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_model, tiny_onnx) -> dict[str, Path]:
    """Every bad input file, by name, in one folder the tests never write into."""
    d = tmp_path_factory.mktemp("bad")
    good = save_checkpoint(tiny_model, d / "good.pth")
    blob = torch.load(good, weights_only=True)
    files: dict[str, Path] = {"good_ckpt": good, "dir": d / "a_dir"}
    (d / "a_dir").mkdir()

    def ckpt(name: str, change: Callable[[dict], None]) -> None:
        b = {**blob, "model_state": dict(blob["model_state"]), "cfg": blob["cfg"]}
        change(b)
        torch.save(b, d / name)
        files[name] = d / name

    def cfg(key: str, value: object) -> Callable[[dict], None]:
        def change(b: dict) -> None:
            c = yaml.safe_load(b["cfg"])
            *parents, leaf = key.split(".")
            node = c
            for p in parents:
                node = node[p]
            node[leaf] = value
            b["cfg"] = yaml.safe_dump(c)
        return change

    def all_nan(b: dict) -> None:
        b["model_state"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                            for k, v in b["model_state"].items()}

    def one_int(b: dict) -> None:
        k = "det_head.decoder.blocks.0.action_logits.weight"
        b["model_state"][k] = b["model_state"][k].long()

    def one_inf(b: dict) -> None:
        k = "patch_embed.proj.weight"
        v = b["model_state"][k].clone()
        v.view(-1)[3] = float("inf")
        b["model_state"][k] = v

    ckpt("nan.pth", all_nan)
    ckpt("inf.pth", one_inf)
    ckpt("int64.pth", one_int)
    ckpt("mean_abc.pth", cfg("DATA.MEAN", "abc"))
    ckpt("std_zero.pth", cfg("DATA.STD", [0.2, 0.0, 0.2]))
    ckpt("classes_neg.pth", cfg("MODEL.NUM_CLASSES", -1))
    ckpt("huge.pth", cfg("ViT.EMBED_DIM", 100000))
    ckpt("depth_str.pth", cfg("ViT.DEPTH", "twelve"))
    ckpt("pickled.pth", lambda b: b.update(extra=Obj()))
    # a python tag in a cfg value: read as a plain list, then refused by type
    c = yaml.safe_load(blob["cfg"])
    c["DATA"]["MEAN"] = "TAGGED"
    tagged = yaml.safe_dump(c).replace("MEAN: TAGGED",
                                       'MEAN: !!python/object/apply:os.system ["true"]')
    assert "!!python" in tagged
    ckpt("python_tag.pth", lambda b: b.update(cfg=tagged))
    (d / "text.pth").write_text("not a checkpoint\n")
    files["text.pth"] = d / "text.pth"
    (d / "empty.pth").write_bytes(b"")
    files["empty.pth"] = d / "empty.pth"
    (d / "cut.pth").write_bytes(good.read_bytes()[:5000])
    files["cut.pth"] = d / "cut.pth"

    model = onnx.load(str(tiny_onnx))

    def with_meta(name: str, key: str | None, value: str | None) -> None:
        """The tiny export with metadata ``key`` set to ``value`` (None: removed; key None:
        every evad key removed)."""
        m = onnx.ModelProto()
        m.CopyFrom(model)
        props = [(p.key, p.value) for p in m.metadata_props]
        del m.metadata_props[:]
        for k, v in props:
            if key is None or (k == key and value is None):
                continue
            entry = m.metadata_props.add()
            entry.key, entry.value = k, (value if k == key else v)
        onnx.save(m, str(d / name))
        files[name] = d / name

    with_meta("no_meta.onnx", None, None)
    with_meta("meta_mean_abc.onnx", "evad.mean", '"abc"')
    with_meta("meta_not_json.onnx", "evad.std", "{{")
    with_meta("meta_no_labels.onnx", "evad.labels", None)
    with_meta("meta_no_preset.onnx", "evad.preset", None)
    with_meta("meta_threshold.onnx", "evad.person_threshold", "7")
    # evad metadata on a graph that is not the detector (another output)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["clip"], ["features"])], "other",
        [helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["B", 3, 16, 96, 192]),
         helper.make_tensor_value_info("image_size", TensorProto.INT64, ["B", 2])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 3, 16, 96, 192])])
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    other.metadata_props.extend(model.metadata_props)
    onnx.save(other, str(d / "other_outputs.onnx"))
    files["other_outputs.onnx"] = d / "other_outputs.onnx"
    (d / "garbage.onnx").write_bytes(os.urandom(3000))
    files["garbage.onnx"] = d / "garbage.onnx"
    (d / "garbage.engine").write_bytes(os.urandom(3000))
    files["garbage.engine"] = d / "garbage.engine"

    files["video"] = make_video(d / "v.mp4", 2.0, 160, 90, 10.0)
    (d / "empty.mp4").write_bytes(b"")
    files["empty.mp4"] = d / "empty.mp4"
    (d / "noise.mp4").write_bytes(os.urandom(20000))
    files["noise.mp4"] = d / "noise.mp4"
    os.mkfifo(d / "fifo.mp4")
    files["fifo.mp4"] = d / "fifo.mp4"
    (d / "a_file").write_text("x")
    files["a_file"] = d / "a_file"
    return files


# -- evad-trt-run ------------------------------------------------------------------------------

# (case id, argv builder (bad, out) -> argv, words in the message)
RUN_CASES: list[tuple[str, Callable[[dict, Path], list], tuple[str, ...]]] = [
    ("video-missing", lambda b, o: [b["dir"] / "nope.mp4", "--onnx", b["onnx"]],
     ("video", "does not exist")),
    ("video-empty", lambda b, o: [b["empty.mp4"], "--onnx", b["onnx"]], ("empty (0 bytes)",)),
    ("video-fifo", lambda b, o: [b["fifo.mp4"], "--onnx", b["onnx"]], ("is a FIFO",)),
    ("video-device", lambda b, o: ["/dev/null", "--onnx", b["onnx"]],
     ("character device",)),
    ("video-noise", lambda b, o: [b["noise.mp4"], "--onnx", b["onnx"]], ("cannot open",)),
    ("video-empty-dir", lambda b, o: [b["dir"], "--onnx", b["onnx"]], ("has no frames",)),
    ("onnx-missing", lambda b, o: [b["video"], "--onnx", b["dir"] / "x.onnx"],
     ("ONNX model", "does not exist")),
    ("onnx-dir", lambda b, o: [b["video"], "--onnx", b["dir"]], ("is a directory",)),
    ("onnx-garbage", lambda b, o: [b["video"], "--onnx", b["garbage.onnx"]],
     ("not a readable ONNX",)),
    ("onnx-no-metadata", lambda b, o: [b["video"], "--onnx", b["no_meta.onnx"]],
     ("no evad metadata", "evad-export")),
    ("onnx-other-outputs", lambda b, o: [b["video"], "--onnx", b["other_outputs.onnx"]],
     ("no output 'boxes'", "re-export")),
    ("onnx-meta-mean", lambda b, o: [b["video"], "--onnx", b["meta_mean_abc.onnx"]],
     ("broken evad metadata", "mean")),
    ("onnx-meta-json", lambda b, o: [b["video"], "--onnx", b["meta_not_json.onnx"]],
     ("evad.std is not JSON",)),
    ("onnx-meta-labels", lambda b, o: [b["video"], "--onnx", b["meta_no_labels.onnx"]],
     ("labels missing",)),
    ("onnx-meta-threshold", lambda b, o: [b["video"], "--onnx", b["meta_threshold.onnx"]],
     ("person_threshold",)),
    ("engine-missing", lambda b, o: [b["video"], "--engine", b["dir"] / "m.engine"],
     ("TensorRT engine", "does not exist")),
    ("engine-missing-trt", lambda b, o: [b["video"], "--engine", b["dir"] / "m.engine",
                                         "--backend", "trt"], ("does not exist",)),
    ("ckpt-missing", lambda b, o: [b["video"], "--ckpt", b["dir"] / "m.pth", "--backend",
                                   "torch"], ("checkpoint", "does not exist")),
    ("ckpt-nan", lambda b, o: [b["video"], "--ckpt", b["nan.pth"], "--backend", "torch"],
     ("NaN or infinite",)),
    ("ckpt-inf", lambda b, o: [b["video"], "--ckpt", b["inf.pth"], "--backend", "torch"],
     ("patch_embed.proj.weight", "1 of")),
    ("ckpt-int64", lambda b, o: [b["video"], "--ckpt", b["int64.pth"], "--backend", "torch"],
     ("action_logits.weight", "int64")),
    ("ckpt-mean", lambda b, o: [b["video"], "--ckpt", b["mean_abc.pth"], "--backend", "torch"],
     ("mean",)),
    ("ckpt-pickled", lambda b, o: [b["video"], "--ckpt", b["pickled.pth"], "--backend",
                                   "torch"], ("runs code", "--convert-trusted")),
    ("ckpt-text", lambda b, o: [b["video"], "--ckpt", b["text.pth"], "--backend", "torch"],
     ("cannot read checkpoint",)),
    ("ckpt-empty", lambda b, o: [b["video"], "--ckpt", b["empty.pth"], "--backend", "torch"],
     ("empty (0 bytes)",)),
    ("ckpt-cut", lambda b, o: [b["video"], "--ckpt", b["cut.pth"], "--backend", "torch"],
     ("cannot read checkpoint",)),
    ("fps-nan", lambda b, o: [b["video"], "--onnx", b["onnx"], "--fps", "nan"],
     ("--fps", "nan")),
    ("csv-min-score-nan", lambda b, o: [b["video"], "--onnx", b["onnx"], "--csv-min-score",
                                        "nan"], ("--csv-min-score",)),
    ("stride-zero", lambda b, o: [b["video"], "--onnx", b["onnx"], "--keyframe-stride", "0"],
     ("--keyframe-stride",)),
    ("stride-inf", lambda b, o: [b["video"], "--onnx", b["onnx"], "--keyframe-stride", "inf"],
     ("--keyframe-stride",)),
    ("threshold-2", lambda b, o: [b["video"], "--onnx", b["onnx"], "--person-threshold", "2"],
     ("[0, 1]",)),
    ("batch-negative", lambda b, o: [b["video"], "--onnx", b["onnx"], "--batch-size", "-1"],
     ("--batch-size",)),
    ("top-k-text", lambda b, o: [b["video"], "--onnx", b["onnx"], "--top-k", "five"],
     ("not an integer",)),
    ("video-id-dots", lambda b, o: [b["video"], "--onnx", b["onnx"], "--video-id", "../../x"],
     ("--video-id", "plain name")),
    ("video-id-absolute", lambda b, o: [b["video"], "--onnx", b["onnx"], "--video-id",
                                        "/tmp/x"], ("path separator",)),
    ("video-id-newline", lambda b, o: [b["video"], "--onnx", b["onnx"], "--video-id", "a\nb"],
     ("control character",)),
    ("video-id-empty", lambda b, o: [b["video"], "--onnx", b["onnx"], "--video-id", ""],
     ("is empty",)),
    ("video-id-comma", lambda b, o: [b["video"], "--onnx", b["onnx"], "--video-id", "a,b"],
     ("comma",)),
    ("out-is-file", lambda b, o: [b["video"], "--onnx", b["onnx"], "--out", b["a_file"]],
     ("--out", "is a file")),
    ("out-under-file", lambda b, o: [b["video"], "--onnx", b["onnx"], "--out",
                                     b["a_file"] / "sub"], ("is a file",)),
]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in RUN_CASES],
                         ids=[c[0] for c in RUN_CASES])
def test_trt_run_refuses(bad, tiny_onnx, tmp_path, capfd, monkeypatch, argv, words) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out, runs/<id>, would land here
    files = {**bad, "onnx": tiny_onnx}
    out = tmp_path / "out"
    args = argv(files, out)
    if "--out" not in args:
        args += ["--out", out]
    assert_refused(capfd, "evad-trt-run", run_main, [*args, "--quiet"], words, tmp_path)


def test_video_id_cannot_leave_runs(bad, tiny_onnx, tmp_path, capfd, monkeypatch) -> None:
    """Without --out the folder is runs/<video id>; a hostile id is refused, a plain one
    stays under runs/."""
    monkeypatch.chdir(tmp_path)
    for vid in ("../../escape", "/abs/x", "..", "a/../../b"):
        assert_refused(capfd, "evad-trt-run", run_main,
                       [bad["video"], "--onnx", tiny_onnx, "--video-id", vid, "--quiet"],
                       ("--video-id",), tmp_path)
    assert _call(run_main, [bad["video"], "--onnx", tiny_onnx, "--video-id", "clip-1",
                            "--quiet"]) == 0
    assert _snapshot(tmp_path)[:2] == ["runs", "runs/clip-1"]


# -- evad-export -------------------------------------------------------------------------------

EXPORT_CASES: list[tuple[str, Callable[[dict], list], tuple[str, ...]]] = [
    ("nan", lambda b: ["--ckpt", b["nan.pth"]], ("NaN or infinite",)),
    ("inf", lambda b: ["--ckpt", b["inf.pth"]], ("NaN or infinite",)),
    ("int64", lambda b: ["--ckpt", b["int64.pth"]], ("int64",)),
    ("mean-abc", lambda b: ["--ckpt", b["mean_abc.pth"]], ("mean", "3 finite numbers")),
    ("std-zero", lambda b: ["--ckpt", b["std_zero.pth"]], ("std", "> 0")),
    ("classes-negative", lambda b: ["--ckpt", b["classes_neg.pth"]], ("num_classes",)),
    ("huge-width", lambda b: ["--ckpt", b["huge.pth"]], ("embed_dim",)),
    ("depth-text", lambda b: ["--ckpt", b["depth_str.pth"]], ("wrong type",)),
    ("python-tag", lambda b: ["--ckpt", b["python_tag.pth"]], ("mean",)),
    ("pickled", lambda b: ["--ckpt", b["pickled.pth"]], ("pickle", "--convert-trusted")),
    ("text", lambda b: ["--ckpt", b["text.pth"]], ("cannot read checkpoint",)),
    ("dir", lambda b: ["--ckpt", b["dir"]], ("is a directory",)),
    ("fifo", lambda b: ["--ckpt", b["fifo.mp4"]], ("FIFO",)),
    ("height-huge", lambda b: ["--preset", "tiny", "--height", "100000"], ("--height",)),
    ("memory", lambda b: ["--preset", "vit_b_ktp", "--height", "2048", "--width", "2048"],
     ("GiB", "smaller")),
    ("height-odd", lambda b: ["--preset", "tiny", "--height", "100"], ("multiples of 32",)),
    ("keep-rate-nan", lambda b: ["--preset", "tiny", "--keep-rate", "nan"], ("--keep-rate",)),
    ("opset-old", lambda b: ["--preset", "tiny", "--opset", "9"], ("--opset",)),
    ("parity-negative", lambda b: ["--preset", "tiny", "--parity-clips", "-1"],
     ("--parity-clips",)),
    ("name-path", lambda b: ["--preset", "tiny", "--name", "../x"], ("--name", "plain name")),
    ("out-is-file", lambda b: ["--preset", "tiny", "--out", b["a_file"]], ("is a file",)),
    ("unknown-preset", lambda b: ["--preset", "vit_h"], ("invalid choice",)),
]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in EXPORT_CASES],
                         ids=[c[0] for c in EXPORT_CASES])
def test_export_refuses(bad, tmp_path, capfd, argv, words) -> None:
    args = argv(bad)
    if "--out" not in args:
        args += ["--out", tmp_path / "exports"]
    assert_refused(capfd, "evad-export", export_main, [*args, "--onnx-only", "--quiet"], words,
                   tmp_path)


def test_export_engine_step_refused_first_without_tensorrt(bad, tmp_path, capfd) -> None:
    from evad.engines import missing_for_engine_build

    if not [m for m in missing_for_engine_build() if not m.optional]:
        pytest.skip("this machine builds engines")
    line = assert_refused(capfd, "evad-export", export_main,
                          ["--ckpt", bad["good_ckpt"], "--fp16", "--out", tmp_path / "e"],
                          ("TensorRT", "--onnx-only", "evad-build-engine", "--fp16"), tmp_path)
    assert "<out>/<name>.onnx" in line


# -- evad-parity, evad-eval --data (checkpoint validation at load) -----------------------------

PARITY_CASES: list[tuple[str, Callable[[dict, Path], list], tuple[str, ...]]] = [
    ("onnx-missing", lambda b, t: ["--onnx", b["dir"] / "x.onnx"], ("does not exist",)),
    ("meta-no-preset", lambda b, t: ["--onnx", b["meta_no_preset.onnx"], "--ckpt",
                                     b["good_ckpt"]], ("has no preset",)),
    ("meta-json", lambda b, t: ["--onnx", b["meta_not_json.onnx"]], ("not JSON",)),
    ("ckpt-nan", lambda b, t: ["--onnx", b["onnx"], "--ckpt", b["nan.pth"]], ("NaN",)),
    ("ckpt-int64", lambda b, t: ["--onnx", b["onnx"], "--ckpt", b["int64.pth"]], ("int64",)),
    ("ckpt-mean", lambda b, t: ["--onnx", b["onnx"], "--ckpt", b["mean_abc.pth"]],
     ("mean",)),
    ("json-dir", lambda b, t: ["--onnx", b["onnx"], "--json", t], ("--json", "directory")),
    ("clips-zero", lambda b, t: ["--onnx", b["onnx"], "--clips", "0"], ("--clips",)),
    ("engine-missing", lambda b, t: ["--engine", b["dir"] / "m.engine"], ("does not exist",)),
]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in PARITY_CASES],
                         ids=[c[0] for c in PARITY_CASES])
def test_parity_refuses(bad, tiny_onnx, tmp_path, capfd, argv, words) -> None:
    assert_refused(capfd, "evad-parity", parity_main, argv({**bad, "onnx": tiny_onnx},
                                                           tmp_path), words, tmp_path)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    from evad.datasets.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("evaldata") / "d", 1, seed=3, width=160,
                            height=90, fps=10.0, duration=2.0, progress=False)


@pytest.mark.parametrize(("name", "words"), [
    ("nan.pth", ("NaN or infinite",)), ("int64.pth", ("int64",)), ("mean_abc.pth", ("mean",)),
    ("pickled.pth", ("--convert-trusted",)),
])
def test_eval_data_refuses_bad_checkpoints(bad, eval_data, tmp_path, capfd, name,
                                           words) -> None:
    assert_refused(capfd, "evad-eval", eval_main, ["--data", eval_data, "--ckpt", bad[name],
                                                   "--json", tmp_path / "r.json"],
                   words, tmp_path)


def test_convert_trusted_makes_a_safe_file(bad, tmp_path, capfd) -> None:
    """The pickle refusal's advice works: the converted file loads without trusted=True."""
    from evad.models.checkpoint import load_checkpoint, main

    dst = tmp_path / "safe.pth"
    assert main(["--convert-trusted", str(bad["pickled.pth"]), str(dst)]) == 0
    assert "loads without trusted=True" in capfd.readouterr().out
    model, meta = load_checkpoint(dst)
    ref, _ = load_checkpoint(bad["good_ckpt"])
    assert meta["dtype"] == "float32"
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_half_weights_are_accepted_and_said(tiny_model, tmp_path) -> None:
    from evad.models.checkpoint import load_checkpoint

    path = save_checkpoint(tiny_model, tmp_path / "half.pth", half=True)
    model, meta = load_checkpoint(path)
    assert meta["dtype"] == "float16"
    w = model.state_dict()["patch_embed.proj.weight"]
    assert w.dtype == torch.float32 and torch.equal(
        w, tiny_model.state_dict()["patch_embed.proj.weight"].half().float())


# -- evad-flops, evad-build-engine, evad-build-plugins -----------------------------------------

@pytest.mark.parametrize(("argv", "words"), [
    (["--height", "0"], ("--height", "[32, 4096]")),
    (["--height", "nan"], ("--height",)),
    (["--height", "100"], ("multiples of 32",)),
    (["--width", "-32"], ("--width",)),
    (["--keep-rate", "2"], ("--keep-rate", "(0, 1]")),
    (["vit_h"], ("invalid choice",)),
])
def test_flops_refuses(tmp_path, capfd, argv, words) -> None:
    line = assert_refused(capfd, "evad-flops", flops_main, argv, words, tmp_path)
    assert "preset" not in capfd.readouterr().out or line  # no table printed before the error


@pytest.mark.parametrize(("argv", "words"), [
    (lambda b, t: [b["dir"] / "x.onnx"], ("ONNX model", "does not exist")),
    (lambda b, t: [b["dir"]], ("is a directory",)),
    (lambda b, t: [b["empty.pth"]], ("empty",)),
    (lambda b, t: [b["onnx"], "--out", t], ("--out", "is a directory")),
    (lambda b, t: [b["onnx"], "--workspace", "nan"], ("--workspace",)),
    (lambda b, t: [b["onnx"], "--engine-batch", "4,2,1"], ("--engine-batch",)),
])
def test_build_engine_refuses(bad, tiny_onnx, tmp_path, capfd, argv, words) -> None:
    assert_refused(capfd, "evad-build-engine", build_engine_main,
                   argv({**bad, "onnx": tiny_onnx}, tmp_path), words, tmp_path)


@pytest.mark.parametrize(("argv", "words"), [
    (lambda t: ["--jobs", "0"], ("--jobs",)),
    (lambda t: ["--tensorrt-include", t / "none"], ("--tensorrt-include", "does not exist")),
    (lambda t: ["--static-registration", "--tensorrt-lib", t / "libnvinfer.so"],
     ("--tensorrt-lib", "does not exist")),
    (lambda t: ["--tensorrt-lib", "x.so"], ("--static-registration",)),
])
def test_build_plugins_refuses(tmp_path, capfd, argv, words) -> None:
    assert_refused(capfd, "evad-build-plugins", build_plugins_main, argv(tmp_path), words,
                   tmp_path)


def test_debug_keeps_the_traceback(bad, tiny_onnx, tmp_path, monkeypatch) -> None:
    """EVAD_DEBUG=1: the developer gets the exception itself."""
    from evad.errors import EvadError

    monkeypatch.setenv("EVAD_DEBUG", "1")
    with pytest.raises(EvadError, match="no evad metadata"):
        run_main([str(bad["video"]), "--onnx", str(bad["no_meta.onnx"]), "--out",
                  str(tmp_path / "o"), "--quiet"])
