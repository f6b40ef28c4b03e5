"""One clip path (issue "one path per concept", bar 1): ``evad-eval --data`` and ``evad-trt-run``
make the same clips for the same video and model, so their AVA rows are the same, row for row,
whatever the video's shape; the torch and ONNX backends see the same clip tensor when their
inputs agree, and a run says in one line when they cannot."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from evad.cli.export import main as export_main
from evad.datasets.clips import ClipDataset
from evad.datasets.synthetic import generate_dataset
from evad.evaluation.cli import main as eval_main
from evad.export.demo import demo_onnx as export_demo_onnx
from evad.models.demo import demo_checkpoint
from evad.preprocess import Preprocessor
from evad.runner import OUTPUT_ACTION_PROBS, OUTPUT_BOXES, OUTPUT_PERSON_SCORES
from evad.runtime.backends import open_runner
from evad.runtime.cli import main as trt_run_main
from evad.video import iter_frames, open_video

#: (h, w) of the synthetic sets: 4:3 and portrait (the demo export is 128 x 256, landscape)
SHAPES = {"4:3": (480, 640), "portrait": (640, 360)}


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    """The demo model as ``evad-trt-run`` exports it on first use (128 x 256), in a fresh
    cache."""
    old = os.environ.get("EVAD_CACHE")
    os.environ["EVAD_CACHE"] = str(tmp_path_factory.mktemp("evad-cache"))
    try:
        return export_demo_onnx()
    finally:
        if old is None:
            os.environ.pop("EVAD_CACHE")
        else:
            os.environ["EVAD_CACHE"] = old


def _rows_by_keyframe(path: Path) -> dict[tuple[str, float], list[str]]:
    """A detections CSV's lines, grouped by (video, keyframe time), in file order."""
    out: dict[tuple[str, float], list[str]] = {}
    for line in path.read_text().splitlines():
        video, t = line.split(",")[:2]
        out.setdefault((video, float(t)), []).append(line)
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
def test_eval_data_rows_equal_trt_run_rows(tmp_path, capfd, demo_onnx, shape):
    h, w = SHAPES[shape]
    data = generate_dataset(tmp_path / "d", 2, seed=11, width=w, height=h, duration=5.0,
                            progress=False)
    det = tmp_path / "det.csv"
    assert eval_main(["--data", str(data), "--onnx", str(demo_onnx), "--write-det",
                      str(det)]) == 0, capfd.readouterr().err
    got = _rows_by_keyframe(det)
    with open(data / "annotations.csv", newline="") as f:
        annotated = {(r[0], float(r[1])) for r in csv.reader(f)}
    assert set(got) == annotated and len(annotated) >= 6
    want: dict[tuple[str, float], list[str]] = {}
    for video in sorted((data / "videos").glob("*.mp4")):
        out = tmp_path / video.stem
        # evad-eval follows the released evaluation: every box when none passes the threshold
        assert trt_run_main([str(video), "--onnx", str(demo_onnx), "--out", str(out),
                             "--keep-all-if-none", "--quiet"]) == 0, capfd.readouterr().err
        want.update({k: v for k, v in _rows_by_keyframe(out / "detections.csv").items()
                     if k in annotated})
    assert got == want  # the same rows, byte for byte, in the same order
    scores = [float(line.split(",")[-1]) for rows in got.values() for line in rows]
    assert max(scores) > 0.5  # the model found people and actions, not an empty agreement


def test_the_dataset_clip_is_the_runtime_clip(tmp_path, demo_onnx):
    """The clip a dataset item holds is, value for value, the one the runtime assembles from the
    decoded frames: the keyframe's nearest frame by container time, the clamp, the resize to
    the export's input."""
    data = generate_dataset(tmp_path / "d", 1, seed=12, width=640, height=480, duration=3.0,
                            progress=False)
    with open_runner("ort", onnx=demo_onnx)[0] as runner:
        spec = runner.spec
    ds = ClipDataset(data, spec)
    info = open_video(next((data / "videos").glob("*.mp4")))
    frames = [f for _, _, f in iter_frames(info)]
    pre = Preprocessor.for_model(spec, (info.height, info.width))
    assert pre.padded == spec.input_size == (128, 256) and pre.resized == (128, 171)
    for i, kf in enumerate(ds.keyframes):
        c = round(kf.timestamp * info.fps)
        idx = np.clip(c + spec.frame_stride * (np.arange(spec.num_frames)
                                               - spec.num_frames // 2), 0, len(frames) - 1)
        want = pre.clip([pre.resize(frames[j]) for j in idx])
        assert np.array_equal(ds.clip(i)[0], want)


def test_torch_and_onnx_see_the_same_clip_on_a_4_3_video(tmp_path, capfd, demo_onnx):
    """A 640 x 480 video and the demo checkpoint: exported at the torch reference's padding for
    it (128 x 192), ONNX Runtime gets the same clip tensor as torch and the same detections
    within the fp32 rules; the 128 x 256 demo export cannot, and the run says why in one
    line."""
    exports = tmp_path / "exports"
    assert export_main(["--ckpt", str(demo_checkpoint()), "--height", "128", "--width", "192",
                        "--onnx-only", "--out", str(exports)]) == 0, capfd.readouterr().err
    onnx_192 = next(exports.glob("*.onnx"))
    data = generate_dataset(tmp_path / "d", 1, seed=13, width=640, height=480, duration=5.0,
                            progress=False)
    video = next((data / "videos").glob("*.mp4"))
    info = open_video(video)
    decoded = [f for _, _, f in iter_frames(info)]
    with open_runner("torch", ckpt=demo_checkpoint())[0] as ref, \
            open_runner("ort", onnx=onnx_192)[0] as ort:
        pre_ref = Preprocessor.for_model(ref.spec, (info.height, info.width))
        pre_ort = Preprocessor.for_model(ort.spec, (info.height, info.width))
        assert pre_ref == pre_ort and pre_ort.padded == (128, 192)
        assert pre_ort.note(ort.spec.name) is None
        spec = ref.spec  # the demo's clip: 8 frames, every 2nd
        frames = decoded[20:20 + spec.num_frames * spec.frame_stride:spec.frame_stride]
        clip = pre_ref.clip([pre_ref.resize(f) for f in frames])[None]
        assert np.array_equal(clip, pre_ort.clip([pre_ort.resize(f) for f in frames])[None])
        size = np.array([pre_ref.resized], np.int64)
        want, got = ref(clip, size), ort(clip, size)
    np.testing.assert_allclose(got[OUTPUT_BOXES], want[OUTPUT_BOXES], rtol=0, atol=1e-2)
    for name in (OUTPUT_PERSON_SCORES, OUTPUT_ACTION_PROBS):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-4)
    assert float(want[OUTPUT_PERSON_SCORES].max()) > 0.7  # people on the keyframe
    # the demo's 128 x 256 export pads the same frames to 256: a run says so in one line
    assert trt_run_main([str(video), "--onnx", str(demo_onnx), "--out",
                         str(tmp_path / "run")]) == 0
    notes = [line for line in capfd.readouterr().out.splitlines() if "note:" in line]
    assert len(notes) == 1 and "is zero padded to it" in notes[0], notes
    assert "pads to 192x128" in notes[0] and "--height 128 --width 192" in notes[0]
