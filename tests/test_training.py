"""The released losses on hand-made cases, and a short training run that lowers the loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evad.datasets.synthetic import generate_dataset
from evad.models import load_checkpoint
from evad.training.losses import LossWeights, box_giou, detection_loss, hungarian_match
from evad.training.trainer import TrainConfig, train


def test_giou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 1.0]])
    g = box_giou(a, b)[0]
    # identical: 1; overlap 1 of union 7 in hull 9: 1/7 - 2/9; disjoint: 0 - (8 - 5)/8
    torch.testing.assert_close(g, torch.tensor([1.0, 1 / 7 - 2 / 9, -3 / 8]))


def test_hungarian_match_picks_the_obvious_assignment() -> None:
    boxes = torch.tensor([[[50.0, 50, 90, 90], [0, 0, 20, 20], [200, 200, 210, 210]]])
    logits = torch.zeros(1, 3, 2)
    targets = [torch.tensor([[1.0, 1, 21, 21], [52.0, 48, 91, 92]])]
    whwh = torch.tensor([[256.0, 256, 256, 256]])
    rows, cols = hungarian_match(logits, boxes, targets, whwh)[0]
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0}


def test_detection_loss_values() -> None:
    targets = [torch.tensor([[10.0, 10, 50, 50]])]
    boxes = torch.tensor([[[10.0, 10, 50, 50], [0, 0, 5, 5]]])
    logits = torch.zeros(1, 2, 2)
    whwh = torch.tensor([[100.0, 100, 100, 100]])
    match = [(torch.tensor([0]), torch.tensor([0]))]
    w = LossWeights()
    loss = detection_loss(logits, boxes, targets, whwh, match, w)
    assert float(loss["l1"]) == 0 and float(loss["giou"]) == pytest.approx(0, abs=1e-6)
    # uniform logits: -log(1/2) for both rows, weighted mean with weights 1 and 0.1
    assert float(loss["ce"]) == pytest.approx(w.cls * math.log(2), rel=1e-6)
    moved = boxes.clone()
    moved[0, 0] += torch.tensor([10.0, 0, 10, 0])  # shift by 10 px = 0.1 normalised, twice
    loss2 = detection_loss(logits, moved, targets, whwh, match, w)
    assert float(loss2["l1"]) == pytest.approx(w.l1 * 0.2, rel=1e-5)


def test_short_training_lowers_the_loss_and_resumes(tmp_path) -> None:
    data = generate_dataset(tmp_path / "data", 2, seed=5, duration=4.0, progress=False)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), preset="demo", steps=24,
                      batch=2, lr=1e-3, warmup=2, checkpoint_every=12, log_every=1)
    last = train(cfg, progress=False)
    log = [json.loads(line) for line in open(tmp_path / "run" / "loss_log.jsonl")]
    first = sum(r["total"] for r in log[:6]) / 6
    final = sum(r["total"] for r in log[-6:]) / 6
    assert final < 0.8 * first, (first, final)
    model, meta = load_checkpoint(last)  # the released layout
    assert meta["preset"].name == "demo" and meta["epoch"] == 24
    cfg.steps = 26
    train(cfg, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "loss_log.jsonl")]
    assert steps[-3:] == [23, 24, 25]  # continued after step 24, not from 0
