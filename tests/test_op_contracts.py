"""The op contracts (evad/op_contracts.py): the generated C++ header committed in
plugins/common/evadOpContract.h has not drifted, each field's bounds, kinds and the relation
are enforced, and the defaults are the torch reference ops'. Torch-free except the last tests
(which import evad.models inside the test)."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest

from evad.op_contracts import (
    CONTRACTS,
    KEYFRAME_TOPK_PRUNE,
    NAMESPACE,
    PLUGIN_VERSION,
    ROI_ALIGN_3D,
    ContractError,
    header,
    kept_token_count,
    pruned_count,
)
from evad.plugins.build import common_dir

HEADER = common_dir() / "evadOpContract.h"


def test_committed_header_is_the_generated_one() -> None:
    """plugins/common/evadOpContract.h == `python -m evad.op_contracts --header` (regenerate it
    with that command when the contract changes)."""
    assert HEADER.read_text() == header(), (
        f"{HEADER} drifted from evad/op_contracts.py: run "
        "`python -m evad.op_contracts --header > plugins/common/evadOpContract.h`")


def test_header_cli_writes_the_header() -> None:
    proc = subprocess.run([sys.executable, "-m", "evad.op_contracts", "--header"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == header()


def test_header_lists_every_field_in_order() -> None:
    text = header()
    for c in CONTRACTS.values():
        assert f'k{c.name}Name = "{c.name}"' in text
        assert f"k{c.name}NbFields = {len(c.fields)};" in text
        positions = [text.index(f'{{"{f.name}", ') for f in c.fields]
        assert positions == sorted(positions)
    assert "kKeyframeTopKPruneLessEqual[2] = {0, 1};" in text


def test_names_versions_namespace() -> None:
    assert set(CONTRACTS) == {"RoIAlign3D", "KeyframeTopKPrune"}
    for c in CONTRACTS.values():
        assert (c.domain, c.version, c.plugin_version) == (NAMESPACE, 1, PLUGIN_VERSION) == (
            "evad", 1, "1")
    assert ROI_ALIGN_3D.field_names == ("output_height", "output_width", "spatial_scale",
                                        "sampling_ratio", "aligned")
    assert KEYFRAME_TOPK_PRUNE.field_names == ("keep_num", "keep_den", "keyframe_weight")
    assert ROI_ALIGN_3D.inputs == ("features", "rois")
    assert KEYFRAME_TOPK_PRUNE.outputs == ("x_kept", "idx_kept")


@pytest.mark.parametrize("contract", list(CONTRACTS.values()), ids=list(CONTRACTS))
def test_defaults_are_valid(contract) -> None:
    assert contract.validate(contract.defaults) == contract.defaults
    assert list(contract.validate(contract.defaults)) == list(contract.field_names)


def _bad(contract, **values) -> str:
    with pytest.raises(ContractError) as info:
        contract.validate({**contract.defaults, **values})
    return str(info.value)


_BOUNDS = [(c, f) for c in CONTRACTS.values() for f in c.fields if f.minimum is not None]


@pytest.mark.parametrize(("contract", "field"), _BOUNDS,
                         ids=[f"{c.name}.{f.name}" for c, f in _BOUNDS])
def test_minimum(contract, field) -> None:
    lo = field.minimum
    step = 1 if field.kind == "int" else 0.5
    # every int field at its minimum, so that keep_den = 1 keeps keep_num <= keep_den
    base = {f.name: f.minimum if f.kind == "int" and f.minimum is not None else f.default
            for f in contract.fields}
    if field.exclusive:
        assert _bad(contract, **{field.name: lo}) == (
            f"evad::{contract.name}: {field.name} must be > {lo}, not {lo}")
        contract.validate({**base, field.name: lo + step})
    else:
        contract.validate({**base, field.name: lo})
        assert f"{field.name} must be >= {lo}, not {lo - step}" in _bad(
            contract, **{field.name: lo - step})


def test_choices() -> None:
    for ok in (0, 1):
        ROI_ALIGN_3D.validate({**ROI_ALIGN_3D.defaults, "aligned": ok})
    for bad in (-1, 2):
        assert _bad(ROI_ALIGN_3D, aligned=bad) == (
            f"evad::RoIAlign3D: aligned must be one of 0, 1, not {bad}")


def test_relation_keep_num_le_keep_den() -> None:
    KEYFRAME_TOPK_PRUNE.validate({"keep_num": 10, "keep_den": 10, "keyframe_weight": 1.0})
    assert _bad(KEYFRAME_TOPK_PRUNE, keep_num=11) == (
        "evad::KeyframeTopKPrune: keep_num <= keep_den required, got 11 > 10")
    # the relation is only judged when every field is valid on its own
    assert _bad(KEYFRAME_TOPK_PRUNE, keep_num=11, keep_den=0) == (
        "evad::KeyframeTopKPrune: keep_den must be >= 1, not 0")


@pytest.mark.parametrize("contract", list(CONTRACTS.values()), ids=list(CONTRACTS))
def test_ints_floats_and_bools(contract) -> None:
    for f in contract.fields:
        if f.kind == "int":
            assert f"{f.name} must be an integer, not 7.0" in _bad(contract, **{f.name: 7.0})
            assert f"{f.name} must be an integer, not True" in _bad(contract, **{f.name: True})
            assert f"{f.name} = {2**31} does not fit a 32-bit plugin field" in _bad(
                contract, **{f.name: 2**31})
        else:
            # a Python int is a number; the creators refuse int-typed plugin data separately
            contract.validate({**contract.defaults, f.name: 1})
            assert f"{f.name} must be a number, not False" in _bad(contract, **{f.name: False})
            assert f"{f.name} must be a number, not '1'" in _bad(contract, **{f.name: "1"})
            for x in (math.inf, -math.inf, math.nan):
                assert f"{f.name} must be finite, not {x}" in _bad(contract, **{f.name: x})


def test_missing_and_unknown_fields() -> None:
    values = dict(ROI_ALIGN_3D.defaults)
    del values["spatial_scale"], values["aligned"]
    values["plugin_version"] = "1"  # ignored, as the C++ creators ignore it
    with pytest.raises(ContractError) as info:
        ROI_ALIGN_3D.validate(values)
    assert str(info.value) == ("evad::RoIAlign3D: missing field spatial_scale; "
                               "missing field aligned")
    got = ROI_ALIGN_3D.validate({**ROI_ALIGN_3D.defaults, "plugin_namespace": "evad"})
    assert "plugin_namespace" not in got


def test_every_problem_is_named() -> None:
    msg = _bad(ROI_ALIGN_3D, output_height=0, spatial_scale=-1.0, aligned=3)
    assert msg == ("evad::RoIAlign3D: output_height must be >= 1, not 0; spatial_scale must "
                   "be > 0.0, not -1.0; aligned must be one of 0, 1, not 3")
    assert isinstance(ContractError("x"), ValueError)


def test_tie_order_is_stated() -> None:
    assert ROI_ALIGN_3D.tie_order is None
    assert "lower position" in KEYFRAME_TOPK_PRUNE.tie_order
    assert "stable descending" in KEYFRAME_TOPK_PRUNE.tie_order


@pytest.mark.parametrize("n", [1, 7, 480, 2304, 7680])
@pytest.mark.parametrize(("num", "den"), [(7, 10), (6, 10), (1, 2), (1, 1)])
def test_kept_and_pruned_counts(n: int, num: int, den: int) -> None:
    from fractions import Fraction

    assert kept_token_count(n, num, den) == math.ceil(Fraction(num, den) * n)
    assert pruned_count(n, 1, num, den) == kept_token_count(n, num, den) - 1


def _attribute_parameters(op, contract) -> dict[str, inspect.Parameter]:
    # torch.library.custom_op wraps the Python function (signature (*args, **kwargs)); the
    # declared one is its _init_fn.
    params = inspect.signature(getattr(op, "_init_fn", op)).parameters
    return {name: p for name, p in params.items() if name not in contract.inputs}


def test_roi_align_3d_defaults_are_the_torch_ops() -> None:
    from evad.models.roi_align_3d import roi_align_3d

    params = _attribute_parameters(roi_align_3d, ROI_ALIGN_3D)
    assert tuple(params) == ROI_ALIGN_3D.field_names
    for f in ROI_ALIGN_3D.fields:
        default = params[f.name].default
        assert default is not inspect.Parameter.empty, f.name
        assert default == f.default and type(default)(f.default) == default, f.name


def test_keyframe_topk_prune_fields_are_the_torch_ops() -> None:
    """The torch op requires every field (no defaults to differ); the contract's defaults are
    the model's: keep rate 0.7 = 7/10, keyframe weight 1.0."""
    from evad.models.keyframe_topk_prune import keep_fraction, keyframe_topk_prune
    from evad.models.presets import Preset

    params = _attribute_parameters(keyframe_topk_prune, KEYFRAME_TOPK_PRUNE)
    assert tuple(params) == KEYFRAME_TOPK_PRUNE.field_names
    for f in KEYFRAME_TOPK_PRUNE.fields:
        default = params[f.name].default
        assert default is inspect.Parameter.empty or default == f.default, f.name
    d = KEYFRAME_TOPK_PRUNE.defaults
    assert keep_fraction(0.7) == (d["keep_num"], d["keep_den"])
    assert Preset.keyframe_weight == d["keyframe_weight"]


def test_roi_align_3d_states_the_batch_index_rule() -> None:
    """The edge-case rule every RoIAlign3D backend follows (torch, ONNX, CUDA, Triton): a RoI whose
    batch index is not finite, not an integer value (equal to its floor) or outside [0, B) gives
    zeros. Stated in the contract, in the generated header and in the op's README."""
    rules = [r for r in ROI_ALIGN_3D.edge_cases if r.startswith("batch index:")]
    assert len(rules) == 1
    for words in ("finite", "integer value", "floor", "[0, B)", "zeros"):
        assert words in rules[0], words
    assert "//! RoIAlign3D edge case: batch index:" in header()
    assert all(": " in r for r in ROI_ALIGN_3D.edge_cases)  # "<topic>: <rule>"
    readme = (common_dir().parent / "roi_align_3d" / "README.md").read_text()
    assert "equal to its floor" in readme and "[0, B)" in readme
    assert KEYFRAME_TOPK_PRUNE.edge_cases == ()
