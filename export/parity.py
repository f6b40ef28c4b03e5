"""Parity of a backend against the torch reference, under discrete decisions, judged against a
float64 oracle.

A backend decides which tokens each pruning block keeps; near-ties make two correct backends
decide differently (``docs/design.md``, "Parity under discrete decisions"). So each clip is
checked in two halves, from torch runs forced to the backend's own decisions:

1. decisions: at every pruning block, the reference's importance scores (computed by torch from
   the same block inputs) rank the tokens; the backend's kept set and order must equal the
   reference's top-k, except where the reference's scores of the differing tokens sit within
   ``tie_rtol`` of each other (a near-tie, reported with its gap). Exact ties (equal in float64:
   identical key columns, not rounding) must follow the op contract's tie order;
2. continuous outputs: boxes, person scores and action probabilities are judged against an
   oracle, the same reference run in float64 (same inputs, same forced decisions). A backend
   passes an output when its error against the oracle is at most ``k`` times the fp32
   reference's own error against it, plus a small absolute floor (``docs/design.md``,
   "Precision and parity"). So the tolerance comes from the model: a model whose outputs
   amplify rounding (random weights, six-stage box refinement) gets a wide one, a
   well-conditioned one a narrow one, and a wrong graph is far beyond either.

Polygraphy's comparators (``CompareFunc.simple``) compare same-named arrays element-wise; that is
the wrong test for top-k indices (set and order semantics with ties) and for detections (matching
by IoU), and the element-wise part left is two lines of numpy. So they are not used here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from evad.boxes import box_iou
from evad.models.evad import EVAD
from evad.models.keyframe_topk_prune import _importance, importance, pruned_count
from evad.runner import (
    OUTPUT_ACTION_PROBS,
    OUTPUT_BOXES,
    OUTPUT_PERSON_SCORES,
    Runner,
    kept_blocks,
    kept_idx_name,
)

__all__ = ["BF16_THRESHOLDS", "FP16_THRESHOLDS", "FP32_THRESHOLDS", "INCONCLUSIVE",
           "INT8W_THRESHOLDS", "OPENVINO_FP32_THRESHOLDS", "ORACLE_CLIPS", "ORACLE_OUTPUTS",
           "REDUCED_THRESHOLDS", "OracleError", "ParityBar", "ParityReport", "Thresholds",
           "compare",
           "seeded_inputs", "thresholds_for"]

#: the continuous outputs judged against the float64 oracle, with their units
ORACLE_OUTPUTS = {OUTPUT_BOXES: " px", OUTPUT_PERSON_SCORES: "", OUTPUT_ACTION_PROBS: ""}
#: batches per :func:`compare` call that get the float64 oracle run (the first ones); later
#: batches are judged against the fp32 reference with the sample's largest error (see
#: :class:`OracleError`). With it a comparison costs about 3.5x as much (two fp32 twins and a
#: float64 run at about twice an fp32 run; docs/design.md).
ORACLE_CLIPS = 4
#: an fp32 reference error (max abs against the oracle) at which an output carries no precision
#: worth judging: a wrong graph can hide in it (default-initialised vit_b_ktp: boxes off by
#: 300-500 px, person scores by 0.2 between fp32 and float64 torch). Reported, not judged.
INCONCLUSIVE = {OUTPUT_BOXES: 1.0, OUTPUT_PERSON_SCORES: 1e-2, OUTPUT_ACTION_PROBS: 1e-2}
#: dithered fp32 twins run beside the reference on each oracle clip (:func:`_dither`)
TWINS = 2
_UNIT_ROUNDOFF = 2.0**-24


def seeded_inputs(n: int, batch: int, frames: int, height: int, width: int,
                  seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` batches of seeded normal clips (normalised-frame statistics) and their sizes:
    clips (batch, 3, frames, height, width) float32, sizes (batch, 2) int64."""
    rng = np.random.default_rng(seed)
    clips = [rng.standard_normal((batch, 3, frames, height, width), dtype=np.float32)
             for _ in range(n)]
    sizes = [np.tile(np.array([[height, width]], dtype=np.int64), (batch, 1)) for _ in range(n)]
    return clips, sizes


class ParityBar:
    """The progress bar of a :func:`compare`: two steps per clip (the backend's run, then
    torch's), so it moves within a clip; use as ``compare(..., progress=bar.step)`` inside
    ``with``. ``quiet`` draws nothing."""

    def __init__(self, clips: int, what: str, quiet: bool) -> None:
        self.bar = tqdm(total=2 * clips, desc="parity", unit="run", disable=quiet, leave=False)
        self.what = what
        self.bar.set_postfix_str(f"{what} on clip 1")

    def step(self, done: str) -> None:
        self.bar.update(1)
        clip = self.bar.n // 2 + 1
        nxt = "torch (forced to its decisions)" if done == "backend" else self.what
        if self.bar.n < self.bar.total:
            self.bar.set_postfix_str(f"{nxt} on clip {clip}")

    def __enter__(self) -> ParityBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail bars of one comparison (``docs/design.md``, "Precision and parity rules").

    The continuous outputs pass when, per clip and output, ``e_back <= oracle_k * e_ref + floor``
    with ``e_back = max |backend - oracle|`` and ``e_ref = max |fp32 reference - oracle|``.
    """

    #: k. fp32: at 288x512, ONNX Runtime (fused and standard attention) on default-initialised
    #: tiny (seeds 0..4) and calmed tiny (seeds 0, 1), two clips each, reached e_back / e_ref =
    #: 2.1 (8.3 against the reference alone, without its twins); a weight of one encoder block
    #: off by 1e-3 relative gave 26 to 235, RoIAlign's other alignment 2e3 to 3e5
    #: (benchmarks/results/parity_oracle_calibration.json).
    oracle_k: float = 8.0
    # floors: for an e_ref of 0 (every output equal in fp32 and float64); about one fp32 ulp of
    # a box coordinate at the largest input side (2048 px), 16 ulps of a probability near 1
    box_floor: float = 2.5e-4  # px
    score_floor: float = 1e-6  # person score (a probability)
    prob_floor: float = 1e-6  # action probability
    #: per pruning block, |backend & reference| / |union| of the kept sets as they are (no
    #: near-tie forgiven); 1.0: not judged (fp32 judges each decision instead)
    min_jaccard: float = 1.0
    min_match_rate: float | None = None  # detections matched at IoU >= match_iou
    match_iou: float = 0.9
    tie_rtol: float = 1e-6  # relative score gap under which a different decision is a near-tie
    judge_decisions: bool = True  # fail a decision beyond a near-tie (else: report it only)
    #: person-score band around the threshold: a query whose reference score lies within it may
    #: be a detection on one side only (a threshold flip, the detections' near-tie), so it is
    #: left out of the match rate and counted apart
    score_band: float = 0.0

    def floor(self, output: str) -> float:
        """The absolute floor of one of :data:`ORACLE_OUTPUTS`."""
        return {OUTPUT_BOXES: self.box_floor, OUTPUT_PERSON_SCORES: self.score_floor,
                OUTPUT_ACTION_PROBS: self.prob_floor}[output]


FP32_THRESHOLDS = Thresholds()
#: OpenVINO at fp32: its exp and reduction order move importance scores by ~1e-6 relative (seen:
#: order swaps at a 1.3e-6 gap on the tiny model), so near-ties are forgiven up to 1e-5; and its
#: outputs sit further from the oracle than ONNX Runtime's (e_back / e_ref up to 5.9 on
#: default-initialised tiny, 3.0 calmed), so k is 16.
OPENVINO_FP32_THRESHOLDS = replace(FP32_THRESHOLDS, tie_rtol=1e-5, oracle_k=16.0)
# Reduced precision: flips and swaps are reported with their gaps; the decision bars are the
# design's. score_band: OpenVINO bf16 moved person scores near the 0.7 threshold by up to 0.03
# (vit_b_ktp, calmed random weights, 2 clips): without the band 45 of 47 detections matched, the
# two others being threshold crossers whose boxes matched at IoU >= 0.987; with it 44 of 44.
_REDUCED = Thresholds(min_jaccard=0.97, min_match_rate=0.98, tie_rtol=1e-2,
                      judge_decisions=False, score_band=0.05)
# k of a reduced precision: twice its unit roundoff over fp32's (2**-24), so a faithful backend
# sits about where its precision puts it. bf16 (2**-8): 2**17; measured with two twins, OpenVINO
# bf16 / torch bf16 reached 5.0e4 (tiny, default init) and 3.5e4 (vit_b_ktp, calmed). fp16 and
# tf32 (2**-11, MatMul inputs only for tf32): 2**14, not measured here (TensorRT only). int8
# MatMul weights with bf16 activations: a step of max|w|/127 per column, about 4 bf16 units for
# Gaussian weights: 2**18; measured 3.9e4 (vit_b_ktp, calmed).
BF16_THRESHOLDS = replace(_REDUCED, oracle_k=2.0**17)
# Calibrated int8 (activations per tensor, weights per channel, both symmetric): a step of
# max|x| / 127 per tensor, so a value a few times below its tensor's max is rounded like a
# 6-bit mantissa: 2 * 2**-6 over fp32's 2**-24, 2**19.
INT8_THRESHOLDS = replace(_REDUCED, oracle_k=2.0**19)
FP16_THRESHOLDS = replace(_REDUCED, oracle_k=2.0**14)
INT8W_THRESHOLDS = replace(_REDUCED, oracle_k=2.0**18)
#: the bars of a reduced precision when it is not known which (``evad-parity``): bf16's, the
#: coarsest float type an engine or the CPU paths compute in
REDUCED_THRESHOLDS = BF16_THRESHOLDS


def thresholds_for(precision: str, openvino: bool = False) -> Thresholds:
    """The bars of a backend computing in ``precision`` (``fp32``, ``tf32``, ``fp16``,
    ``bf16``, ``bf16-int8w``, ``int8``); ``openvino`` for OpenVINO's fp32 near-tie tolerance.

    Raises:
        KeyError: an unknown precision.
    """
    if precision == "fp32":
        return OPENVINO_FP32_THRESHOLDS if openvino else FP32_THRESHOLDS
    # tf32 rounds MatMul inputs to fp16's 10-bit mantissa
    return {"tf32": FP16_THRESHOLDS, "fp16": FP16_THRESHOLDS, "bf16": BF16_THRESHOLDS,
            "bf16-int8w": INT8W_THRESHOLDS, "int8": INT8_THRESHOLDS}[precision]


@dataclass
class BlockDecision:
    """One pruning block of one clip: how the backend's decision relates to the reference's."""

    block: int
    kept: int
    jaccard: float  # |backend & reference| / |backend | reference|
    boundary_gap: float  # relative gap between the reference's K-th and (K+1)-th score
    differing: int  # tokens kept by exactly one side
    differing_gap: float  # largest relative score gap among differing tokens (0 if none)
    order_swaps: int  # ranks where the backend's token differs from the reference's
    order_gap: float  # largest relative score gap among swapped ranks (0 if none)
    #: tokens placed against the contract's tie order among exactly tied (float64) scores; None
    #: where the clip had no oracle run
    tie_breaks: int | None
    ok: bool


def _ratio(back: float, ref: float) -> float:
    if ref > 0:
        return back / ref
    return 0.0 if back == 0 else math.inf


@dataclass
class OracleError:
    """One continuous output against the float64 oracle: max abs errors per clip.

    reference: per oracle clip, ``e_ref``: the largest ``max |fp32 run - oracle|`` of the fp32
        reference and its dithered twins (``runs`` holds each).
    backend: per oracle clip, ``e_back = max |backend - oracle|``.
    beyond: per clip after the oracle sample, ``max |backend - fp32 reference|``; judged against
        ``(k + 1) * max(reference) + floor`` (the triangle inequality with the sample's largest
        fp32 error standing in for the clip's own).
    k, floor: the bar, ``e_back <= k * e_ref + floor``.
    """

    output: str
    k: float
    floor: float
    reference: list[float] = field(default_factory=list)
    backend: list[float] = field(default_factory=list)
    runs: list[list[float]] = field(default_factory=list)
    beyond: list[float] = field(default_factory=list)

    @property
    def reference_max(self) -> float:
        return max(self.reference, default=0.0)

    @property
    def backend_max(self) -> float:
        return max(self.backend, default=0.0)

    @property
    def ratio(self) -> float:
        """The largest per-clip ``e_back / e_ref`` (0 when both are 0, inf when only e_ref is)."""
        return max((_ratio(b, r) for b, r in zip(self.backend, self.reference, strict=True)),
                   default=0.0)

    def bounds(self) -> list[float]:
        """The allowed ``e_back`` of each oracle clip."""
        return [self.k * r + self.floor for r in self.reference]

    @property
    def beyond_bound(self) -> float:
        return (self.k + 1.0) * self.reference_max + self.floor

    @property
    def margin(self) -> float:
        """The largest share of its bound an error used (<= 1 passes), over every clip."""
        used = [_ratio(b, bound) for b, bound in zip(self.backend, self.bounds(), strict=True)]
        used += [_ratio(d, self.beyond_bound) for d in self.beyond]
        return max(used, default=0.0)

    @property
    def passed(self) -> bool:
        return self.margin <= 1.0

    @property
    def conclusive(self) -> bool:
        """Whether the fp32 reference's own error leaves room to see a wrong graph (it stays
        under :data:`INCONCLUSIVE`)."""
        return self.reference_max < INCONCLUSIVE[self.output]

    def to_dict(self) -> dict:
        def num(x: float) -> float | None:  # JSON has no infinity
            return x if math.isfinite(x) else None
        return {"k": self.k, "floor": self.floor,
                "reference_max_abs": num(self.reference_max),
                "backend_max_abs": num(self.backend_max), "ratio": num(self.ratio),
                "margin": num(self.margin), "passed": self.passed,
                "conclusive": self.conclusive,
                "per_clip": [{"reference": num(r), "backend": num(b), "ratio": num(_ratio(b, r)),
                              "fp32_runs": [num(x) for x in runs]}
                             for r, b, runs in zip(self.reference, self.backend, self.runs,
                                                   strict=True)],
                "beyond_oracle": [num(d) for d in self.beyond]}


@dataclass
class ParityReport:
    clips: int
    blocks: list[BlockDecision] = field(default_factory=list)
    #: the continuous outputs against the float64 oracle, by output name (the judged figures)
    oracle: dict[str, OracleError] = field(default_factory=dict)
    oracle_clips: int = 0  # clips (batches) that got the float64 oracle run
    # backend against the forced fp32 reference (reported, not judged)
    box_max_abs: float = 0.0
    person_score_max_abs: float = 0.0
    prob_max_abs: float = 0.0
    prob_mean_abs: float = 0.0
    detections: int = 0
    matched: int = 0
    threshold_flips: int = 0  # queries in the score band that are a detection on one side only
    failures: list[str] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        return self.matched / self.detections if self.detections else 1.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def min_jaccard(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for d in self.blocks:
            out[d.block] = min(out.get(d.block, 1.0), d.jaccard)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(match_rate=self.match_rate, passed=self.passed,
                 min_jaccard={str(k): v for k, v in self.min_jaccard().items()},
                 oracle={k: v.to_dict() for k, v in self.oracle.items()})
        return d

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        out = []
        for block, j in self.min_jaccard().items():
            mine = [d for d in self.blocks if d.block == block]
            flips = sum(d.differing for d in mine)
            swaps = sum(d.order_swaps for d in mine)
            gap = max((d.differing_gap for d in mine), default=0.0)
            ogap = max((d.order_gap for d in mine), default=0.0)
            ties = sum(d.tie_breaks or 0 for d in mine)
            out.append(f"block {block}: kept {mine[0].kept} non-keyframe tokens (the keyframe's "
                       f"are always kept), Jaccard min {j:.4f}, "
                       f"{flips} boundary flip(s) (max gap {gap:.2e}), {swaps} order swap(s) "
                       f"(max gap {ogap:.2e})"
                       + (f", {ties} exact tie(s) out of the contract's order" if ties else ""))
        for name, e in self.oracle.items():
            unit = ORACLE_OUTPUTS[name]
            out.append(f"{name}: {e.backend_max:.2e}{unit} from the float64 oracle, the fp32 "
                       f"reference {e.reference_max:.2e}{unit}: ratio {e.ratio:.3g} (bar "
                       f"{e.k:g} x + {e.floor:.2g}{unit}, {e.margin:.2f} of it used)"
                       + (f"; {len(e.beyond)} later clip(s) vs fp32 {max(e.beyond):.2e}{unit}"
                          if e.beyond else ""))
        loose = [f"{n} {e.reference_max:.2g}{ORACLE_OUTPUTS[n]}" for n, e in self.oracle.items()
                 if e.reference and not e.conclusive]
        if loose:
            out.append(f"note: the fp32 reference itself is that far off the oracle in "
                       f"{', '.join(loose)}: this model amplifies rounding so much that these "
                       "outputs cannot tell a wrong graph from a right one (judge a trained or "
                       "calmed model: EVAD.calm)")
        out.append(f"against the fp32 reference: boxes max abs {self.box_max_abs:.2e} px, person "
                   f"score max abs {self.person_score_max_abs:.2e}, action prob max abs "
                   f"{self.prob_max_abs:.2e} mean abs {self.prob_mean_abs:.2e}, detections "
                   f"matched {self.matched}/{self.detections}"
                   + (f" ({self.threshold_flips} threshold flip(s) in the score band left out)"
                      if self.threshold_flips else ""))
        out.extend(f"FAIL: {f}" for f in self.failures)
        return out


def _capture_scores(model: EVAD, exact: bool = False) -> tuple[list, list]:
    """Hooks that record, for every pruning block run, the reference importance scores of the
    block's input tokens (B, N - S) in the block's input order and that input ``idx``.

    ``exact``: score in the model's own dtype (the float64 oracle) instead of the op's fp32."""
    records: list = []
    handles = []
    for blk in model.blocks:
        if blk.keep is None:
            continue

        def pre(mod, args, _rec=records):
            x, idx, s = args[0], args[1], args[2]
            n = x.shape[1]
            prunes = pruned_count(n, s, *mod.keep) < n - s
            _rec.append({"idx": idx, "s": s, "prunes": prunes})

        def post(mod, args, out, _rec=records, _w=blk.keyframe_weight):
            _, q, k = out
            rec = _rec[-1]
            if rec["prunes"]:
                rec["scores"] = (_importance(q, k, rec["s"], _w) if exact
                                 else importance(q, k, rec["s"], _w))

        handles.append(blk.register_forward_pre_hook(pre))
        handles.append(blk.attn.register_forward_hook(post))
    return records, handles


def _dithered(value, gen: torch.Generator):
    """``value`` with every floating tensor in it moved by independent uniform relative noise
    of at most the fp32 unit roundoff (2**-24): a rounding of its own (see :func:`_dither`)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return value
        noise = torch.rand(value.shape, generator=gen, dtype=value.dtype) * 2.0 - 1.0
        return value + value * noise * _UNIT_ROUNDOFF
    if isinstance(value, (tuple, list)):
        return type(value)(_dithered(v, gen) for v in value)
    return value


def _dither(model: EVAD, seed: int) -> list:
    """Hooks that re-draw the fp32 reference's rounding: each submodule's floating outputs move
    by up to one unit roundoff, relative, seeded. The twin computes the same function, so its
    error against the oracle is another draw of what fp32 arithmetic does to this model (the
    reference's own error is one draw, and a heavy-tailed one: docs/design.md)."""
    gen = torch.Generator().manual_seed(seed)

    def hook(mod, args, out):
        return _dithered(out, gen)

    return [m.register_forward_hook(hook) for m in model.modules() if m is not model]


def _pruning_records(records: list) -> list:
    return [r for r in records if r["prunes"]]


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() / torch.maximum(a.abs(), b.abs()).clamp_min(1e-30)


def _tie_breaks(exact: np.ndarray, kept_pos: np.ndarray) -> int:
    """Tokens placed against the contract's tie order (on equal importance the lower position
    in x_nonkey ranks first) among exactly equal scores.

    Args:
        exact: (M,) float64 scores of the block's input tokens, in input order.
        kept_pos: (K,) input positions of the backend's kept tokens, in its rank order.

    Returns:
        Inversions inside tied groups of kept tokens, plus dropped tokens tied with a kept one
        at a higher position.
    """
    if kept_pos.size == 0:
        return 0
    vals = exact[kept_pos]
    o = np.lexsort((np.arange(kept_pos.size), vals))  # by score, then by the backend's rank
    v, p = vals[o], kept_pos[o]
    inside = int(((v[1:] == v[:-1]) & (p[1:] < p[:-1])).sum())
    dropped = np.ones(exact.size, dtype=bool)
    dropped[kept_pos] = False
    uniq, inv = np.unique(vals, return_inverse=True)
    last = np.full(uniq.size, -1)
    np.maximum.at(last, inv, kept_pos)  # highest kept position per score
    dpos = np.flatnonzero(dropped)
    j = np.clip(np.searchsorted(uniq, exact[dpos]), 0, uniq.size - 1)
    return inside + int(((uniq[j] == exact[dpos]) & (dpos < last[j])).sum())


def _decisions(block: int, rec: dict, chosen: torch.Tensor, tol: float,
               rec64: dict | None = None) -> list[BlockDecision]:
    """Compare one block's backend decision (B, K) against the reference scores (and, with
    ``rec64``, the oracle's float64 scores of the same tokens for the exact-tie rule)."""
    out = []
    for b in range(chosen.shape[0]):
        scores, idx = rec["scores"][b].double(), rec["idx"][b]
        kk = chosen.shape[1]
        order = torch.argsort(scores, descending=True, stable=True)
        ref = idx[order[:kk]]
        got = chosen[b]
        ref_set, got_set = set(ref.tolist()), set(got.tolist())
        union = len(ref_set | got_set)
        jacc = len(ref_set & got_set) / union if union else 1.0
        by_idx = dict(zip(idx.tolist(), scores.tolist(), strict=True))
        kth = scores[order[kk - 1]]
        nxt = scores[order[kk]] if kk < len(order) else kth
        bgap = float(_rel(kth, nxt))
        diff = sorted(ref_set ^ got_set)
        dgap = max((float(_rel(torch.tensor(by_idx[t]), kth)) for t in diff), default=0.0)
        # order, rank by rank; equal fp32 scores in another order are swaps with gap 0 (float
        # noise, or a broken tie order: the exact-tie rule below tells them apart)
        got_scores = torch.tensor([by_idx[t] for t in got.tolist()], dtype=torch.float64)
        ref_scores = scores[order[:kk]]
        swapped = got != ref
        ogap = float(_rel(got_scores[swapped], ref_scores[swapped]).max()) if swapped.any() else 0.0
        ties = None
        if rec64 is not None and torch.equal(rec64["idx"][b], idx):
            pos = {t: i for i, t in enumerate(idx.tolist())}
            ties = _tie_breaks(rec64["scores"][b].numpy(),
                               np.array([pos[t] for t in got.tolist()], dtype=np.int64))
        ok = max(dgap, ogap) <= tol and not ties
        out.append(BlockDecision(block, kk, jacc, bgap, len(diff), dgap, int(swapped.sum()),
                                 ogap, ties, ok))
    return out


def _match_one_to_one(iou: np.ndarray, thr: float) -> int:
    """Greedy one-to-one matching (highest IoU first) of an (n, m) IoU matrix: pairs >= thr."""
    if iou.size == 0:
        return 0
    iou = iou.copy()
    matched = 0
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < thr:
            return matched
        matched += 1
        iou[i, :], iou[:, j] = -1.0, -1.0


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64; inf where either holds a NaN (a NaN must never pass a bar)."""
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    if d.size == 0:
        return 0.0
    return math.inf if np.isnan(d).any() else float(d.max())


def _outputs(out) -> dict[str, np.ndarray]:
    """The judged outputs of a reference run, as the graph names them (probabilities)."""
    return {OUTPUT_BOXES: out.boxes.numpy(), OUTPUT_PERSON_SCORES: out.person_scores.numpy(),
            OUTPUT_ACTION_PROBS: torch.sigmoid(out.action_logits).numpy()}


def compare(reference: EVAD, backend: Runner, clips: Sequence[np.ndarray],
            sizes: Sequence[np.ndarray], thresholds: Thresholds = FP32_THRESHOLDS,
            progress: Callable[[str], None] | None = None,
            oracle_clips: int | None = ORACLE_CLIPS, twins: int = TWINS) -> ParityReport:
    """Run ``backend``, the forced torch reference and its float64 oracle on each clip, and
    compare.

    Args:
        reference: the torch model (eval mode, on the CPU) with the export's preset. Its float64
            copy, the oracle, is made once per call.
        backend: any :class:`~evad.runner.Runner` (only its call is used): ``boxes``,
            ``person_scores``, ``action_probs`` and ``kept_idx_<block>`` arrays.
        clips, sizes: the inputs, one batch each.
        thresholds: the bars.
        progress: called after each run with what ran (``"backend"``, then ``"torch"`` once the
            fp32 reference and the oracle ran): two steps per clip, for a bar that moves within
            a clip.
        oracle_clips: how many batches (the first) get the oracle run; None: every one.
        twins: dithered fp32 twins of the reference per oracle clip (:func:`_dither`).
    """
    report = ParityReport(clips=0)
    report.oracle = {o: OracleError(o, thresholds.oracle_k, thresholds.floor(o))
                     for o in ORACLE_OUTPUTS}
    pruning = reference.pruning_blocks
    prob_sum, prob_n = 0.0, 0
    pairs = list(zip(clips, sizes, strict=True))
    oracle: EVAD | None = None
    for ci, (clip, size) in enumerate(pairs):
        got = backend(clip, size)
        if progress is not None:
            progress("backend")
        blocks = kept_blocks(got)
        forced = [torch.from_numpy(np.asarray(got[kept_idx_name(b)])).long() for b in blocks]
        with_oracle = oracle_clips is None or ci < oracle_clips
        records, handles = _capture_scores(reference)
        records64: list = []
        twin_outs: list[dict[str, np.ndarray]] = []
        try:
            with torch.no_grad():
                ref = reference(torch.from_numpy(clip), torch.from_numpy(size),
                                kept_indices=forced or None)
            for h in handles:
                h.remove()
            for t in range(twins if with_oracle else 0):
                handles = _dither(reference, 1000 * ci + t)
                with torch.no_grad():
                    twin_outs.append(_outputs(reference(torch.from_numpy(clip),
                                                        torch.from_numpy(size),
                                                        kept_indices=forced or None)))
                for h in handles:
                    h.remove()
            if with_oracle:
                if oracle is None:
                    oracle = copy.deepcopy(reference).double()
                records64, handles = _capture_scores(oracle, exact=True)
                with torch.no_grad():
                    ref64 = oracle(torch.from_numpy(clip).double(), torch.from_numpy(size),
                                   kept_indices=forced or None)
        except ValueError as e:  # decisions the reference cannot even follow
            report.failures.append(f"the backend's kept indices are inconsistent: {e}")
            break
        finally:
            for h in handles:
                h.remove()
        if progress is not None:
            progress("torch")
        if len(blocks) != len(ref.kept_indices):
            report.failures.append(f"backend reports {len(blocks)} pruning blocks, the reference "
                                   f"pruned in {len(ref.kept_indices)} ({pruning})")
            break
        exact = _pruning_records(records64) if with_oracle else [None] * len(blocks)
        for block, rec, rec64, chosen in zip(blocks, _pruning_records(records), exact, forced,
                                             strict=True):
            report.blocks.extend(_decisions(block, rec, chosen, thresholds.tie_rtol, rec64))
        ref32 = _outputs(ref)
        ref64s = _outputs(ref64) if with_oracle else {}
        for name, err in report.oracle.items():
            if with_oracle:
                runs = [_max_abs(o[name], ref64s[name]) for o in (ref32, *twin_outs)]
                err.runs.append(runs)
                err.reference.append(max(runs))
                err.backend.append(_max_abs(got[name], ref64s[name]))
            else:
                err.beyond.append(_max_abs(got[name], ref32[name]))
        report.oracle_clips += int(with_oracle)
        boxes = np.abs(got[OUTPUT_BOXES] - ref32[OUTPUT_BOXES])
        scores = np.abs(got[OUTPUT_PERSON_SCORES] - ref32[OUTPUT_PERSON_SCORES])
        probs = np.abs(got[OUTPUT_ACTION_PROBS] - ref32[OUTPUT_ACTION_PROBS])
        report.box_max_abs = max(report.box_max_abs, float(boxes.max()))
        report.person_score_max_abs = max(report.person_score_max_abs, float(scores.max()))
        report.prob_max_abs = max(report.prob_max_abs, float(probs.max()))
        prob_sum, prob_n = prob_sum + float(probs.sum()), prob_n + probs.size
        thr = reference.preset.person_threshold
        for b in range(clip.shape[0]):
            ref_scores = ref.person_scores[b].numpy()
            keep = ref_scores >= thr
            mine = got[OUTPUT_PERSON_SCORES][b] >= thr
            band = np.abs(ref_scores - thr) <= thresholds.score_band if \
                thresholds.score_band > 0 else np.zeros_like(keep)
            report.threshold_flips += int((band & (keep != mine)).sum())
            keep, mine = keep & ~band | keep & mine, mine & ~band | keep & mine
            ref_boxes, got_boxes = ref.boxes[b].numpy()[keep], got[OUTPUT_BOXES][b][mine]
            # one-to-one: a backend's extra (phantom) detections count against the rate too
            report.detections += max(int(keep.sum()), int(mine.sum()))
            # boxes clipped flat against an image edge match when they agree within half a pixel
            report.matched += _match_one_to_one(box_iou(ref_boxes, got_boxes, flat_match=0.5),
                                                thresholds.match_iou)
        report.clips += 1
    del oracle
    report.prob_mean_abs = prob_sum / max(prob_n, 1)
    _judge(report, thresholds)
    return report


def _judge(r: ParityReport, t: Thresholds) -> None:
    """Failures, one line each, led by the name of the failing output."""
    for d in r.blocks if t.judge_decisions else []:
        if not d.ok:
            how = ("beyond a near-tie" if max(d.differing_gap, d.order_gap) > t.tie_rtol else
                   "on exact ties, against the op contract's order (the lower position first)")
            ties = f"; {d.tie_breaks} token(s) out of the tie order" if d.tie_breaks else ""
            r.failures.append(
                f"{kept_idx_name(d.block)}: block {d.block}'s decision differs from the "
                f"reference {how} ({d.differing} differing token(s), gap {d.differing_gap:.2e}; "
                f"{d.order_swaps} order swap(s), gap {d.order_gap:.2e}; tie tolerance "
                f"{t.tie_rtol:.0e}{ties})")
            break
    for block, j in r.min_jaccard().items():
        if j < t.min_jaccard and t.min_jaccard < 1.0:
            r.failures.append(f"{kept_idx_name(block)}: block {block}'s kept-token Jaccard "
                              f"{j:.4f} < {t.min_jaccard}")
    for name, e in r.oracle.items():
        unit = ORACLE_OUTPUTS[name]
        for ci, (back, ref, bound) in enumerate(zip(e.backend, e.reference, e.bounds(),
                                                    strict=True)):
            if not back <= bound:  # NaN is inf here already
                r.failures.append(
                    f"{name}: {back:.3e}{unit} from the float64 oracle on clip {ci + 1}, more "
                    f"than {e.k:g} x the fp32 reference's {ref:.3e}{unit} + {e.floor:.2g}{unit} "
                    f"(ratio {_ratio(back, ref):.3g})")
                break
        else:
            for ci, d in enumerate(e.beyond):
                if not d <= e.beyond_bound:
                    r.failures.append(
                        f"{name}: {d:.3e}{unit} from the fp32 reference on clip "
                        f"{r.oracle_clips + ci + 1} (no oracle run), more than ({e.k:g} + 1) x "
                        f"the sample's fp32 error {e.reference_max:.3e}{unit} + "
                        f"{e.floor:.2g}{unit}")
                    break
    if t.min_match_rate is not None and r.match_rate < t.min_match_rate:
        r.failures.append(f"detections: matched {r.match_rate:.3f} < {t.min_match_rate}")
