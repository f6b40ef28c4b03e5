"""evad-tokens: kept-index maps onto the token grid, the motion figure, the strip, the command."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from evad.cli.tokens import main as tokens_main
from evad.metadata import read_metadata
from evad.runtime.tokens import kept_masks, motion_ratio, token_motion, token_strip


def test_kept_indices_land_on_their_tokens() -> None:
    # grid t=4, h=2, w=3: 6 tokens per slice, keyframe slice 2 left out of the numbering
    masks = kept_masks({3: np.array([0, 5, 6, 17])}, (4, 2, 3))
    m = masks[3]
    assert m[2].all()  # every keyframe token is kept
    expect = np.zeros((4, 2, 3), bool)
    expect[2] = True
    expect[0, 0, 0] = expect[0, 1, 2] = expect[1, 0, 0] = expect[3, 1, 2] = True
    assert np.array_equal(m, expect)
    with pytest.raises(ValueError, match="outside the 18 non-keyframe tokens"):
        kept_masks({3: np.array([18])}, (4, 2, 3))


def test_motion_ratio_and_padding() -> None:
    clip = np.zeros((3, 8, 32, 48), np.float32)  # T 8, tubelet 2 -> t 4; patch 16 -> 2 x 3
    clip[:, 0, :16, :16] = 1.0  # slice 0, token (0, 0) differs from the keyframe slice
    motion = token_motion(clip, (4, 2, 3), 16, 2, image_size=(32, 32))
    assert motion[0, 0, 0] == pytest.approx(1.0) and np.nanmax(motion[1:]) == 0
    assert np.isnan(motion[:, :, 2]).all()  # column 2 starts at x = 32: padding
    mask = np.zeros((4, 2, 3), bool)
    mask[2] = True
    mask[0, 0, 0] = mask[1, 1, 1] = True
    # kept: 1.0 and 0.0 -> 0.5; dropped: all 0 (guarded) -> a huge ratio
    assert motion_ratio(motion, mask) > 1e6
    mask[0, 0, 0] = False
    assert motion_ratio(motion, mask) == 0.0


def test_strip_darkens_dropped_tokens() -> None:
    clip = np.full((3, 8, 32, 48), 0.5, np.float32)  # mean 0, std 1: pixel value 0.5 -> 128
    mask = np.zeros((4, 2, 3), bool)
    mask[2] = True
    mask[0, 0, 0] = True
    img = token_strip(clip, {3: mask}, (0, 0, 0), (1, 1, 1), 16, 2, cell_width=48)
    # rows: input, block 3; cells 48 x 32 after a 120 px label column and 4 px gaps
    cell0 = img[4 + 36:4 + 36 + 32, 124:124 + 48]
    assert abs(int(cell0[8, 8, 0]) - 128) <= 1  # the kept token
    assert abs(int(cell0[8, 40, 0]) - 32) <= 1  # a dropped one, a quarter as bright


def test_evad_tokens_command(tiny_onnx, sample_mp4, tmp_path, capsys) -> None:
    out = tmp_path / "tok"
    code = tokens_main([str(sample_mp4), "--onnx", str(tiny_onnx), "--out", str(out),
                        "--time", "1", "--json", str(tmp_path / "t.json")])
    assert code == 0
    report = json.loads((tmp_path / "t.json").read_text())
    (kf,) = report["keyframes"]
    t, h, w = kf["grid"]
    assert (t, h, w) == (8, 6, 12)  # tiny: 16 frames / tubelet 2, 96 x 192 / patch 16
    tokens = read_metadata(tiny_onnx)["tokens"]  # all, then after each pruning block
    s = h * w
    shares = [b["kept_share"] for b in kf["blocks"]]
    assert shares == pytest.approx([(n - s) / ((t - 1) * s) for n in tokens[1:]], abs=1e-4)
    img = cv2.imread(kf["png"])
    assert img is not None and img.shape[0] > 4 * 32  # a row per pruning block and the input
    assert "block 3 keeps" in capsys.readouterr().out
