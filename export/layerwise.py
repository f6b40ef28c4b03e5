"""Layer-by-layer comparison: where two runs of one graph part ways.

When a backend fails parity, the model-level numbers say *that* it differs, not *where*. This
module marks every intermediate tensor of an ONNX graph as an output (as Polygraphy's
``--onnx-outputs mark all`` does), runs that copy in ONNX Runtime, and compares two runs tensor by
tensor in the graph's topological order to name the first node whose output differs beyond the
precision's tolerance. The other run is a second ONNX (``evad-parity --layerwise-against``) or a
TensorRT engine built with the same tensors marked (``evad-parity --engine --layerwise``; the
engine half lives in ``evad.cli.parity``, which may import the engines stage).

The judge, per tensor (reference ``r``, candidate ``c``, same name):

* float tensors: ``max |r - c| <= atol + rtol * max |r|``, i.e. relative to the tensor's scale,
  not element-wise (a sum's error is set by its largest terms; an element near zero has no
  relative error worth the name). NaN and inf must sit at the same places.
* integer and bool tensors: exact. But an index that differs while a float tensor upstream of
  it differs at all (within tolerance) may be a near-tie: two correct backends may rank two
  near-equal scores differently (``docs/design.md``, "Parity under discrete decisions"). When
  it is tie-like (per row, at most :data:`NEAR_TIE_FRACTION` of the elements changed, rows of
  distinct indices compared as sets, so a changed order alone is tie-like) it is reported as a
  near-tie, not judged, and every tensor computed from that decision (the node's other outputs
  included) is reported as "after a near-tie", not judged: after a different decision they differ
  by construction. An index that differs with every float tensor upstream identical, or in
  more places, is a divergence like a float one.

Torch-free; onnxruntime loads on first use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from evad.errors import BackendError, EvadError
from evad.export.ort_runner import CPU, CUDA, available_providers
from evad.lazy import lazy_import

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu for CUDA)")

__all__ = ["NEAR_TIE_FRACTION", "TOLERANCES", "LayerRunner", "LayerwiseReport",
           "TensorDiff", "Tolerance", "compare_layers", "engine_marks", "layer_tensors",
           "mark_outputs", "merge_reports"]

#: types a TensorRT engine can return as an output (TrtRunner's host types; TensorRT has no
#: double): the ones worth marking
_ENGINE_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                           TensorProto.INT32, TensorProto.INT64, TensorProto.INT8,
                           TensorProto.UINT8, TensorProto.BOOL})
#: ops whose outputs are host-side shape arithmetic when all their inputs are
_SHAPE_SOURCES = frozenset({"Shape", "Size", "Constant"})
#: a near-tie may change this fraction of an index row (and at least two elements: one tie is a
#: boundary flip or a swap): the reduced-precision parity bar's kept-token Jaccard >= 0.97.
#: Seen: the fp16 and bf16 tiny graphs keep the same token sets as fp32 at the first pruning
#: block, in another order at 36 and 153 of 332 places.
NEAR_TIE_FRACTION = 0.03


@dataclass(frozen=True)
class Tolerance:
    """A float tensor diverges when ``max |r - c| > atol + rtol * max |r|`` (its scale)."""

    rtol: float
    atol: float

    def allowed(self, scale: float) -> float:
        """The largest absolute difference allowed in a tensor whose largest |value| is
        ``scale``."""
        return self.atol + self.rtol * scale


#: Per precision of the candidate run (the reference is fp32 ONNX Runtime). The bars are per
#: tensor, relative to its scale, and must sit above what a correct run accumulates over the
#: whole depth while staying well below what a broken layer does (an op or axis swapped moves
#: its output by the order of its scale; tokens gathered after another decision moved the
#: tensors computed from them by 1.3 to 1.6 of theirs). Measured on the calmed tiny model (12
#: blocks, 16 frames, 96 x 192, one seeded clip; for fp16/bf16 exported with keep rate 1, so no
#: near-tie cuts the comparison short), the largest error / scale of any tensor:
#:
#: * fp32 (rtol 1e-4, atol 1e-5): fp32 carries 24 bits (2^-24 ~ 6e-8 per rounding); another
#:   summation order (other kernels or threads, a GPU) is the only difference: ONNX Runtime with
#:   all graph optimizations and 2 threads against none and 1 thread: 2e-6. 50x headroom.
#: * fp16 (rtol 5e-2, atol 1e-3): a 10-bit mantissa (2^-11 ~ 4.9e-4 per rounding) on every
#:   weight and activation: the mixed-precision graph (``to_mixed_precision``) in ONNX Runtime's
#:   CPU kernels: 4.5e-3 (RoIAlign3D features of the head). 10x headroom.
#: * tf32 (the fp16 bar): the same 10-bit mantissa, on MatMul and Conv inputs only (fp32
#:   activations and accumulation), so no worse than fp16.
#: * bf16 (rtol 1.5e-1, atol 1e-2): a 7-bit mantissa (2^-8 ~ 3.9e-3 per rounding, 8x fp16's):
#:   OpenVINO bf16 (fp32 accumulation): 2.4e-2, 6x headroom; except the actor localization's
#:   RoIAlign3D, which it runs in bf16 (engines keep it fp32; the action pooler's, OpenVINO
#:   too): 0.36 of scale, reported as the first divergence.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rtol=1e-4, atol=1e-5),
    "tf32": Tolerance(rtol=5e-2, atol=1e-3),
    "fp16": Tolerance(rtol=5e-2, atol=1e-3),
    "bf16": Tolerance(rtol=1.5e-1, atol=1e-2),
}

#: a tensor's verdict, from benign to bad (merging clips keeps the worst)
STATUSES = ("equal", "within", "after-near-tie", "near-tie", "diverged")


@dataclass(frozen=True)
class TensorDiff:
    """One tensor of the reference graph, compared.

    position: its node's index in the reference graph's topological order.
    tensor, node, op_type: the tensor and the node (name, op) of the reference graph that makes
        it; ``candidate_op_type`` is the candidate graph's producer when that differs.
    kind: ``float`` (judged with the tolerance) or ``int`` (integers and bools, exact).
    shape, candidate_shape: the arrays' shapes.
    max_abs: largest |reference - candidate| (inf for a NaN/inf or shape mismatch).
    scale: largest finite |reference| (the float tolerance's scale; 0 for int tensors).
    max_rel: ``max_abs / scale`` for float tensors; the fraction of unequal elements for int.
    mismatched: elements beyond ``atol + rtol * scale`` (float) or unequal (int); size: elements.
    status: one of :data:`STATUSES`: ``equal`` (bit-identical), ``within`` (tolerance),
        ``diverged``, ``near-tie`` (an index differing downstream of float noise, not judged),
        ``after-near-tie`` (computed from such a decision, not judged).
    """

    position: int
    tensor: str
    node: str
    op_type: str
    candidate_op_type: str | None
    kind: str
    shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    max_abs: float
    scale: float
    max_rel: float
    mismatched: int
    size: int
    status: str

    def where(self) -> str:
        """``MatMul node_MatMul_207 -> 'matmul_5'`` (with the candidate's op when it differs)."""
        op = self.op_type + (f" (candidate: {self.candidate_op_type})"
                             if self.candidate_op_type else "")
        return f"{op} {self.node or '(unnamed)'} -> {self.tensor!r}"

    def error(self) -> str:
        """The difference in a few words: ``max abs 1.2e-02, 3.4e-03 of scale 3.5``."""
        if self.shape != self.candidate_shape:
            return f"shape {self.shape} vs {self.candidate_shape}"
        if self.kind == "int":
            return f"{self.mismatched} of {self.size} elements differ (max abs {self.max_abs:g})"
        return f"max abs {self.max_abs:.3g}, {self.max_rel:.3g} of scale {self.scale:.3g}"


@dataclass
class LayerwiseReport:
    """Every compared tensor in topological order, and the verdict.

    tolerance, precision: the float bar and the precision it was chosen for.
    diffs: the tensors both runs have, in the reference graph's order.
    missing: reference tensors the candidate run did not return (not compared).
    clips: runs merged into this report (:func:`merge_reports`).
    """

    tolerance: Tolerance
    precision: str
    diffs: list[TensorDiff]
    missing: list[str] = field(default_factory=list)
    clips: int = 1

    @property
    def first(self) -> TensorDiff | None:
        """The first diverging tensor in topological order, or None."""
        return next((d for d in self.diffs if d.status == "diverged"), None)

    @property
    def near_ties(self) -> list[TensorDiff]:
        """Index tensors that differ downstream of float noise (reported, not judged)."""
        return [d for d in self.diffs if d.status == "near-tie"]

    @property
    def passed(self) -> bool:
        return self.first is None

    def worst(self, n: int) -> list[TensorDiff]:
        """The ``n`` judged float tensors (not those after a near-tie) with the largest error
        relative to their scale (ties: the earlier first)."""
        floats = [d for d in self.diffs if d.kind == "float" and d.status in ("within",
                                                                               "diverged")]
        return sorted(floats, key=lambda d: (-d.max_rel, d.position))[:n]

    def summary(self) -> str:
        """The verdict in one line: the first diverging layer, or that there is none."""
        tol = (f"{self.precision} tolerance: rtol {self.tolerance.rtol:g}, atol "
               f"{self.tolerance.atol:g}")
        first = self.first
        if first is None:
            judged = sum(d.status in ("equal", "within") for d in self.diffs)
            ties = self.near_ties
            tail = (f"; {len(ties)} near-tie decision(s), the first {ties[0].where()}, and the "
                    f"{len(self.diffs) - judged - len(ties)} tensor(s) computed from them not "
                    "judged" if ties else "")
            return (f"no divergence: {judged} tensors within the {tol}, over {self.clips} "
                    f"clip(s){tail}")
        before = [d for d in self.diffs if d.position < first.position]
        equal = sum(d.status == "equal" for d in before)
        within = sum(d.status == "within" for d in before)
        unjudged = len(before) - equal - within
        if not before:
            tail = "it is the first tensor compared"
        else:
            tail = (f"before it: {equal} tensor(s) identical, {within} within tolerance"
                    + (f", {unjudged} not judged (near-tie)" if unjudged else ""))
        return (f"first divergence at node {first.position}: {first.where()}: {first.error()}, "
                f"beyond the {tol}; {tail}")

    def lines(self, top: int = 10) -> list[str]:
        """The summary, the near-tie decisions, and a table of the ``top`` worst tensors."""
        out = [self.summary()]
        ties = self.near_ties
        out += [f"  near-tie (not judged): {d.where()}: {d.error()}" for d in ties[:3]]
        if len(ties) > 3:
            out.append(f"  ... and {len(ties) - 3} more near-tie decision(s)")
        worst = self.worst(top)
        if worst:
            out.append(f"  worst {len(worst)} judged float tensors (rel = max abs / scale):")
            out.append(f"  {'node':>5}  {'op':<20} {'tensor':<36} {'max abs':>9} "
                       f"{'rel':>9}  status")
            out += [f"  {d.position:>5}  {d.op_type[:20]:<20} {d.tensor[-36:]:<36} "
                    f"{d.max_abs:>9.3g} {d.max_rel:>9.3g}  {d.status}" for d in worst]
        if self.missing:
            out.append(f"  {len(self.missing)} tensor(s) not compared (not returned by the "
                       f"candidate), e.g. {self.missing[0]!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {"passed": self.passed, "precision": self.precision,
                "tolerance": asdict(self.tolerance), "clips": self.clips,
                "first_divergence": _diff_dict(first) if first else None,
                "near_ties": [_diff_dict(d) for d in self.near_ties],
                "compared": len(self.diffs), "missing": list(self.missing),
                "tensors": [_diff_dict(d) for d in self.diffs]}


def _diff_dict(d: TensorDiff) -> dict[str, Any]:
    out = asdict(d)
    # JSON has no inf: a shape or NaN mismatch is written as null
    for key in ("max_abs", "max_rel", "scale"):
        if not math.isfinite(out[key]):
            out[key] = None
    out["shape"], out["candidate_shape"] = list(d.shape), list(d.candidate_shape)
    return out


# -- the graph side ------------------------------------------------------------------------------

def layer_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Every node output of the main graph whose element type shape inference knows (graph
    outputs included), name -> ONNX element type, in topological order. Strings and tensors
    of unknown type are left out (nothing to compare them with)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.output, *model.graph.output)
             if v.type.HasField("tensor_type")}
    out: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.output:
            t = types.get(name, TensorProto.UNDEFINED)
            if name and t not in (TensorProto.UNDEFINED, TensorProto.STRING):
                out[name] = t
    return out


def engine_marks(model: onnx.ModelProto, tensors: Mapping[str, int] | None = None) -> list[str]:
    """The tensors of ``model`` worth marking as outputs of a TensorRT engine, in topological
    order: computed on the device (not Constant outputs nor host-side shape arithmetic, which
    TensorRT folds into the build), of a type an engine output can have (not double).

    Args:
        tensors: :func:`layer_tensors` of ``model``, when already computed.
    """
    tensors = layer_tensors(model) if tensors is None else tensors
    host = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type in _SHAPE_SOURCES or (inputs and all(i in host for i in inputs)):
            host.update(o for o in node.output if o)
    return [n for n, t in tensors.items() if t in _ENGINE_TYPES and n not in host]


def mark_outputs(model: onnx.ModelProto, names: Iterable[str],
                 tensors: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs (type only, any shape); names
    that already are outputs stay as they are.

    Raises:
        EvadError: a name is no node output of known type.
    """
    tensors = layer_tensors(model) if tensors is None else tensors
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name in have:
            continue
        if name not in tensors:
            raise EvadError(f"{name!r} is no node output of the graph with a known type: "
                            "it cannot be marked")
        out.graph.output.append(helper.make_tensor_value_info(name, tensors[name], None))
        have.add(name)
    return out


class LayerRunner:
    """A graph in ONNX Runtime with intermediate tensors marked as outputs.

    Every node runs as written (graph optimizations off), so the reference of a layerwise
    comparison is each ONNX node's own kernel, not a fusion of several.

    Args:
        model: the graph (local functions, such as the ``evad`` ops', stay: ONNX Runtime inlines
            them).
        names: the tensors to return; default every :func:`layer_tensors` entry.
        cuda: run on ONNX Runtime's CUDA provider (required when True).
        threads: intra-op threads (0 = onnxruntime's default).

    Raises:
        BackendError: onnxruntime cannot load the graph, or CUDA is asked for and missing.
    """

    def __init__(self, model: onnx.ModelProto, names: Sequence[str] | None = None,
                 cuda: bool = False, threads: int = 0) -> None:
        tensors = layer_tensors(model)
        #: the tensors returned, in topological order
        self.names = list(tensors) if names is None else list(names)
        marked = mark_outputs(model, self.names, tensors)
        if cuda and CUDA not in available_providers():
            raise BackendError("onnxruntime has no CUDA provider here: pip install "
                               "onnxruntime-gpu, or use --provider cpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(marked.SerializeToString(), opts,
                                                providers=[CUDA, CPU] if cuda else [CPU])
        except Exception as e:  # onnxruntime's own classes: one line for the user
            raise BackendError(f"onnxruntime cannot load the marked graph: {e}") from e
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graph inputs by name -> every marked tensor (and the graph's outputs) by name."""
        outs = self.session.run(None, dict(feeds))
        return {n: np.asarray(o) for n, o in zip(self._outputs, outs, strict=True)}


# -- the comparison ------------------------------------------------------------------------------

def _measure(ref: np.ndarray, cand: np.ndarray,
             tol: Tolerance) -> tuple[str, float, float, int, bool]:
    """kind, max |r - c|, scale, elements beyond the bar, beyond the bar at all."""
    if np.issubdtype(ref.dtype, np.floating):
        if ref.shape != cand.shape:
            return "float", math.inf, 0.0, ref.size, True
        r = ref.astype(np.float64, copy=False)
        c = cand.astype(np.float64, copy=False)
        finite_r, finite_c = np.isfinite(r), np.isfinite(c)
        # NaN and inf must agree in place (and inf in sign); elsewhere the difference counts
        odd = (finite_r != finite_c) | (~finite_r & ~finite_c & ~(
            (np.isnan(r) & np.isnan(c)) | (r == c)))
        both = finite_r & finite_c
        diff = np.abs(r - c, where=both, out=np.zeros_like(r))
        scale = float(np.abs(r, where=finite_r, out=np.zeros_like(r)).max(initial=0.0))
        allowed = tol.allowed(scale)
        beyond = int((diff > allowed).sum() + odd.sum())
        max_abs = math.inf if odd.any() else float(diff.max(initial=0.0))
        return "float", max_abs, scale, beyond, max_abs > allowed
    if ref.shape != cand.shape:
        return "int", math.inf, 0.0, ref.size, True
    unequal = ref != cand
    n = int(unequal.sum())
    max_abs = float(np.abs(ref.astype(np.float64) - cand.astype(np.float64)).max()) if n else 0.0
    return "int", max_abs, 0.0, n, n > 0


def _tie_like(ref: np.ndarray, cand: np.ndarray) -> bool:
    """Whether an integer tensor that differs could be decisions flipped by near-ties: per row
    along its last axis, at most :data:`NEAR_TIE_FRACTION` of the elements (and at least two)
    differ. Rows of distinct values (indices) compare as sets, so a changed order alone is
    tie-like (near-equal scores swap ranks); other rows (masks, counts) compare by position."""
    if ref.shape != cand.shape:
        return False
    n = ref.shape[-1] if ref.ndim else 1
    r, c = ref.reshape(-1, n), cand.reshape(-1, n)
    room = max(2, math.ceil(NEAR_TIE_FRACTION * n))
    sr, sc = np.sort(r, axis=1), np.sort(c, axis=1)
    distinct = ref.dtype != np.bool_ and bool((np.diff(sr, axis=1) != 0).all()) and bool(
        (np.diff(sc, axis=1) != 0).all())
    if distinct:
        # values in both rows appear twice in their merge: n - shared = the candidate's new ones
        merged = np.sort(np.concatenate([sr, sc], axis=1), axis=1)
        changed = n - (np.diff(merged, axis=1) == 0).sum(axis=1)
    else:
        changed = (r != c).sum(axis=1)
    return bool((changed <= room).all())


def compare_layers(model: onnx.ModelProto, reference: Mapping[str, np.ndarray],
                   candidate: Mapping[str, np.ndarray], tolerance: Tolerance,
                   precision: str = "fp32",
                   candidate_model: onnx.ModelProto | None = None) -> LayerwiseReport:
    """Compare two runs of a graph tensor by tensor, in ``model``'s topological order.

    Args:
        model: the reference graph (its node order, names and op types name the tensors).
        reference, candidate: tensor name -> array, from one run each on the same inputs
            (:class:`LayerRunner`, or an engine with the same tensors marked); tensors only one
            of them has are not compared (the reference's are listed as ``missing``).
        tolerance: the float bar; ``precision`` its name, for the report.
        candidate_model: the candidate's graph, when it is another ONNX: a producer whose op
            type differs from the reference's is named too.

    Returns:
        The report; ``report.first`` is the first diverging tensor (the rules are the module
        docstring's).
    """
    cand_ops = {o: n.op_type for n in candidate_model.graph.node for o in n.output} \
        if candidate_model is not None else {}
    dirty: set[str] = set()  # differs at all, or computed from something that does
    broken: set[str] = set()  # diverged, or computed from something that did
    after_tie: set[str] = set()  # computed from a near-tie decision
    diffs: list[TensorDiff] = []
    missing: list[str] = []
    for pos, node in enumerate(model.graph.node):
        outs = [o for o in node.output if o]
        upstream_dirty = any(i in dirty for i in node.input)
        upstream_broken = any(i in broken for i in node.input)
        upstream_tie = any(i in after_tie for i in node.input)
        measured = []
        for name in outs:
            if name not in reference:
                continue
            if name not in candidate:
                missing.append(name)
                continue
            ref = np.asarray(reference[name])
            cand = np.asarray(candidate[name])
            kind, max_abs, scale, n_bad, beyond = _measure(ref, cand, tolerance)
            # an index changed in few places where the floats upstream differ, but within the
            # tolerance: a near-tie decision. Downstream of a divergence it is no excuse.
            tie = kind == "int" and beyond and upstream_dirty and not upstream_broken and \
                not upstream_tie and _tie_like(ref, cand)
            measured.append((name, ref, cand, kind, max_abs, scale, n_bad, beyond, tie))
        # all that a near-tie node makes (its float outputs too) follows its decision
        node_tie = any(m[-1] for m in measured)
        for name, ref, cand, kind, max_abs, scale, n_bad, beyond, tie in measured:
            shape, cshape, size = ref.shape, cand.shape, ref.size
            if max_abs == 0 and not beyond:
                status = "equal"
            elif tie:
                status = "near-tie"
            elif upstream_tie or (node_tie and kind == "float"):
                status = "after-near-tie"
            elif beyond:
                status = "diverged"
            else:
                status = "within"
            rel = (n_bad / max(size, 1) if kind == "int" else
                   max_abs / scale if scale > 0 else (math.inf if max_abs > 0 else 0.0))
            diffs.append(TensorDiff(
                position=pos, tensor=name, node=node.name, op_type=node.op_type,
                candidate_op_type=cand_ops[name] if cand_ops.get(name, node.op_type)
                != node.op_type else None, kind=kind, shape=tuple(shape),
                candidate_shape=tuple(cshape), max_abs=max_abs, scale=scale, max_rel=rel,
                mismatched=n_bad, size=size, status=status))
            if status != "equal":
                dirty.add(name)
            if status == "diverged":
                broken.add(name)
        if upstream_dirty:
            dirty.update(outs)
        if upstream_broken:
            broken.update(outs)
        if upstream_tie or node_tie:
            after_tie.update(outs)
    return LayerwiseReport(tolerance, precision, diffs, missing)


def merge_reports(reports: Sequence[LayerwiseReport]) -> LayerwiseReport:
    """Several clips' reports as one: per tensor the worst verdict (then the larger relative
    error), so ``first`` is the earliest tensor that diverged in any clip.

    Raises:
        ValueError: no reports.
    """
    if not reports:
        raise ValueError("no reports to merge")
    rank = {s: i for i, s in enumerate(STATUSES)}
    worst: dict[str, TensorDiff] = {}
    for report in reports:
        for d in report.diffs:
            old = worst.get(d.tensor)
            if old is None or (rank[d.status], d.max_rel) > (rank[old.status], old.max_rel):
                worst[d.tensor] = d
    diffs = sorted(worst.values(), key=lambda d: d.position)
    missing = list(dict.fromkeys(m for r in reports for m in r.missing))
    return LayerwiseReport(reports[0].tolerance, reports[0].precision, diffs, missing,
                           clips=sum(r.clips for r in reports))
