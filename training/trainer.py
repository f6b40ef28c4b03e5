"""Training loop for any preset on AVA-format data (the demo model is trained with it)."""

from __future__ import annotations

import json
import math
import numbers
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from evad.atomic import write_json_atomic
from evad.ava_csv import read_rows
from evad.command import (
    check_output_dir,
    check_output_file,
    one_line,
)
from evad.datasets.ava import check_dataset
from evad.datasets.clips import ClipDataset, collate
from evad.errors import CheckpointError, ConfigError, EvadError
from evad.evaluation.ava_eval import evaluate
from evad.evaluation.detect import dataset_rows
from evad.models import build_model, get_preset
from evad.models.checkpoint import load_checkpoint, save_checkpoint
from evad.run_lock import FolderLock
from evad.runtime.backends import open_runner
from evad.training.losses import LossWeights, detection_loss, hungarian_match

__all__ = ["TrainConfig", "check_config", "grid_proposals", "train", "validate"]


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "demo"
    steps: int = 3000
    batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    gt_boxes_prob: float = 0.5  # actor boxes replaced by the matched people's (released trick)
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 250
    log_every: int = 10
    proposal_init: str = "grid"  # "grid" (see grid_proposals) or "image" (released init)
    val_data: str | None = None  # AVA-format folder scored with frame mAP every val_every steps
    val_every: int = 500


@torch.no_grad()
def grid_proposals(model) -> None:
    """Start the learnable proposal boxes as a grid of tall boxes tiling the image.

    The released initialisation makes every proposal the whole image, so at the start all of them
    pool the same features and the Hungarian matching assigns people to proposals arbitrarily;
    from scratch (no pre-trained encoder) that costs a long plateau. With a grid, each proposal
    pools its own region from the first step and is matched to the people near it.
    ``floor(sqrt(n / 2))`` rows of ``ceil(n / rows)`` columns (the last row may be partial);
    boxes 1.6 column and 1.2 row spacings in size (16 proposals: 2 x 8 boxes of 0.2 x 0.6 of the
    image). Only the initial value changes: the boxes stay learnable, and the checkpoint layout
    is the released one.
    """
    n = model.init_proposal_boxes.weight.shape[0]
    rows = max(1, math.floor(math.sqrt(n / 2)))
    cols = math.ceil(n / rows)
    r, c = torch.arange(n) // cols, torch.arange(n) % cols
    boxes = torch.stack(((c + 0.5) / cols, (r + 0.5) / rows,
                         torch.full((n,), min(1.0, 1.6 / cols)),
                         torch.full((n,), min(1.0, 1.2 / rows))), dim=1)
    model.init_proposal_boxes.weight.copy_(boxes)  # (cx, cy, w, h), fractions of the image


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _step_losses(model, clips, sizes, boxes, actions, w: LossWeights, gt_prob: float,
                 rng: random.Random) -> dict[str, torch.Tensor]:
    size_f = sizes.float()
    whwh = size_f.flip(-1).repeat(1, 2)
    enc = model.encode(clips)
    stage_logits, stage_boxes = model.localize(enc, size_f)
    losses: dict[str, torch.Tensor] = {}
    match = []
    for logits, pred in zip(stage_logits, stage_boxes, strict=True):  # deep supervision
        match = hungarian_match(logits, pred, boxes, whwh, w)
        for k, v in detection_loss(logits, pred, boxes, whwh, match, w).items():
            losses[k] = losses.get(k, 0.0) + v
    actors = stage_boxes[-1].detach().clone()
    if rng.random() < gt_prob:
        for i, (rows, cols) in enumerate(match):
            actors[i, rows] = boxes[i][cols]
    block_logits = model.classify_actions(enc, actors, size_f, clips.shape[-2:], all_blocks=True)
    target = torch.cat([actions[i][c] for i, (_, c) in enumerate(match)])
    bce = 0.0
    for logits in block_logits:
        picked = torch.cat([logits[i, r] for i, (r, _) in enumerate(match)])
        bce = bce + F.binary_cross_entropy_with_logits(picked, target)
    losses["action"] = w.action * bce
    return losses


def validate(model, data: ClipDataset, gt: list) -> dict:
    """Frame mAP@0.5 of ``model`` on the annotated keyframes of ``data`` (AVA protocol):
    ``{"val_mAP": mean, "val_ap": {class id: AP or None (no ground truth)}}``."""
    preset = model.preset
    device = next(model.parameters()).device
    try:
        with open_runner("torch", model=model, model_name="training model",
                         cuda=device.type == "cuda")[0] as runner:
            rows = dataset_rows(runner, data, batch=8)
    finally:
        model.train()
    res = evaluate(gt, rows, range(1, preset.num_classes + 1))
    return {"val_mAP": round(res["mAP"], 4),
            "val_ap": {c: None if r["ap"] is None else round(r["ap"], 4)
                       for c, r in res["per_class"].items()}}


_MAX_SEED = 2**32 - 1  # torch, numpy and random all take it (torch's Generator adds the step)

# (field, flag, lowest, lowest excluded, integer): the ranges train() accepts
_RANGES = [("steps", "--steps", 1, False, True), ("batch", "--batch", 1, False, True),
           ("lr", "--lr", 0, True, False), ("weight_decay", None, 0, False, False),
           ("warmup", "--warmup", 0, False, True), ("gt_boxes_prob", None, 0, False, False),
           ("seed", "--seed", 0, False, True), ("threads", "--threads", 0, False, True),
           ("checkpoint_every", "--checkpoint-every", 1, False, True),
           ("log_every", None, 1, False, True), ("val_every", "--val-every", 1, False, True)]


def check_config(cfg: TrainConfig) -> None:
    """Refuse a config train() cannot run: a number out of range (or NaN / inf), an unknown
    preset or proposal initialisation.

    Raises:
        ConfigError: naming the field (and its evad-train flag) and the range.
    """
    for name, flag, lo, lo_open, integer in _RANGES:
        v = getattr(cfg, name)
        what = f"{name} ({flag})" if flag else name
        kind = "an integer" if integer else "a number"
        if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer
                                                    else numbers.Real) \
                or not math.isfinite(v) or v < lo or (lo_open and v == lo):
            raise ConfigError(f"{what} must be {kind} {'>' if lo_open else '>='} {lo}, not "
                              f"{v!r}")
    if cfg.seed > _MAX_SEED:
        raise ConfigError(f"seed (--seed) must be an integer in [0, {_MAX_SEED}], not "
                          f"{cfg.seed!r}")
    if cfg.gt_boxes_prob > 1:
        raise ConfigError(f"gt_boxes_prob must be in [0, 1], not {cfg.gt_boxes_prob!r}")
    if cfg.proposal_init not in ("grid", "image"):
        raise ConfigError(f"proposal_init must be 'grid' or 'image', not {cfg.proposal_init!r}")
    get_preset(cfg.preset)  # ConfigError: unknown preset, with the known names


def _resume(last: Path, model, opt: torch.optim.Optimizer, rng: random.Random,
            cfg: TrainConfig) -> int:
    """Load ``last`` (a checkpoint train() wrote) into ``model``, ``opt`` and ``rng``; the step
    to continue from.

    Raises:
        CheckpointError: the file is unreadable, truncated, not an EVAD checkpoint, of another
            preset, or has no (or a mismatched) optimizer state or step.
    """
    loaded, meta = load_checkpoint(last)  # every unreadable / corrupt case, in one line
    name = meta["preset"].name
    fresh = "drop --resume or pass another --out to start afresh"
    if name != cfg.preset:
        raise CheckpointError(f"{last} was trained with preset {name!r}, not {cfg.preset!r}: "
                              f"pass --preset {name} to continue it, or {fresh}")
    try:
        model.load_state_dict(loaded.state_dict())
    except RuntimeError as e:
        raise CheckpointError(f"{last}: its weights do not fit preset {cfg.preset!r} "
                              f"({one_line(e)[:200]}); {fresh}") from e
    try:
        blob = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:  # it loaded a moment ago: changed on disk since?
        raise CheckpointError(f"cannot read checkpoint {last}: {one_line(e)[:200]}") from e
    step, state = blob.get("step"), blob.get("optimizer_state")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not state:
        raise CheckpointError(f"{last} is not a resumable training checkpoint (no optimizer "
                              f"state or step: a --half-weights copy or released weights?); "
                              f"{fresh}")
    try:
        opt.load_state_dict(state)
        for group in opt.param_groups:
            for p in group["params"]:
                for k, v in opt.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                        raise ValueError(f"{k} is {tuple(v.shape)} for a {tuple(p.shape)} "
                                         "parameter")
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{last}: its optimizer state does not fit this model "
                              f"({one_line(e)[:200]}); {fresh}") from e
    if "rng" in blob:
        try:
            rng.setstate(tuple(blob["rng"]))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{last}: its random state is malformed ({one_line(e)}); "
                                  f"{fresh}") from e
    if step >= cfg.steps:
        raise ConfigError(f"{last} has already trained {step} steps and --steps is "
                          f"{cfg.steps}: nothing to do; pass --steps > {step} to continue")
    return step


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpointing ``<out>/last.pth`` (released layout, resumable) every
    ``checkpoint_every`` steps and logging losses to ``<out>/loss_log.jsonl``; with
    ``val_data``, also the frame mAP on that folder every ``val_every`` steps and at the end.
    Every record's ``step`` is the 0-based index of the step it follows.

    Everything that can refuse the run is checked before anything is written: the config,
    the output folder and its files, the data (annotations and videos), the checkpoint to
    resume. ``resume`` without ``<out>/last.pth`` starts from step 0.

    Raises:
        ConfigError / CheckpointError / EvadError: one line naming the problem and the fix.
    """
    check_config(cfg)
    from tqdm import tqdm

    out = Path(cfg.out)
    check_output_dir(out, "--out")
    last = out / "last.pth"
    for name in ("last.pth", "loss_log.jsonl", "train_config.json"):
        if (out / name).is_dir():
            raise EvadError(f"{out / name} is a directory where the run writes its {name}: "
                            "remove it or pass another --out")
        check_output_file(out / name, f"--out file {name}")
    check_dataset(cfg.data, "--data")
    if cfg.val_data:
        check_dataset(cfg.val_data, "--val")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    preset = get_preset(cfg.preset)
    # the model (and the checkpoint to resume) before the videos are decoded: the same torch
    # random stream as ever (ClipDataset draws from numpy), and a bad checkpoint is said early
    model = build_model(preset).train()
    if cfg.proposal_init == "grid":
        grid_proposals(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume and last.exists():
        start = _resume(last, model, opt, rng, cfg)
    data = ClipDataset(cfg.data, preset, flip=True, seed=cfg.seed)
    if len(data) < cfg.batch:
        raise ConfigError(f"--data {cfg.data} has {len(data)} annotated keyframe(s), fewer than "
                          f"--batch {cfg.batch}: pass --batch {len(data)} or more data")
    val = gt = None
    if cfg.val_data:
        val = ClipDataset(cfg.val_data, preset)
        gt = read_rows(Path(cfg.val_data) / "annotations.csv", scores=False,
                       what="annotations of --val")
    # checked: from here on the run writes, one run per folder (a second is refused at once)
    with FolderLock(out, "evad-train") as lock:
        if lock.taken_over and progress:
            print(f"evad-train: warning: {lock.taken_over}", file=sys.stderr)
        write_json_atomic(out / "train_config.json", asdict(cfg))
        w = LossWeights()
        g = torch.Generator().manual_seed(cfg.seed + start)
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch, shuffle=True, generator=g,
                                             collate_fn=collate, drop_last=True)
        it = iter(loader)
        t0 = time.perf_counter()
        # the bar as a context: a failure ends its line before the error is printed
        with tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
                  disable=not progress) as bar, open(out / "loss_log.jsonl", "a") as log:
            for step in bar:
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                for group in opt.param_groups:
                    group["lr"] = _lr(cfg, step)
                losses = _step_losses(model, *batch, w, cfg.gt_boxes_prob, rng)
                total = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                if step % cfg.log_every == 0 or step == cfg.steps - 1:
                    rec = {"step": step, "total": float(total.detach()), "lr": _lr(cfg, step),
                           "elapsed_s": round(time.perf_counter() - t0, 1),
                           **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{rec['total']:.3f}")
                if val is not None and ((step + 1) % cfg.val_every == 0 or step == cfg.steps - 1):
                    rec = {"step": step, **validate(model, val, gt)}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.write(f"after {step + 1} steps: validation frame mAP@0.5 "
                              f"{rec['val_mAP']:.4f}")
                if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
                    save_checkpoint(model, last, epoch=step + 1, optimizer_state=opt.state_dict(),
                                    extra={"step": step + 1, "rng": list(rng.getstate())})
    return last
