"""The contract of each ``evad`` custom op, defined once: name, version, namespace, the ordered
fields (ONNX attributes = TensorRT plugin fields) with their types, defaults and valid ranges,
the tensors in and out, and the order on equal scores.

Everything else reads this module: the ONNX schemas and exporter translations
(``evad.export.ops``), the torch ops' defaults (``evad.models``), the Python TensorRT creators
(``evad.plugins.python_plugins``), the C++ creators through the generated header
``plugins/common/evadOpContract.h`` (``python -m evad.op_contracts --header`` writes it; a test
fails when the committed copy drifts), and the tests. The op READMEs in ``plugins/<op>/`` describe
it in prose. No torch, onnx or TensorRT here: the contract imports anywhere.
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

from evad.errors import ConfigError

__all__ = ["CONTRACTS", "IMPORTANCE_ROW_CHUNK", "KEYFRAME_TOPK_PRUNE", "NAMESPACE",
           "PLUGIN_VERSION", "ROI_ALIGN_3D", "ContractError", "Field", "OpContract", "header",
           "kept_token_count", "pruned_count"]

#: ONNX domain of the custom nodes, and the TensorRT plugin namespace (the same string)
NAMESPACE = "evad"
#: ONNX op-set version of the ``evad`` domain
DOMAIN_VERSION = 1
#: TensorRT plugin version string of every creator
PLUGIN_VERSION = "1"


class ContractError(ConfigError):
    """Fields that break an op's contract (missing, of the wrong type, or out of range)."""


@dataclass(frozen=True)
class Field:
    """One attribute of an op: an ONNX attribute and a TensorRT plugin field (one element).

    kind: ``"int"`` (ONNX INT, TensorRT INT32) or ``"float"`` (ONNX FLOAT, TensorRT FLOAT32).
    default: the torch reference's default (exporters drop arguments equal to it).
    minimum: smallest valid value; ``exclusive`` makes it a strict bound (value > minimum).
    choices: the only valid values, when the field is an enumeration.
    """

    name: str
    kind: str
    default: int | float
    doc: str
    minimum: int | float | None = None
    exclusive: bool = False
    choices: tuple[int, ...] | None = None

    def problem(self, value: object) -> str | None:
        """Why ``value`` is invalid for this field, or None when it is valid."""
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{self.name} must be an integer, not {value!r}"
            if not -(2**31) <= value < 2**31:
                return f"{self.name} = {value} does not fit a 32-bit plugin field"
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{self.name} must be a number, not {value!r}"
            if not math.isfinite(value):
                return f"{self.name} must be finite, not {value}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {', '.join(map(str, self.choices))}, not {value}"
        if self.minimum is not None:
            if self.exclusive and not value > self.minimum:
                return f"{self.name} must be > {self.minimum}, not {value}"
            if not self.exclusive and not value >= self.minimum:
                return f"{self.name} must be >= {self.minimum}, not {value}"
        return None


@dataclass(frozen=True)
class OpContract:
    """One custom op.

    name: ONNX op_type and TensorRT plugin name.
    inputs, outputs: tensor names in order.
    fields: attributes in order (the plugin creators' ``getFieldNames`` order).
    relations: cross-field rules as ``(a, "<=", b)``: field a <= field b.
    tie_order: what an implementation does on equal scores (None: the op has no ranking).
    edge_cases: rules on input data every implementation follows (one sentence each, as
        ``"<topic>: <rule>"``), e.g. what a RoI with an invalid batch index gives.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fields: tuple[Field, ...]
    relations: tuple[tuple[str, str, str], ...] = ()
    tie_order: str | None = None
    edge_cases: tuple[str, ...] = ()
    domain: str = NAMESPACE
    version: int = DOMAIN_VERSION
    plugin_version: str = PLUGIN_VERSION

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def defaults(self) -> dict[str, int | float]:
        return {f.name: f.default for f in self.fields}

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def problems(self, values: Mapping[str, object]) -> list[str]:
        """Every way ``values`` breaks the contract (empty when it holds): a missing field, a
        wrong type, a value out of range, a broken relation. Names outside the contract are
        ignored, as the C++ creators do: TensorRT's ONNX parser passes its own attributes
        (``plugin_version``, ``plugin_namespace``) along with the op's."""
        out = [f"missing field {f.name}" for f in self.fields if f.name not in values]
        for f in self.fields:
            if f.name in values and (p := f.problem(values[f.name])) is not None:
                out.append(p)
        if not out:
            for a, rel, b in self.relations:
                if rel == "<=" and not values[a] <= values[b]:  # type: ignore[operator]
                    out.append(f"{a} <= {b} required, got {values[a]} > {values[b]}")
        return out

    def validate(self, values: Mapping[str, object]) -> dict[str, int | float]:
        """``values`` as a plain dict in field order.

        Raises:
            ContractError: naming every problem (see :meth:`problems`).
        """
        problems = self.problems(values)
        if problems:
            raise ContractError(f"{self.domain}::{self.name}: " + "; ".join(problems))
        return {f.name: values[f.name] for f in self.fields}  # type: ignore[misc]


ROI_ALIGN_3D = OpContract(
    name="RoIAlign3D",
    inputs=("features", "rois"),
    outputs=("output",),
    fields=(
        Field("output_height", "int", 7, "bins per RoI along y", minimum=1),
        Field("output_width", "int", 7, "bins per RoI along x", minimum=1),
        Field("spatial_scale", "float", 1.0 / 16, "feature pixels per input pixel",
              minimum=0.0, exclusive=True),
        Field("sampling_ratio", "int", 2, "samples per bin along each axis", minimum=1),
        Field("aligned", "int", 1, "1: half-pixel offset (ROIAlignV2); 0: legacy RoIAlign",
              choices=(0, 1)),
    ),
    edge_cases=(
        "batch index: rois[r, 0], read as a float of the RoI tensor's type, is valid when it is "
        "finite, an integer value (equal to its floor; -0.0 is 0) and in [0, B); a RoI with an "
        "invalid index gives zeros for all its bins (and no gradient), and its features are "
        "never read",
        "outside the map: boxes partly or wholly outside the feature map follow the sampling "
        "rule (wholly outside gives zeros); R = 0 gives an empty output",
        "non-finite coordinates: a RoI with a valid index and a NaN or infinite coordinate has "
        "unspecified values (the torch reference gives NaN, the CUDA and Triton kernels count "
        "NaN samples as outside), but the evad kernels read nothing outside the feature map",
    ),
)

KEYFRAME_TOPK_PRUNE = OpContract(
    name="KeyframeTopKPrune",
    inputs=("q", "k", "x_nonkey", "idx"),
    outputs=("x_kept", "idx_kept"),
    fields=(
        Field("keep_num", "int", 7, "keep rate numerator (of N, keyframe tokens included)",
              minimum=1),
        Field("keep_den", "int", 10, "keep rate denominator", minimum=1),
        Field("keyframe_weight", "float", 1.0, "weight of the keyframe query rows (w_kf)",
              minimum=0.0, exclusive=True),
    ),
    relations=(("keep_num", "<=", "keep_den"),),
    tie_order="descending importance; on equal importance the lower position in x_nonkey "
              "ranks first (a stable descending sort)",
)

#: query rows per softmax chunk of the pruning importance in the torch reference and the ONNX
#: function body: bounds the (B, H, rows, N) slab to 226 MB fp32 for vit_b at 288x512 (12
#: heads, N = 4608) and fixes where partial sums are cut. OpenVINO's unrolled variant cuts
#: smaller chunks of its own (``evad.export.openvino_graph.ROW_CHUNK``).
IMPORTANCE_ROW_CHUNK = 1024


def kept_token_count(n, keep_num: int, keep_den: int):
    """Tokens a pruning block keeps out of ``n`` (keyframe tokens included):
    ``ceil(n * keep_num / keep_den)`` in integer arithmetic, so that it works on Python ints and
    on symbolic sizes alike (exporters keep it a function of the input shape; TensorRT writes it
    with ``CEIL_DIV``)."""
    return (keep_num * n + keep_den - 1) // keep_den


def pruned_count(n, s, keep_num: int, keep_den: int):
    """K, the non-keyframe tokens KeyframeTopKPrune keeps out of ``n - s``:
    ``ceil(n * keep_num / keep_den) - s``."""
    return kept_token_count(n, keep_num, keep_den) - s


#: every op, by name
CONTRACTS: dict[str, OpContract] = {c.name: c for c in (ROI_ALIGN_3D, KEYFRAME_TOPK_PRUNE)}


def header() -> str:
    """``plugins/common/evadOpContract.h``: the contract as C++ constants for the C++ creators
    (field names and types in order, defaults, valid ranges) and their self-test."""
    lines = ["// Generated by `python -m evad.op_contracts --header` from evad/op_contracts.py.",
             "// Do not edit: tests/test_op_contracts.py fails when this copy drifts.",
             "#pragma once", "", "#include <cstdint>", "", "namespace evad", "{",
             "namespace contract", "{", "",
             f'constexpr char const* kNamespace = "{NAMESPACE}";',
             f'constexpr char const* kPluginVersion = "{PLUGIN_VERSION}";', "",
             "enum class FieldKind : int32_t", "{", "    kInt = 0,", "    kFloat = 1", "};", "",
             "struct FieldSpec", "{", "    char const* name;", "    FieldKind kind;",
             "    double defaultValue;", "    bool hasMinimum;", "    double minimum;",
             "    bool exclusiveMinimum;", "    int32_t nbChoices; //!< 0: any value",
             "    int32_t choices[4];", "};", ""]
    for c in CONTRACTS.values():
        lines.append(f'constexpr char const* k{c.name}Name = "{c.name}";')
        lines.append(f"constexpr int32_t k{c.name}NbFields = {len(c.fields)};")
        lines.append(f"constexpr FieldSpec k{c.name}Fields[k{c.name}NbFields] = {{")
        for f in c.fields:
            kind = "FieldKind::kInt" if f.kind == "int" else "FieldKind::kFloat"
            lo = f.minimum if f.minimum is not None else 0
            ch = list(f.choices or ())
            lines.append(f'    {{"{f.name}", {kind}, {float(f.default)!r}, '
                         f"{'true' if f.minimum is not None else 'false'}, {float(lo)!r}, "
                         f"{'true' if f.exclusive else 'false'}, {len(ch)}, "
                         f"{{{', '.join(map(str, ch + [0] * (4 - len(ch))))}}}}},")
        lines.append("};")
        for a, rel, b in c.relations:
            ia, ib = c.field_names.index(a), c.field_names.index(b)
            lines.append(f"//! {a} {rel} {b}")
            lines.append(f"constexpr int32_t k{c.name}LessEqual[2] = {{{ia}, {ib}}};")
        for rule in c.edge_cases:  # prose for the C++ reader; the kernels implement them
            lines += textwrap.wrap(rule, 96, initial_indent=f"//! {c.name} edge case: ",
                                   subsequent_indent="//!   ")
        lines.append("")
    lines += ["} // namespace contract", "} // namespace evad", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--header"]:
        sys.exit("usage: python -m evad.op_contracts --header > plugins/common/evadOpContract.h")
    sys.stdout.write(header())
