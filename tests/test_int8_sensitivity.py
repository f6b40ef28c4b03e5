"""benchmarks/int8_sensitivity.py on the tiny INT8 export: its rows are what evad-parity's judge
says of the same graphs, and taking products back to float removes what it says it removes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest

from evad.export import parity
from evad.runtime.backends import open_runner

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_sensitivity.py"


def _script():
    spec = importlib.util.spec_from_file_location("int8_sensitivity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tiny_onnx, tiny_int8_onnx, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sensitivity") / "rows.json"
    _script().main(["--int8-onnx", str(tiny_int8_onnx), "--fp32-onnx", str(tiny_onnx),
                    "--seed", "0", "--seeds", "0", "--clips", "1",
                    "--variant", r"block 0=block0\..*",
                    "--variant", r"weights of blocks 0-3=|block[0-3]\..*",
                    "--json", str(out)])
    return {r["variant"]: r for r in json.loads(out.read_text())["rows"]}


def test_the_file_as_calibrated_is_judged_as_evad_parity_judges_it(study, tiny_int8_onnx,
                                                                   tiny_model) -> None:
    clips, sizes = parity.seeded_inputs(1, 1, tiny_model.preset.num_frames, 96, 192, 0)
    runner, _ = open_runner("ort", onnx=tiny_int8_onnx, precision="int8")
    with runner:
        report = parity.compare(tiny_model, runner, clips, sizes,
                                parity.thresholds_for("int8"), oracle_clips=0, twins=0)
    row = study["as calibrated"]["seeds"]["0"]
    assert row["min_jaccard"] == {str(b): round(j, 4) for b, j in report.min_jaccard().items()}
    assert row["action_prob_max_abs"] == round(report.prob_max_abs, 4)
    # the tiny INT8 export's roundings do move kept tokens: the rows below can tell
    assert min(row["min_jaccard"].values()) < 1.0


def test_every_backbone_product_back_in_float_gives_the_fp32_decisions(study) -> None:
    control = next(r for name, r in study.items() if name.startswith("control"))
    # blocks 0-8: 8 activation pairs and 4 products each, 6 and 3 in the pruning blocks 3 and 6
    # (the qkv product that feeds the importance is float already)
    assert control["qdq_pairs_removed"] == 7 * 8 + 2 * 6 and \
        control["weights_restored"] == 7 * 4 + 2 * 3
    seed = control["seeds"]["0"]
    assert set(seed["min_jaccard"].values()) == {1.0}
    # blocks 9-11 and the heads still run int8: the probabilities are not fp32's
    assert seed["action_prob_max_abs"] > 0


def test_a_variant_removes_only_what_its_keys_name(study, tiny_int8_onnx) -> None:
    assert study["block 0"]["qdq_pairs_removed"] == 8
    assert study["block 0"]["weights_restored"] == 0
    assert study["weights of blocks 0-3"]["qdq_pairs_removed"] == 0
    assert study["weights of blocks 0-3"]["weights_restored"] == 3 * 4 + 3
    keys = {_script().key_of(n) for n in onnx.load(str(tiny_int8_onnx)).graph.node}
    assert {f"block0.{p}" for p, _, _ in _script().PARTS} <= keys
