"""Training loop for any preset on AVA-format data (the demo model is trained with it)."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from evad.datasets.clips import ClipDataset, collate
from evad.errors import EvadError
from evad.evaluation.ava_eval import evaluate, read_rows
from evad.evaluation.detect import detect
from evad.models import build_model, get_preset
from evad.models.checkpoint import save_checkpoint
from evad.models.runner import TorchRunner
from evad.training.losses import LossWeights, detection_loss, hungarian_match

__all__ = ["TrainConfig", "grid_proposals", "train", "validate"]


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
        rows = detect(TorchRunner(model, "training model", device), data, batch=8)
    finally:
        model.train()
    res = evaluate(gt, rows, range(1, preset.num_classes + 1))
    return {"val_mAP": round(res["mAP"], 4),
            "val_ap": {c: None if r["ap"] is None else round(r["ap"], 4)
                       for c, r in res["per_class"].items()}}


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpointing ``<out>/last.pth`` (released layout, resumable) every
    ``checkpoint_every`` steps and logging losses to ``<out>/loss_log.jsonl``; with
    ``val_data``, also the frame mAP on that folder every ``val_every`` steps and at the end.
    Every record's ``step`` is the 0-based index of the step it follows."""
    if cfg.val_every < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise EvadError("val_every, checkpoint_every and log_every must be >= 1 steps")
    if cfg.proposal_init not in ("grid", "image"):
        raise EvadError(f"proposal_init must be 'grid' or 'image', not {cfg.proposal_init!r}")
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    preset = get_preset(cfg.preset)
    data = ClipDataset(cfg.data, preset, flip=True, seed=cfg.seed)
    val = gt = None
    if cfg.val_data:

        val = ClipDataset(cfg.val_data, preset)
        gt = read_rows(Path(cfg.val_data) / "annotations.csv", scores=False)
    model = build_model(preset).train()
    if cfg.proposal_init == "grid":
        grid_proposals(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    last = out / "last.pth"
    if resume and last.is_file():
        blob = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v for k, v in blob["model_state"].items()
                               if not k.startswith("criterion.")})
        opt.load_state_dict(blob["optimizer_state"])
        start = int(blob.get("step", 0))
        rng.setstate(tuple(blob["rng"]) if "rng" in blob else rng.getstate())
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    w = LossWeights()
    g = torch.Generator().manual_seed(cfg.seed + start)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch, shuffle=True, generator=g,
                                         collate_fn=collate, drop_last=True)
    it = iter(loader)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
               disable=not progress)
    t0 = time.perf_counter()
    with open(out / "loss_log.jsonl", "a") as log:
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
