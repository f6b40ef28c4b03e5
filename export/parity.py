"""Parity of a backend against the torch reference, under discrete decisions.

A backend decides which tokens each pruning block keeps; near-ties make two correct backends
decide differently (``docs/design.md``, "Parity under discrete decisions"). So each clip is
checked in two halves, from ONE torch run forced to the backend's own decisions:

1. decisions: at every pruning block, the reference's importance scores (computed by torch from
   the same block inputs) rank the tokens; the backend's kept set and order must equal the
   reference's top-k, except where the reference's scores of the differing tokens sit within
   ``tie_rtol`` of each other (a near-tie, reported with its gap);
2. continuous outputs: boxes, person scores and action probabilities of the forced torch run
   must match the backend's within the thresholds.

Polygraphy's comparators (``CompareFunc.simple``) compare same-named arrays element-wise; that is
the wrong test for top-k indices (set and order semantics with ties) and for detections (matching
by IoU), and the element-wise part left is two lines of numpy. So they are not used here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from evad.models.evad import EVAD
from evad.models.keyframe_topk_prune import importance, pruned_count
from evad.runner import (
    OUTPUT_ACTION_PROBS,
    OUTPUT_BOXES,
    OUTPUT_PERSON_SCORES,
    Runner,
    kept_blocks,
    kept_idx_name,
)

__all__ = ["FP32_THRESHOLDS", "OPENVINO_FP32_THRESHOLDS", "REDUCED_THRESHOLDS", "ParityReport",
           "Thresholds", "compare", "seeded_inputs"]


def seeded_inputs(n: int, batch: int, frames: int, height: int, width: int,
                  seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` batches of seeded normal clips (normalised-frame statistics) and their sizes:
    clips (batch, 3, frames, height, width) float32, sizes (batch, 2) int64."""
    rng = np.random.default_rng(seed)
    clips = [rng.standard_normal((batch, 3, frames, height, width), dtype=np.float32)
             for _ in range(n)]
    sizes = [np.tile(np.array([[height, width]], dtype=np.int64), (batch, 1)) for _ in range(n)]
    return clips, sizes


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail bars of one comparison (``docs/design.md``, "Precision and parity rules")."""

    box_max_abs: float | None = 1e-2  # px
    prob_max_abs: float | None = 1e-4
    prob_mean_abs: float | None = None
    min_jaccard: float = 1.0  # per pruning block, after near-ties are forgiven
    min_match_rate: float | None = None  # detections matched at IoU >= match_iou
    match_iou: float = 0.9
    tie_rtol: float = 1e-6  # relative score gap under which a different decision is a near-tie
    judge_decisions: bool = True  # fail a decision beyond a near-tie (else: report it only)
    #: person-score band around the threshold: a query whose reference score lies within it may
    #: be a detection on one side only (a threshold flip, the detections' near-tie), so it is
    #: left out of the match rate and counted apart
    score_band: float = 0.0


FP32_THRESHOLDS = Thresholds()
#: OpenVINO at fp32: its exp and reduction order move importance scores by ~1e-6 relative (seen:
#: order swaps at a 1.3e-6 gap on the tiny model), so near-ties are forgiven up to 1e-5.
OPENVINO_FP32_THRESHOLDS = replace(FP32_THRESHOLDS, tie_rtol=1e-5)
# fp16/bf16: flips and swaps are reported with their gaps; the bars are the design's.
# score_band: OpenVINO bf16 moved person scores near the 0.7 threshold by up to 0.03 (vit_b_ktp,
# calmed random weights, 2 clips): without the band 45 of 47 detections matched, the two others
# being threshold crossers whose boxes matched at IoU >= 0.987; with it 44 of 44, 4 flips.
REDUCED_THRESHOLDS = Thresholds(box_max_abs=None, prob_max_abs=None, prob_mean_abs=0.01,
                                min_jaccard=0.97, min_match_rate=0.98, tie_rtol=1e-2,
                                judge_decisions=False, score_band=0.05)


@dataclass
class BlockDecision:
    """One pruning block of one clip: how the backend's decision relates to the reference's."""

    block: int
    kept: int
    jaccard: float  # |backend & reference| / |backend | reference|
    boundary_gap: float  # relative gap between the reference's K-th and (K+1)-th score
    differing: int  # tokens kept by exactly one side
    differing_gap: float  # largest relative score gap among differing tokens (0 if none)
    order_swaps: int  # ranks where the backend's order differs from the reference's
    order_gap: float  # largest relative score gap among swapped ranks (0 if none)
    ok: bool


@dataclass
class ParityReport:
    clips: int
    blocks: list[BlockDecision] = field(default_factory=list)
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
                 min_jaccard={str(k): v for k, v in self.min_jaccard().items()})
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
            out.append(f"block {block}: kept {mine[0].kept} non-keyframe tokens (the keyframe's "
                       f"are always kept), Jaccard min {j:.4f}, "
                       f"{flips} boundary flip(s) (max gap {gap:.2e}), {swaps} order swap(s) "
                       f"(max gap {ogap:.2e})")
        out.append(f"boxes max abs {self.box_max_abs:.2e} px, person score max abs "
                   f"{self.person_score_max_abs:.2e}, action prob max abs {self.prob_max_abs:.2e} "
                   f"mean abs {self.prob_mean_abs:.2e}, detections matched "
                   f"{self.matched}/{self.detections}"
                   + (f" ({self.threshold_flips} threshold flip(s) in the score band left out)"
                      if self.threshold_flips else ""))
        out.extend(f"FAIL: {f}" for f in self.failures)
        return out


def _capture_scores(model: EVAD) -> tuple[list[torch.Tensor], list]:
    """Hooks that record, for every pruning block run, the reference importance scores of the
    block's input tokens (B, N - S) in the block's input order and that input ``idx``."""
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
                rec["scores"] = importance(q, k, rec["s"], _w)

        handles.append(blk.register_forward_pre_hook(pre))
        handles.append(blk.attn.register_forward_hook(post))
    return records, handles


def _pruning_records(records: list) -> list:
    return [r for r in records if r["prunes"]]


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() / torch.maximum(a.abs(), b.abs()).clamp_min(1e-30)


def _decisions(block: int, rec: dict, chosen: torch.Tensor, tol: float) -> list[BlockDecision]:
    """Compare one block's backend decision (B, K) against the reference scores."""
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
        # order: compare scores rank by rank (equal scores in any order are not a swap)
        got_scores = torch.tensor([by_idx[t] for t in got.tolist()], dtype=torch.float64)
        ref_scores = scores[order[:kk]]
        swapped = (got != ref) & (got_scores != ref_scores)
        ogap = float(_rel(got_scores[swapped], ref_scores[swapped]).max()) if swapped.any() else 0.0
        ok = max(dgap, ogap) <= tol
        out.append(BlockDecision(block, kk, jacc, bgap, len(diff), dgap, int(swapped.sum()),
                                 ogap, ok))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) x1y1x2y2 -> (n, m) IoU. Two zero-area boxes (clipped to an image edge)
    have no IoU; they count as 1 when every coordinate agrees within half a pixel."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    same = np.abs(a[:, None] - b[None]).max(-1) <= 0.5
    return np.where((union <= 0) & same, 1.0, iou)


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


def compare(reference: EVAD, backend: Runner, clips: Sequence[np.ndarray],
            sizes: Sequence[np.ndarray], thresholds: Thresholds = FP32_THRESHOLDS,
            progress: Callable[[str], None] | None = None) -> ParityReport:
    """Run ``backend`` and the forced torch reference on each clip and compare.

    Args:
        reference: the torch model (eval mode) with the export's preset.
        backend: any :class:`~evad.runner.Runner` (only its call is used): ``boxes``,
            ``person_scores``, ``action_probs`` and ``kept_idx_<block>`` arrays.
        clips, sizes: the inputs, one batch each.
        thresholds: the bars.
        progress: called after each run with what ran (``"backend"``, then ``"torch"``): two
            steps per clip, for a bar that moves within a clip.
    """
    report = ParityReport(clips=0)
    pruning = reference.pruning_blocks
    prob_sum, prob_n = 0.0, 0
    pairs = list(zip(clips, sizes, strict=True))
    for clip, size in pairs:
        got = backend(clip, size)
        if progress is not None:
            progress("backend")
        blocks = kept_blocks(got)
        forced = [torch.from_numpy(np.asarray(got[kept_idx_name(b)])).long() for b in blocks]
        records, handles = _capture_scores(reference)
        try:
            with torch.no_grad():
                ref = reference(torch.from_numpy(clip), torch.from_numpy(size),
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
        for block, rec, chosen in zip(blocks, _pruning_records(records), forced, strict=True):
            report.blocks.extend(_decisions(block, rec, chosen, thresholds.tie_rtol))
        boxes = np.abs(got[OUTPUT_BOXES] - ref.boxes.numpy())
        scores = np.abs(got[OUTPUT_PERSON_SCORES] - ref.person_scores.numpy())
        probs = np.abs(got[OUTPUT_ACTION_PROBS] - torch.sigmoid(ref.action_logits).numpy())
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
            report.matched += _match_one_to_one(_iou(ref_boxes, got_boxes), thresholds.match_iou)
        report.clips += 1
    report.prob_mean_abs = prob_sum / max(prob_n, 1)
    _judge(report, thresholds)
    return report


def _judge(r: ParityReport, t: Thresholds) -> None:
    for d in r.blocks if t.judge_decisions else []:
        if not d.ok:
            r.failures.append(
                f"block {d.block}: decision differs from the reference beyond a near-tie "
                f"({d.differing} differing token(s), gap {d.differing_gap:.2e}; {d.order_swaps} "
                f"order swap(s), gap {d.order_gap:.2e}; tie tolerance {t.tie_rtol:.0e})")
            break
    for block, j in r.min_jaccard().items():
        if j < t.min_jaccard and t.min_jaccard < 1.0:
            r.failures.append(f"block {block}: kept-token Jaccard {j:.4f} < {t.min_jaccard}")
    if t.box_max_abs is not None and r.box_max_abs > t.box_max_abs:
        r.failures.append(f"boxes max abs diff {r.box_max_abs:.3e} px > {t.box_max_abs}")
    if t.prob_max_abs is not None and r.prob_max_abs > t.prob_max_abs:
        r.failures.append(f"action prob max abs diff {r.prob_max_abs:.3e} > {t.prob_max_abs}")
    if t.prob_mean_abs is not None and r.prob_mean_abs > t.prob_mean_abs:
        r.failures.append(f"action prob mean abs diff {r.prob_mean_abs:.3e} > {t.prob_mean_abs}")
    if t.min_match_rate is not None and r.match_rate < t.min_match_rate:
        r.failures.append(f"detections matched {r.match_rate:.3f} < {t.min_match_rate}")
