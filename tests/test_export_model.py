"""The exported detector: evad-export end to end on a tiny checkpoint, ORT vs torch, metadata,
dynamic batch, keep-rate override, bad inputs, and evad-parity."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from evad.cli.export import main as export_main
from evad.cli.parity import main as parity_main
from evad.export import FP32_THRESHOLDS, compare, preset_of, seeded_inputs
from evad.export.ort_runner import OrtRunner
from evad.metadata import read_metadata
from evad.models import build_model, load_checkpoint, save_checkpoint

H, W = 96, 160


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("tiny").calm()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    code = export_main(["--ckpt", str(tiny_ckpt), "--height", str(H), "--width", str(W),
                        "--out", str(out), "--onnx-only", "--quiet", "--triton",
                        str(out / "triton")])
    assert code == 0
    return out / "tiny.onnx"


def test_export_writes_the_triton_repository(exported) -> None:
    repo = exported.parent / "triton"
    assert (repo / "evad_onnx" / "1" / "model.onnx").read_bytes() == exported.read_bytes()
    assert sorted(p.name for p in repo.iterdir()) == ["evad", "evad-repository.json",
                                                      "evad_onnx", "launch.sh"]
    cfg = (repo / "evad_onnx" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and f"dims: [ 3, 16, {H}, {W} ]" in cfg
    manifest = json.loads((repo / "evad-repository.json").read_text())
    assert manifest["evad_metadata"]["input_size"] == [H, W]


def test_graph_has_custom_nodes_and_functions(exported) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    custom = {n.op_type for n in model.graph.node if n.domain == "evad"}
    assert custom == {"RoIAlign3D", "KeyframeTopKPrune"}
    assert {(f.domain, f.name) for f in model.functions} == {("evad", "RoIAlign3D"),
                                                             ("evad", "KeyframeTopKPrune")}
    assert {o.domain: o.version for o in model.opset_import}["evad"] == 1
    assert {o.domain: o.version for o in model.opset_import}[""] >= 17
    assert [i.name for i in model.graph.input] == ["clip", "image_size"]
    assert [o.name for o in model.graph.output] == ["boxes", "person_scores", "action_probs",
                                                    "kept_idx_3", "kept_idx_6", "kept_idx_9"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch


def test_metadata_round_trip(exported, tiny_ckpt) -> None:
    meta = read_metadata(exported)
    _, cmeta = load_checkpoint(tiny_ckpt)
    assert meta["checkpoint_sha256"] == cmeta["sha256"]
    assert preset_of(meta) == cmeta["preset"]
    assert meta["input_size"] == [H, W] and meta["num_classes"] == 80
    assert meta["labels"][0] == "bend/bow (at the waist)" and len(meta["labels"]) == 80
    assert meta["mean"] == [0.45] * 3 and meta["std"] == [0.225] * 3
    assert meta["num_frames"] == 16 and meta["frame_stride"] == 4 and meta["opset"] == 18
    assert meta["tokens"] == [480, 336, 236, 166] and meta["precision"] == "fp32"
    assert "torch" in meta["exporter"]


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_matches_torch_fp32(exported, tiny_ckpt, batch: int) -> None:
    """Exported at batch 2; runs at 1 and 3. Both halves of the design's fp32 parity."""
    model, _ = load_checkpoint(tiny_ckpt)
    ort_model = OrtRunner(exported, cuda=False)
    clips, sizes = seeded_inputs(2, batch, 16, H, W, seed=batch)
    sizes[1][:, 0] = 80  # an unpadded size smaller than the clip
    report = compare(model, ort_model, clips, sizes, FP32_THRESHOLDS)
    assert report.passed, report.lines()
    assert all(d.jaccard == 1.0 for d in report.blocks)  # identical kept-token sets
    assert report.box_max_abs <= 1e-2 and report.prob_max_abs <= 1e-4
    # and the plain (unforced) torch run keeps the very same tokens
    out = ort_model(clips[0], sizes[0])
    with torch.no_grad():
        ref = model(torch.from_numpy(clips[0]), torch.from_numpy(sizes[0]))
    for blk, kept in zip((3, 6, 9), ref.kept_indices, strict=True):
        assert np.array_equal(out[f"kept_idx_{blk}"], kept.numpy())


def test_keep_rate_override_and_engine_step(tiny_ckpt, tmp_path, capsys) -> None:
    from evad.engines import missing_for_engine_build

    missing = [str(m) for m in missing_for_engine_build() if not m.optional]
    if not missing:
        pytest.skip("this machine builds engines: the engine step is tested in test_engines")
    args = ["--ckpt", str(tiny_ckpt), "--keep-rate", "0.6", "--height", str(H), "--width",
            str(W), "--out", str(tmp_path), "--fp16"]
    # the engine step's preconditions are checked first: refused before any export work
    t0 = time.perf_counter()
    assert export_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert time.perf_counter() - t0 < 5 and len(err) == 1
    assert all(m in err[0] for m in missing)  # names exactly what is missing (TensorRT, a GPU)
    assert "--onnx-only" in err[0] and "evad-build-engine" in err[0] and "--fp16" in err[0]
    assert list(tmp_path.iterdir()) == []
    assert export_main([*args, "--onnx-only"]) == 0
    out = capsys.readouterr().out
    assert "480 -> 288 -> 173 -> 104" in out  # ceil(0.6 * N) at each pruning block
    meta = read_metadata(tmp_path / "tiny.onnx")
    assert meta["keep_rates"] == {"3": 0.6, "6": 0.6, "9": 0.6} and meta["precision"] == "fp16"
    ort_model = OrtRunner(tmp_path / "tiny.onnx", cuda=False)
    clips, sizes = seeded_inputs(1, 1, 16, H, W)
    got = ort_model(clips[0], sizes[0])
    assert [got[f"kept_idx_{b}"].shape[1] for b in (3, 6, 9)] == [228, 113, 44]


@pytest.mark.parametrize(("args", "message"), [
    (["--ckpt", "missing.pth"], "does not exist"),
    (["--keep-rate", "0"], "must be a number in (0, 1]"),
    (["--keep-rate", "1.5"], "must be a number in (0, 1]"),
    (["--height", "100"], "multiples of 32"),
    (["--width", "0"], "must be an integer in [32, 2048]"),
])
def test_bad_inputs_fail_clearly(tiny_ckpt, tmp_path, capsys, args, message) -> None:
    base = ["--ckpt", str(tiny_ckpt)] if "--ckpt" not in args else []
    try:
        code = export_main(base + args + ["--out", str(tmp_path / "out"), "--onnx-only"])
    except SystemExit as e:  # refused by the argument parser
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and err[0].startswith("evad-export")
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint_fails_clearly(tmp_path, capsys) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    assert export_main(["--ckpt", str(bad), "--out", str(tmp_path / "o"), "--onnx-only"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evad_parity_cli(exported, tiny_ckpt, tmp_path, capsys) -> None:
    report = tmp_path / "parity.json"
    code = parity_main(["--onnx", str(exported), "--ckpt", str(tiny_ckpt), "--clips", "1",
                        "--batch", "2", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0 and "PASS" in out and "block 9: kept 106 non-keyframe tokens" in out
    data = json.loads(report.read_text())
    assert data["passed"] and data["clips"] == 1 and set(data["min_jaccard"]) == {"3", "6", "9"}
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    save_checkpoint(build_model("tiny"), other)
    assert parity_main(["--onnx", str(exported), "--ckpt", str(other)]) == 2
    assert "exported from another checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_vit_b_ktp_288x512_exports_and_matches(tmp_path) -> None:
    """The released architecture at the released test size (random calmed weights): ~2 min and
    ~7 GB here."""
    from evad.export import build_metadata, export_onnx, save_model
    from evad.metadata import write_metadata

    torch.manual_seed(0)
    model = build_model("vit_b_ktp").eval().calm()
    proto = export_onnx(model, 288, 512)  # full checker + strict shape inference inside
    write_metadata(proto, build_metadata(model.preset, 288, 512, 18))  # a runner reads it
    assert {n.op_type for n in proto.graph.node if n.domain == "evad"} == {"RoIAlign3D",
                                                                           "KeyframeTopKPrune"}
    assert {f.name for f in proto.functions} == {"RoIAlign3D", "KeyframeTopKPrune"}
    path = save_model(proto, tmp_path / "vit_b_ktp.onnx")
    del proto
    ort_model = OrtRunner(path, cuda=False)
    clips, sizes = seeded_inputs(1, 1, 16, 288, 512)  # batch 1; exported with batch 2
    report = compare(model, ort_model, clips, sizes, FP32_THRESHOLDS)
    assert report.passed, report.lines()
    assert [d.kept for d in report.blocks] == [3226 - 576, 2259 - 576, 1582 - 576]
    assert all(d.jaccard == 1.0 for d in report.blocks)  # identical kept-token sets
