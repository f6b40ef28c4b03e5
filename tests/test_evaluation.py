"""evad-eval against hand-computed AVA frame-AP cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evad.ava_csv import by_score
from evad.datasets.clips import ClipDataset
from evad.datasets.synthetic import generate_dataset
from evad.evaluation.ava_eval import average_precision, evaluate
from evad.evaluation.cli import main
from evad.evaluation.detect import dataset_rows
from evad.models import get_preset

BOX = (0.0, 0.0, 0.5, 0.5)
FAR = (0.6, 0.6, 0.9, 0.9)


def gt(video, ts, box, action):
    return (video, ts, box, action, 1.0)


def det(video, ts, box, action, score):
    return (video, ts, box, action, score)


def test_voc_ap_hand_case() -> None:
    # TP, FP, TP of 2 GT: P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1 -> envelope 1, 2/3, 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2) == \
        pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))
    assert average_precision(np.array([]), np.array([], bool), 3) == 0.0


def test_two_frames_one_miss() -> None:
    g = [gt("v", 1, BOX, 1), gt("v", 2, BOX, 1)]
    d = [det("v", 1, BOX, 1, 0.9), det("v", 1, FAR, 1, 0.8), det("v", 2, BOX, 1, 0.7)]
    assert evaluate(g, d)["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_tied_scores_follow_the_ava_ranking() -> None:
    g = [gt("v", 1, BOX, 1)]
    d = [det("v", 1, BOX, 1, 0.5), det("v", 2, BOX, 1, 0.5)]  # TP, then FP (no GT at t=2)
    # The AVA code ranks by np.argsort(scores)[::-1]; numpy picks the order of equal scores.
    # FP first: P = 0, 1/2 at R = 0, 1 -> AP 1/2; TP first: P = 1 at R = 1 -> AP 1.
    first = int(np.argsort(np.array([0.5, 0.5]))[::-1][0])
    assert evaluate(g, d)["mAP"] == pytest.approx(1.0 if first == 0 else 0.5)
    # a tie between two true positives cannot change the AP
    g2 = [gt("v", 1, BOX, 1), gt("v", 2, BOX, 1)]
    assert evaluate(g2, d)["mAP"] == pytest.approx(1.0)


def test_invalid_boxes_are_dropped() -> None:
    g = [gt("v", 1, BOX, 1)]
    d = [det("v", 1, (0.5, 0.0, 0.4, 0.5), 1, 0.9), det("v", 1, BOX, 1, 0.8)]  # x1 > x2 first
    assert evaluate(g, d)["mAP"] == 1.0


def test_duplicates_and_input_order() -> None:
    g = [gt("v", 1, BOX, 1)]
    # the first given detection takes the GT even with a lower score; the duplicate is a FP
    d = [det("v", 1, BOX, 1, 0.3), det("v", 1, BOX, 1, 0.9)]
    assert evaluate(g, d)["per_class"][1]["ap"] == pytest.approx(0.5)
    d = [det("v", 1, BOX, 1, 0.9), det("v", 1, BOX, 1, 0.3)]
    assert evaluate(g, d)["per_class"][1]["ap"] == pytest.approx(1.0)


def test_writers_list_each_keyframe_by_score(tmp_path) -> None:
    """detect() lists a keyframe's rows by descending score, so a duplicate proposal that the
    model returns first cannot take the match from the better one (see test above)."""
    assert by_score([("a", 0.2), ("b", 0.9), ("c", 0.2), ("d", 0.5)], lambda r: r[1]) == [
        ("b", 0.9), ("d", 0.5), ("a", 0.2), ("c", 0.2)]  # ties keep their order
    preset = get_preset("demo")
    data = generate_dataset(tmp_path / "d", 1, seed=3, duration=2.0, progress=False)
    clips = ClipDataset(data, preset)
    truth = clips[0][2].numpy()[:1]  # the first person's box, resized pixels

    def backend(clip, size):  # proposal 0: the person with a low action score; 1: same box
        b = len(clip)
        boxes = np.repeat(np.concatenate([truth, truth, [[0, 0, 4, 4]]])[None], b, 0)
        probs = np.zeros((b, 3, 8), np.float32)
        probs[:, :, 0] = [0.3, 0.9, 0.6]
        return {"boxes": boxes, "person_scores": np.full((b, 3), 0.9, np.float32),
                "action_probs": probs}

    backend.spec = clips.spec  # type: ignore[attr-defined]  # a runner's model description
    rows = dataset_rows(backend, clips)  # type: ignore[arg-type]
    scores = [r[4] for r in rows]
    assert scores[:3] == pytest.approx([0.9, 0.6, 0.3]) and scores[3:] == [0.0] * 21
    walk = [r for r in rows if r[3] == 1]
    # one person: the truth box as detect() wrote it
    one_person = [gt(clips.keyframes[0].video, 1.0, walk[0][2], 1)]
    assert evaluate(one_person, walk)["per_class"][1]["ap"] == pytest.approx(1.0)
    # as the model returned them (0.3 first) the match would go to the duplicate
    as_returned = sorted(walk, key=lambda r: r[4] > 0.35)  # 0.3, 0.9, 0.6, ...
    # 0.9 FP, 0.6 FP, 0.3 TP: precision 1/3 at recall 1
    assert evaluate(one_person, as_returned)["per_class"][1]["ap"] == pytest.approx(1 / 3)


def test_iou_exactly_at_threshold_is_a_match() -> None:
    g = [gt("v", 1, (0.0, 0.0, 1.0, 1.0), 1)]
    half = (0.0, 0.0, 1.0, 0.5)  # IoU = 0.5 exactly
    assert evaluate(g, [det("v", 1, half, 1, 0.9)])["mAP"] == 1.0
    just_under = (0.0, 0.0, 1.0, 0.4999)
    assert evaluate(g, [det("v", 1, just_under, 1, 0.9)])["mAP"] == 0.0


def test_classes_without_gt_and_exclusions() -> None:
    g = [gt("v", 1, BOX, 1), gt("v", 5, BOX, 2)]
    d = [det("v", 1, BOX, 1, 0.9), det("v", 1, BOX, 3, 0.9), det("v", 5, FAR, 2, 0.9)]
    res = evaluate(g, d, class_ids=[1, 2, 3])
    assert res["per_class"][3]["ap"] is None  # no GT: no AP, not in the mean
    assert res["per_class"][2]["ap"] == 0.0
    assert res["mAP"] == pytest.approx(0.5)
    res = evaluate(g, d, class_ids=[1, 2, 3], excluded={("v", 5.0)})
    assert res["per_class"][2]["ap"] is None and res["mAP"] == 1.0


def test_cli(tmp_path, capsys) -> None:
    (tmp_path / "gt.csv").write_text("v,1,0,0,0.5,0.5,1,0\nv,2,0,0,0.5,0.5,1,0\n")
    (tmp_path / "det.csv").write_text("v,1,0,0,0.5,0.5,1,0.9\nv,1,0.6,0.6,0.9,0.9,1,0.8\n"
                                      "v,2,0,0,0.5,0.5,1,0.7\n")
    (tmp_path / "map.pbtxt").write_text('item {\n  name: "walk"\n  id: 1\n}\n'
                                        'item {\n  name: "run"\n  id: 2\n}\n')
    code = main(["--gt", str(tmp_path / "gt.csv"), "--det", str(tmp_path / "det.csv"),
                 "--labelmap", str(tmp_path / "map.pbtxt"), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0 and "walk" in out and "n/a" in out and "frame mAP@0.5: 0.8333" in out
    assert json.loads((tmp_path / "r.json").read_text())["mAP"] == pytest.approx(5 / 6)
    assert main(["--gt", str(tmp_path / "missing.csv"), "--det", str(tmp_path / "det.csv")]) == 2
