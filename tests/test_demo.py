"""The shipped demo model: it loads, ORT matches torch in frame mAP, and evad-trt-run with no
arguments runs it on the demo video."""

from __future__ import annotations

import csv
import json

import pytest

from evad.ava_csv import read_rows
from evad.datasets import GENERATOR_VERSION
from evad.datasets.clips import ClipDataset
from evad.datasets.synthetic import generate_dataset
from evad.evaluation.ava_eval import evaluate
from evad.evaluation.detect import dataset_rows
from evad.export.exporter import Exporter
from evad.export.ort_runner import OrtRunner
from evad.models import load_checkpoint
from evad.models.demo import demo_checkpoint
from evad.models.runner import TorchRunner


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(demo_checkpoint())


def test_demo_checkpoint(demo) -> None:
    model, meta = demo
    assert meta["preset"].name == "demo" and meta["preset"].num_classes == 8
    assert demo_checkpoint().stat().st_size < 5_000_000  # fp16, small enough to ship
    assert next(model.parameters()).dtype.is_floating_point


def test_onnx_gives_the_same_map_as_torch(demo, tmp_path) -> None:
    """Bar: the ONNX model in ORT gives the torch model's frame mAP within 0.005 (fresh scenes,
    seeds the demo model never saw)."""
    model, meta = demo
    preset = meta["preset"]
    data = generate_dataset(tmp_path / "d", 3, seed=900_000, duration=6.0, progress=False)
    clips = ClipDataset(data, preset)
    onnx_path = Exporter(128, 256, made_by="tests")(tmp_path / "demo.onnx",
                                                    ckpt=demo_checkpoint()).path
    gt = read_rows(data / "annotations.csv", scores=False)
    classes = range(1, 9)
    m_torch = evaluate(gt, dataset_rows(TorchRunner(model), clips), classes)["mAP"]
    m_ort = evaluate(gt, dataset_rows(OrtRunner(onnx_path, cuda=False), clips),
                     classes)["mAP"]
    assert abs(m_torch - m_ort) <= 0.005, (m_torch, m_ort)
    # the shipped weights detect: 0.646 on these 3 scenes when the model was shipped (0.647 on
    # the 40 held-out videos); random weights score below 0.05
    assert m_torch >= 0.55, m_torch


def test_trt_run_with_no_arguments(tmp_path, monkeypatch) -> None:
    """The demo video and the demo model's ONNX are made on first use, then it runs."""
    from evad.cli.trt_run import main

    monkeypatch.setenv("EVAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["--render", "--quiet", "--out", str(tmp_path / "o")]) == 0
    out = tmp_path / "o"
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == 20  # one keyframe per second of the 20 s demo video
    rows = list(csv.reader(open(out / "detections.csv")))
    assert rows and all(r[0] == "demo" and 0 <= float(r[2]) <= float(r[4]) <= 1 for r in rows)
    assert (out / "annotated.mp4").stat().st_size > 10_000
    assert (tmp_path / "cache" / f"video_v{GENERATOR_VERSION}" / "demo.mp4").is_file()
