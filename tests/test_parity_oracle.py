"""The float64-oracle parity judge (``evad.export.parity``), proven both ways.

Default-initialised (not calmed) models amplify fp32 rounding: their boxes move by 1e-3 to 1e-2
px between two correct fp32 runs, so absolute bars made the verdict a coin toss. The judge holds
each output's error against a float64 run of the same forced reference to ``k`` times the fp32
reference's own error there. Here: default-initialised tiny checkpoints at 288x512 pass
``evad-export``'s own check (fused attention) and the standard-attention graph; deliberately
wrong graphs of the same model fail with a line naming the failing output: one weight of one
encoder block off by 1e-3 relative and RoIAlign with the other alignment; and, on the calmed
tiny export, the keyframe weight ignored and (block 3 made to tie exactly) a top-k with the
opposite tie order.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_H, TINY_W
from onnx import numpy_helper

from evad.cli.export import main as export_main
from evad.export.onnx_export import save_model
from evad.export.ort_runner import OrtRunner
from evad.export.parity import (
    FP32_THRESHOLDS,
    ORACLE_OUTPUTS,
    TWINS,
    _tie_breaks,
    compare,
    seeded_inputs,
)
from evad.fused_attention import decompose_fused_attention
from evad.models import EVAD, build_model, load_checkpoint
from evad.models import vit as vit_module
from evad.models.keyframe_topk_prune import importance, pruned_count
from evad.models.runner import TorchRunner

H, W = 288, 512
OUTPUTS = tuple(ORACLE_OUTPUTS)


def _default_checkpoint(folder: Path, preset: str, seed: int) -> Path:
    """A default-initialised (not calmed) model saved as the issue did: ``model_state`` only."""
    torch.manual_seed(seed)
    path = folder / f"{preset}{seed}.pth"
    torch.save({"model_state": build_model(preset).eval().state_dict()}, path)
    return path


def _evad_export(ckpt: Path, out: Path) -> dict:
    """``evad-export --ckpt C --onnx-only`` at 288x512 (one parity clip, seed 0: its defaults);
    returns the parity JSON it wrote beside the ONNX."""
    code = export_main(["--ckpt", str(ckpt), "--onnx-only", "--height", str(H), "--width",
                        str(W), "--out", str(out), "--quiet"])
    assert code == 0, f"evad-export failed parity on {ckpt.name}"
    return json.loads((out / f"{ckpt.stem}.parity.json").read_text())


def _assert_oracle_json(d: dict) -> None:
    """The parity JSON records, per output, both errors against the oracle and their ratio."""
    assert d["passed"] and d["oracle_clips"] == d["clips"] == 1
    for o in OUTPUTS:
        e = d["oracle"][o]
        ref, back, clip = e["reference_max_abs"], e["backend_max_abs"], e["per_clip"][0]
        assert ref > 0 and back > 0, o
        assert e["ratio"] == pytest.approx(back / ref) and e["ratio"] <= e["k"], o
        assert len(clip["fp32_runs"]) == 1 + TWINS and max(clip["fp32_runs"]) == ref, o
        assert e["margin"] <= 1.0 and e["passed"], o


def _one_clip(model: EVAD, h: int = H, w: int = W, seed: int = 0):
    return seeded_inputs(1, 1, model.preset.num_frames, h, w, seed)


def _failing_outputs(report) -> set[str]:
    return {f.split(":")[0] for f in report.failures}


@pytest.fixture(scope="module")
def default_tiny(tmp_path_factory) -> tuple[EVAD, onnx.ModelProto, dict, Path]:
    """The issue's case: a default-initialised tiny checkpoint (seed 0) through evad-export at
    288x512. Returns the reference as evad-export loads it, the ONNX, its parity JSON, and a
    scratch folder."""
    tmp = tmp_path_factory.mktemp("default_tiny")
    ckpt = _default_checkpoint(tmp, "tiny", 0)
    d = _evad_export(ckpt, tmp / "out")
    model, _ = load_checkpoint(ckpt)
    return model.eval(), onnx.load(str(tmp / "out" / "tiny0.onnx")), d, tmp


def _ort(proto: onnx.ModelProto, folder: Path, name: str) -> OrtRunner:
    return OrtRunner(save_model(proto, folder / f"{name}.onnx"), cuda=False)


def _standard(onnx_path: Path, folder: Path) -> OrtRunner:
    """The export with attention decomposed, in ONNX Runtime (the protos freed before it runs:
    vit_b_ktp's are 0.7 GB each)."""
    proto = decompose_fused_attention(onnx.load(str(onnx_path)))
    path = save_model(proto, folder / "standard.onnx")
    del proto
    return OrtRunner(path, cuda=False)


def test_default_tiny_passes_evad_export(default_tiny) -> None:
    """Bar 2, seed 0: evad-export's own check (fused attention) passes, and its JSON holds
    the oracle errors and ratios."""
    *_, d, _ = default_tiny
    _assert_oracle_json(d)
    # the model does amplify rounding: the fp32 reference's own box error is far above a
    # well-conditioned model's (calmed tiny: ~1e-4 px)
    assert d["oracle"]["boxes"]["reference_max_abs"] > 1e-3
    assert all(d["oracle"][o]["conclusive"] for o in OUTPUTS)  # yet not so far it hides errors
    # not asserted: that the absolute bars this judge replaced (boxes 1e-2 px, probabilities
    # 1e-4) fail it. They did on the AMX Xeon; on an AMD EPYC (2026-12-07) the export was
    # 0.0024 px and 2.0e-5 off: a fixed bar says which CPU ran it, the ratio above does not


def test_default_tiny_standard_attention_passes(default_tiny) -> None:
    """The same export with attention as MatMul + Softmax + MatMul (the graph TensorRT's parser
    sees): another fp32 summation order, the same verdict."""
    model, proto, _, tmp = default_tiny
    report = compare(model, _ort(decompose_fused_attention(proto), tmp, "standard"),
                     *_one_clip(model))
    assert report.passed, report.lines()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_default_tiny_other_seeds_pass(tmp_path, seed: int) -> None:
    """Bar 2, seeds 1..4 (about 50 s each): evad-export's check and the standard attention."""
    ckpt = _default_checkpoint(tmp_path, "tiny", seed)
    _assert_oracle_json(_evad_export(ckpt, tmp_path / "out"))
    model, _ = load_checkpoint(ckpt)
    runner = _standard(tmp_path / "out" / f"{ckpt.stem}.onnx", tmp_path)
    report = compare(model.eval(), runner, *_one_clip(model))
    assert report.passed, report.lines()


@pytest.mark.slow
def test_default_vit_b_ktp_passes(tmp_path) -> None:
    """Bar 2, the full-size model (default-initialised vit_b_ktp, seed 0; several minutes and
    about 6 GB): evad-export's check and the standard attention pass."""
    ckpt = _default_checkpoint(tmp_path, "vit_b_ktp", 0)
    d = _evad_export(ckpt, tmp_path / "out")
    _assert_oracle_json(d)
    assert not d["oracle"]["boxes"]["conclusive"]  # off by hundreds of px in fp32 already
    model, _ = load_checkpoint(ckpt)
    runner = _standard(tmp_path / "out" / f"{ckpt.stem}.onnx", tmp_path)
    report = compare(model.eval(), runner, *_one_clip(model))
    assert report.passed, report.lines()
    # fresh vit_b_ktp is chaotic: the report says its outputs cannot be judged
    assert any(line.startswith("note: the fp32 reference itself") for line in report.lines())


# -- wrong graphs ------------------------------------------------------------------------------


def _initializer_like(proto: onnx.ModelProto, weight: torch.Tensor) -> onnx.TensorProto:
    """The initializer holding ``weight`` (the exporter stores a Linear's weight transposed,
    under a generated name)."""
    w = weight.detach().numpy()
    hits = [i for i in proto.graph.initializer
            if np.array_equal(a := numpy_helper.to_array(i), w.T) or np.array_equal(a, w)]
    assert len(hits) == 1
    return hits[0]


def test_weight_off_by_1e3_in_one_block_fails(default_tiny) -> None:
    """Every weight of block 4's fc1 scaled by 1 + 1e-3: far beyond rounding (26 to 235 times
    the fp32 reference's error over default-initialised tiny seeds 0..4 and calmed seeds 0, 1;
    benchmarks/results/parity_oracle_calibration.json), in every output; block 6's decision
    fails too."""
    model, proto, _, tmp = default_tiny
    bad = copy.deepcopy(proto)
    init = _initializer_like(bad, model.blocks[4].mlp.fc1.weight)
    a = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(a * np.float32(1 + 1e-3), init.name))
    report = compare(model, _ort(bad, tmp, "weight"), *_one_clip(model))
    assert _failing_outputs(report) == {*OUTPUTS, "kept_idx_6"}, report.failures


def test_roi_align_with_the_other_alignment_fails(default_tiny) -> None:
    """RoIAlign3D's body with output_half_pixel (aligned=0) instead of half_pixel: the boxes,
    person scores and action probabilities fail; the pruning decisions (before it) do not."""
    model, proto, _, tmp = default_tiny
    bad = copy.deepcopy(proto)
    (body,) = [f for f in bad.functions if f.name == "RoIAlign3D"]
    (node,) = [n for n in body.node if n.op_type == "RoiAlign"]
    (mode,) = [a for a in node.attribute if a.name == "coordinate_transformation_mode"]
    assert mode.s == b"half_pixel"
    mode.s = b"output_half_pixel"
    report = compare(model, _ort(bad, tmp, "roialign"), *_one_clip(model))
    assert _failing_outputs(report) == set(OUTPUTS), report.failures
    assert all(d.ok for d in report.blocks)


def test_keyframe_weight_ignored_fails(tiny_model, tiny_onnx, tmp_path) -> None:
    """A reference whose preset weights keyframe rows by 4 (same weights), against the graph
    exported with weight 1 (the calmed tiny export at 96x192): block 3's decision fails, and
    nothing else; with the node's attribute set to 4 the same graph passes, so the weight alone
    made the difference."""
    weighted = build_model(tiny_model.preset.replace(keyframe_weight=4.0)).eval()
    weighted.load_state_dict(tiny_model.state_dict())
    clips, sizes = _one_clip(weighted, TINY_H, TINY_W)
    proto = onnx.load(str(tiny_onnx))
    report = compare(weighted, _ort(proto, tmp_path, "ignored"), clips, sizes)
    assert len(report.failures) == 1 and report.failures[0].startswith("kept_idx_3:"), \
        report.failures
    assert "beyond a near-tie" in report.failures[0]
    for node in proto.graph.node:
        if node.op_type == "KeyframeTopKPrune":
            (w,) = [a for a in node.attribute if a.name == "keyframe_weight"]
            assert w.f == 1.0
            w.f = 4.0
    report = compare(weighted, _ort(proto, tmp_path, "honoured"), clips, sizes)
    assert report.passed, report.lines()


def _tied(model: EVAD) -> EVAD:
    """``model`` with block 3's keys all zero: every attention row there is uniform, so every
    non-keyframe token has the same importance, exactly (in fp32 and in float64)."""
    tied = copy.deepcopy(model)
    d = tied.preset.embed_dim
    with torch.no_grad():
        tied.blocks[3].attn.qkv.weight[d:2 * d] = 0.0  # the k rows (k has no bias)
    return tied


def _opposite_tie_prune(q, k, x_nonkey, idx, keep_num, keep_den, keyframe_weight):
    """KeyframeTopKPrune with the tie order reversed: on equal importance the HIGHER position
    in x_nonkey first (a stable descending sort of the reversed scores)."""
    n = q.shape[2]
    s = n - x_nonkey.shape[1]
    kk = pruned_count(n, s, keep_num, keep_den)
    score = importance(q, k, s, keyframe_weight)
    pos = score.shape[1] - 1 - torch.sort(score.flip(1), dim=1, descending=True,
                                          stable=True).indices[:, :kk]
    x_kept = torch.gather(x_nonkey, 1, pos[..., None].expand(-1, -1, x_nonkey.shape[2]))
    return x_kept, torch.gather(idx, 1, pos)


class _OppositeTies:
    """The torch reference, its top-k breaking ties the other way (a consistent backend: its
    continuous outputs follow its own decisions)."""

    def __init__(self, model: EVAD) -> None:
        self.runner = TorchRunner(model, "opposite ties", "cpu")

    def __call__(self, clip: np.ndarray, size: np.ndarray) -> dict[str, np.ndarray]:
        with mock.patch.object(vit_module, "keyframe_topk_prune", _opposite_tie_prune):
            return self.runner(clip, size)


def test_opposite_tie_order_on_exact_ties_fails(tiny_model, tiny_onnx, tmp_path) -> None:
    """Exact ties must follow the contract (the lower position first). ONNX Runtime on the
    tied graph does and passes; a top-k with the opposite order keeps the other tokens of the
    tie, in the other order, at a relative score gap of 0 (which the near-tie rule alone would
    forgive) and fails at kept_idx_3 only."""
    tied = _tied(tiny_model)
    clips, sizes = _one_clip(tied, TINY_H, TINY_W, seed=3)
    proto = onnx.load(str(tiny_onnx))
    init = _initializer_like(proto, tiny_model.blocks[3].attn.qkv.weight)
    a = numpy_helper.to_array(init).copy()
    d = tied.preset.embed_dim
    a[:, d:2 * d] = 0.0  # the transposed weight: the k outputs are columns
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    ort = _ort(proto, tmp_path, "tied")
    kept = ort(clips[0], sizes[0])["kept_idx_3"]
    assert np.array_equal(kept[0], np.arange(kept.shape[1]))  # all tied: the first K positions
    report = compare(tied, ort, clips, sizes)
    assert report.passed and report.blocks[0].tie_breaks == 0, report.lines()

    report = compare(tied, _OppositeTies(tied), clips, sizes)
    block3 = report.blocks[0]
    assert block3.block == 3 and block3.tie_breaks > 0
    assert block3.differing_gap == 0.0 and block3.order_gap == 0.0  # a near-tie by the gaps
    assert len(report.failures) == 1 and report.failures[0].startswith("kept_idx_3:")
    assert "exact ties" in report.failures[0]


def test_tie_breaks_counts_both_kinds() -> None:
    """Inversions among kept tied tokens, and a dropped tied token below a kept one."""
    exact = np.array([0.5, 0.2, 0.5, 0.5, 0.1])
    assert _tie_breaks(exact, np.array([0, 2, 3])) == 0  # ties in ascending position
    assert _tie_breaks(exact, np.array([2, 0, 3])) == 1  # 2 before 0
    assert _tie_breaks(exact, np.array([0, 3])) == 1  # 2 dropped, tied with kept 3 above it
    assert _tie_breaks(exact, np.array([3, 2])) == 1 + 1  # both
    assert _tie_breaks(exact, np.array([0, 2, 3, 1])) == 0


# -- the oracle itself --------------------------------------------------------------------------


def test_oracle_runs_every_op_in_float64(tiny_model) -> None:
    """Every floating result of the forced float64 run is float64: no op of the reference (the
    evad::roi_align_3d custom op included) computes in float32 there. (The position table is
    built in float32 like the export's constant, then cached; the second run shows it.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class NonDouble(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and \
                        t.dtype != torch.float64:
                    self.seen.add(f"{func} -> {t.dtype}")
            return out

    clips, sizes = seeded_inputs(1, 1, 16, 96, 160, seed=1)
    clip, size = torch.from_numpy(clips[0]), torch.from_numpy(sizes[0])
    oracle = copy.deepcopy(tiny_model).double()
    with torch.no_grad():
        forced = tiny_model(clip, size).kept_indices
        oracle(clip.double(), size, kept_indices=forced)
        spy = NonDouble()
        with spy:
            out = oracle(clip.double(), size, kept_indices=forced)
    assert spy.seen == set()
    assert out.boxes.dtype == out.person_scores.dtype == out.action_logits.dtype == torch.float64


def test_identical_backend_is_at_most_the_reference(tiny_model) -> None:
    """The torch reference as its own backend: its error is one of the fp32 runs the bar is
    made of, so every ratio is at most 1; the JSON carries both errors and the ratio."""
    report = compare(tiny_model, TorchRunner(tiny_model, "same", "cpu"),
                     *seeded_inputs(1, 1, 16, 96, 160, seed=2))
    assert report.passed
    d = report.to_dict()
    for o in OUTPUTS:
        e = report.oracle[o]
        assert e.backend[0] == e.runs[0][0] and 0 < e.ratio <= 1.0
        assert d["oracle"][o]["ratio"] == e.ratio and d["oracle"][o]["backend_max_abs"] > 0
    assert any(line.startswith("action_probs: ") and "ratio" in line for line in report.lines())
    assert FP32_THRESHOLDS.oracle_k > 1


def test_clips_beyond_the_oracle_sample_are_judged_too(tiny_model) -> None:
    """With the oracle on the first batch only, the second is held against the fp32 reference
    within (k + 1) times the sample's fp32 error: a probability moved by 1e-4 there fails."""
    clips, sizes = seeded_inputs(2, 1, 16, 96, 160, seed=4)
    runner = TorchRunner(tiny_model, "same", "cpu")
    calls = []

    def moved_on_the_second(clip, size):
        out = runner(clip, size)
        calls.append(1)
        if len(calls) == 2:
            out["action_probs"] = out["action_probs"] + 1e-4
        return out

    report = compare(tiny_model, runner, clips, sizes, oracle_clips=1, twins=0)
    assert report.passed and report.oracle_clips == 1 and report.clips == 2
    assert all(len(e.beyond) == 1 and len(e.backend) == 1 for e in report.oracle.values())
    report = compare(tiny_model, moved_on_the_second, clips, sizes, oracle_clips=1, twins=0)
    assert len(report.failures) == 1 and report.failures[0].startswith("action_probs:")
    assert "clip 2 (no oracle run)" in report.failures[0]


def test_each_precision_has_its_k() -> None:
    """fp32 bars from measurement; reduced ones at twice the precision's unit roundoff over
    fp32's (2**-24), the coarser the precision the wider."""
    from evad.export.parity import REDUCED_THRESHOLDS, thresholds_for

    ks = {p: thresholds_for(p).oracle_k
          for p in ("fp32", "tf32", "fp16", "bf16", "bf16-int8w", "int8")}
    assert ks == {"fp32": 8.0, "tf32": 2.0**14, "fp16": 2.0**14, "bf16": 2.0**17,
                  "bf16-int8w": 2.0**18, "int8": 2.0**19}
    assert thresholds_for("fp32", openvino=True).oracle_k == 16.0
    assert REDUCED_THRESHOLDS == thresholds_for("bf16") and REDUCED_THRESHOLDS.min_jaccard == 0.97
    with pytest.raises(KeyError):
        thresholds_for("int4")
