"""The released losses on hand-made cases, and a short training run that lowers the loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evad.ava_csv import read_rows
from evad.datasets.clips import ClipDataset
from evad.datasets.synthetic import generate_dataset
from evad.evaluation.ava_eval import evaluate
from evad.evaluation.detect import dataset_rows
from evad.models import build_model, load_checkpoint
from evad.models.runner import TorchRunner
from evad.training.losses import LossWeights, box_giou, detection_loss, hungarian_match
from evad.training.trainer import TrainConfig, grid_proposals, train


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
    val = generate_dataset(tmp_path / "val", 1, seed=7, duration=3.0, progress=False)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), preset="demo", steps=24,
                      batch=2, lr=1e-3, warmup=2, checkpoint_every=12, log_every=1,
                      val_data=str(val), val_every=12)
    last = train(cfg, progress=False)
    records = [json.loads(line) for line in open(tmp_path / "run" / "loss_log.jsonl")]
    log = [r for r in records if "total" in r]
    first = sum(r["total"] for r in log[:6]) / 6
    final = sum(r["total"] for r in log[-6:]) / 6
    assert final < 0.8 * first, (first, final)
    model, meta = load_checkpoint(last)  # the released layout
    assert meta["preset"].name == "demo" and meta["epoch"] == 24
    # validation ran after 12 and 24 steps and logged what evad-eval computes for the checkpoint
    vals = [r for r in records if "val_mAP" in r]
    assert [r["step"] for r in vals] == [11, 23]  # after the 12th and the 24th step
    gt = read_rows(val / "annotations.csv", scores=False)
    rows = dataset_rows(TorchRunner(model), ClipDataset(val, meta["preset"]))
    want = evaluate(gt, rows, range(1, 9))
    assert vals[-1]["val_mAP"] == pytest.approx(want["mAP"], abs=1e-4)
    assert vals[-1]["val_ap"] == {
        str(c): None if r["ap"] is None else pytest.approx(r["ap"], abs=1e-4)
        for c, r in want["per_class"].items()}
    cfg.steps = 26
    train(cfg, resume=True, progress=False)
    records = [json.loads(line) for line in open(tmp_path / "run" / "loss_log.jsonl")]
    steps = [r["step"] for r in records if "total" in r]
    assert steps[-3:] == [23, 24, 25]  # continued after step 24, not from 0
    assert records[-1]["step"] == 25 and "val_mAP" in records[-1]  # validated at the end


def test_grid_proposals_tile_the_image() -> None:
    model = build_model("demo")  # 16 proposals: 2 rows x 8 columns of 0.2 x 0.6 boxes
    grid_proposals(model)
    boxes = model.init_proposal_boxes.weight.detach()
    assert boxes[:, 0].tolist() == pytest.approx([(c + 0.5) / 8 for c in range(8)] * 2)
    assert boxes[:, 1].tolist() == pytest.approx([0.25] * 8 + [0.75] * 8)
    torch.testing.assert_close(boxes[:, 2:], torch.tensor([[0.2, 0.6]]).expand(16, 2))
    model = build_model("tiny")  # 20 proposals: 3 rows x 7 columns, the last cell left out
    grid_proposals(model)
    boxes = model.init_proposal_boxes.weight.detach()
    assert boxes[-1].tolist() == pytest.approx([5.5 / 7, 2.5 / 3, 1.6 / 7, 0.4])


def test_cli_writes_half_weights_with_the_command(tmp_path) -> None:
    from evad.training.cli import main

    data = generate_dataset(tmp_path / "data", 1, seed=11, duration=3.0, progress=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2", "--batch", "2",
            "--quiet", "--half-weights", str(tmp_path / "demo.pth")]
    assert main(argv) == 0
    blob = torch.load(tmp_path / "demo.pth", map_location="cpu", weights_only=True)
    assert blob["train"] == "evad-train " + " ".join(argv) and blob["epoch"] == 2
    assert not blob["optimizer_state"]
    assert {v.dtype for v in blob["model_state"].values() if v.is_floating_point()} == {
        torch.float16}
    full, _ = load_checkpoint(tmp_path / "run" / "last.pth")
    half, _ = load_checkpoint(tmp_path / "demo.pth")
    for (k, a), b in zip(full.state_dict().items(), half.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=k)
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
