"""Calibrated INT8 (``evad.export.int8``, ``evad-export --int8 --calib DATA``): the Q/DQ graph
around the matrix products with the pruning importance left in float, ONNX Runtime running it
against the torch fp32 reference on held-out clips, its metadata, the refusals of bad
calibration data before torch loads, and an interrupted calibration leaving nothing.

Measured (tiny model, calmed seed-0 weights, 96 x 192, 16 calibration clips of 4 synthetic 4 s
videos, 8 held-out clips of 2 others; NNCF 3.4 int8 in ORT 1.32 against torch fp32, the
localization float; 2026-12-07): kept-token Jaccard per pruning block min 0.994 / 0.972 / 0.939
(blocks 3 / 6 / 9), mean 0.998 / 0.980 / 0.961, action probability max error 0.070, person score
0.009, the same before and after SmoothQuant was undone on the float products (ORT's
quantize_static before it: min 0.988 / 0.972 / 0.939, 0.045; 0.056 person with the localization
quantized). The bounds below leave room for the torch-vs-ORT fp32 difference, not for a broken
quantizer (an unquantized graph scores 1.0 and ~1e-6; a graph quantized with garbage ranges
scores far below them).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

# NNCF's log handler keeps the stdout of its import: imported here, not under a test's capfd
# (which closes its stdout after the test)
import nncf  # noqa: F401
import numpy as np
import onnx
import pytest

from evad.datasets.synthetic import generate_dataset
from evad.errors import BackendError, ConfigError, EvadError
from evad.export import int8
from evad.export.exporter import write_int8
from evad.export.onnx_export import Staging
from evad.export.ort_runner import OrtRunner
from evad.metadata import read_metadata
from evad.models.runner import TorchRunner
from evad.runner import ModelSpec, kept_blocks, kept_idx_name
from evad.runtime.calibration import calibration_clips

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Synthetic AVA-format sets (320 x 180, 10 fps, 4 s: four keyframes a video): one to
    calibrate on, one held out."""
    root = tmp_path_factory.mktemp("int8data")
    kw = {"width": 320, "height": 180, "fps": 10.0, "duration": 4.0, "progress": False}
    return {"calib": generate_dataset(root / "calib", 4, seed=100, **kw),
            "held": generate_dataset(root / "held", 2, seed=200, **kw)}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_onnx, data) -> tuple[Path, dict]:
    """The tiny export quantized on 16 clips of the calibration videos (~5 s)."""
    plan = int8.plan_calibration(data["calib"] / "videos", 16)
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    return out, write_int8(tiny_onnx, out, int8.Calibration(plan, calibration_clips))


def test_qdq_around_matmuls_and_none_on_the_importance(quantized, tiny_onnx) -> None:
    path, meta = quantized
    m = onnx.load(str(path))
    producer = {o: n for n in m.graph.node for o in n.output}
    kept = meta["quantization"]["float_nodes"]
    # the patch embedding (it takes the clip), the importance's inputs (the qkv projection of
    # each of the 3 pruning blocks) and the actor localization (FPN: 8 convolutions; 2 Sparse
    # R-CNN stages of 13 products each: 3 MatMuls, 10 Gemms)
    why = Counter(v.split(" of ")[0] if v.startswith("feeds") else v for v in kept.values())
    assert why == {"the patch embedding: takes the clip itself": 1,
                   "feeds the pruning importance": 3,
                   "the actor localization: its person score meets a threshold": 34}, why
    assert all("KeyframeTopKPrune" not in k for k in kept)
    assert kept == int8.float_nodes(onnx.load(str(tiny_onnx)))
    quantized_ops = Counter()
    for n in m.graph.node:
        if n.op_type not in int8.QUANTIZED_OPS:
            continue
        fed = [producer.get(i) for i in n.input[:2]]
        dq = [p is not None and p.op_type == "DequantizeLinear" for p in fed]
        if n.name in kept:
            assert not any(dq), f"{n.name} ({kept[n.name]}) must stay float"
        else:
            assert dq[0] and dq[1], f"{n.op_type} {n.name} is not fed by DequantizeLinear"
            quantized_ops[n.op_type] += 1
    # the encoder's and the action decoder's linear layers; the localization's Gemm and Conv
    # nodes all stay float
    assert quantized_ops == {"MatMul": 56}
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] >= sum(quantized_ops.values())
    # the evad ops stay custom nodes with their local functions, fed by float tensors
    assert {f.name for f in m.functions} == {"RoIAlign3D", "KeyframeTopKPrune"}
    for n in m.graph.node:
        if n.domain == "evad":
            assert all(producer[i].op_type != "DequantizeLinear" for i in n.input
                       if i in producer)
    # symmetric int8: every zero point is 0
    init = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = onnx.numpy_helper.to_array(init[n.input[2]])
            assert zp.dtype == np.int8 and not zp.any()


def test_metadata(quantized, data, tiny_onnx) -> None:
    path, meta = quantized
    assert read_metadata(path) == meta
    base = read_metadata(tiny_onnx)
    assert {k: v for k, v in meta.items() if k != "quantization"} == base | {"precision": "int8"}
    q = meta["quantization"]
    assert meta["precision"] == "int8"
    assert q["method"].startswith("nncf.quantize (NNCF 3.4")
    # the tiny decoder's ReLU output feeds a product: NNCF's uint8 pair, re-expressed as int8
    assert "1 non-negative tensor(s) NNCF made uint8 re-expressed as int8" in q["activations"]
    assert "SmoothQuant alpha 0.95" in q["method"] and "QDQ" in q["method"]
    assert q["calibration_clips"] == 16 and q["calibration_data"] == "folder of videos"
    again = int8.plan_calibration(data["calib"] / "videos", 16)
    assert q["calibration_sha256"] == again.sha256 and len(again.sha256) == 64
    # other data, or other keyframes of it, hash otherwise
    assert int8.plan_calibration(data["calib"] / "videos", 8).sha256 != again.sha256
    assert int8.plan_calibration(data["held"] / "videos", 8).sha256 != again.sha256
    assert q["quantized_ops"] == ["MatMul", "Gemm", "Conv"]


def test_ort_runs_it_close_to_torch_fp32(quantized, data, tiny_model) -> None:
    """ONNX Runtime runs the Q/DQ graph; against torch fp32 on 8 held-out clips: per-block
    kept-token Jaccard and action-probability error within the measured bounds."""
    path, _ = quantized
    reference = TorchRunner(tiny_model, "tiny", "cpu")
    with OrtRunner(path, cuda=False, precision="int8") as runner:
        assert runner.precision == "int8"
        spec = runner.spec
        held = list(calibration_clips(int8.plan_calibration(data["held"] / "videos", 8), spec))
        assert len(held) == 8
        jaccard: dict[int, list[float]] = {}
        act = person = 0.0
        for clip, size in held:
            got = runner(clip, size)
            ref = reference(clip, size)
            for b in kept_blocks(ref):
                a, g = set(ref[kept_idx_name(b)][0].tolist()), set(got[kept_idx_name(b)][0]
                                                                   .tolist())
                jaccard.setdefault(b, []).append(len(a & g) / len(a | g))
            act = max(act, float(np.abs(ref["action_probs"] - got["action_probs"]).max()))
            person = max(person, float(np.abs(ref["person_scores"] - got["person_scores"])
                                       .max()))
    worst = {b: min(v) for b, v in jaccard.items()}
    print(f"int8 vs torch fp32, 8 held-out clips: Jaccard min {worst}, mean "
          f"{ {b: round(float(np.mean(v)), 3) for b, v in jaccard.items()} }, action max err "
          f"{act:.4f}, person max err {person:.4f}")
    assert sorted(worst) == [3, 6, 9]
    assert all(j >= 0.9 for j in worst.values()), worst
    assert float(np.mean([np.mean(v) for v in jaccard.values()])) >= 0.95
    assert act <= 0.08 and person <= 0.03


def test_float_nodes_needs_the_module_scopes(tiny_onnx) -> None:
    """The localization is found by the module scopes torch's exporter writes; a graph without
    them cannot keep it float and is refused rather than quantized whole."""
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    assert any(v.startswith("the actor localization") for v in int8.float_nodes(model).values())
    for n in model.graph.node:
        del n.metadata_props[:]
    with pytest.raises(ConfigError, match="no module scopes.*evad-export"):
        int8.float_nodes(model)


def test_ort_runner_precision_follows_the_file(tiny_onnx) -> None:
    with OrtRunner(tiny_onnx, cuda=False) as r:
        assert r.precision == "fp32"
    with pytest.raises(BackendError, match="fp32 export.*evad-export --int8"):
        OrtRunner(tiny_onnx, cuda=False, precision="int8")


def test_clip_path_matches_the_dataset_clips(data, tiny_onnx) -> None:
    """An AVA-format folder calibrates on its annotated keyframes, and the runtime's clips for
    them are the ones ``ClipDataset`` (the training / evaluation clip path) makes."""
    from evad.datasets.clips import ClipDataset

    spec = ModelSpec.from_metadata(read_metadata(tiny_onnx), "tiny")
    plan = int8.plan_calibration(data["calib"], 8)
    assert plan.kind == "AVA-format dataset" and plan.clips == 8
    ours = list(calibration_clips(plan, spec))
    ds = ClipDataset(data["calib"], spec)
    index = {(kf.video, round(kf.timestamp)): i for i, kf in enumerate(ds.keyframes)}
    picked = [(p.stem, k) for p, ks in plan.picks for k in ks]
    for (clip, size), key in zip(ours, picked, strict=True):
        theirs, _ = ds.clip(index[key])
        np.testing.assert_array_equal(clip[0], theirs)
        assert tuple(size[0]) == ds.pre[key[0]].resized


def _refused(args: list[str], cwd: Path, blocked: tuple[str, ...] = ("torch",)) -> str:
    """evad-export's one-line refusal (exit 2) in a process where torch (and ``blocked``)
    cannot load."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "from evad.cli.export import main\nraise SystemExit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "--preset", "tiny", "--onnx-only",
                          "--out", str(cwd / "out"), *args], cwd=cwd, capture_output=True,
                         text=True, timeout=60, check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr)
    assert not (cwd / "out").exists() or not any((cwd / "out").iterdir())
    return lines[0]


def test_bad_calibration_data_is_refused_before_torch(tmp_path, data) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.mp4").write_text("not a video\n")
    (notes / "b.txt").write_text("hello\n")
    short = tmp_path / "short"
    short.mkdir()
    # one 4 s video: 4 clips, fewer than MIN_CLIPS
    src = sorted((data["calib"] / "videos").iterdir())[0]
    (short / src.name).write_bytes(src.read_bytes())
    assert "has no videos (it is empty)" in _refused(["--int8", "--calib", str(empty)],
                                                     tmp_path)
    assert "none of its 2 files is a video" in _refused(["--int8", "--calib", str(notes)],
                                                        tmp_path)
    assert "gives 4 clip(s)" in _refused(["--int8", "--calib", str(short)], tmp_path)
    assert "does not exist" in _refused(["--int8", "--calib", str(tmp_path / "nope")],
                                        tmp_path)
    assert "--calib-clips" in _refused(["--int8", "--calib", str(data["calib"]),
                                        "--calib-clips", "1"], tmp_path)
    assert "go together" in _refused(["--int8"], tmp_path)
    # good data, but no quantizer: refused before torch, naming the extra
    assert "nncf is not installed (the INT8 export's quantizer): pip install " \
        "'evad-deploy[int8]'" in _refused(["--int8", "--calib", str(data["calib"])], tmp_path,
                                          ("torch", "nncf"))
    with pytest.raises(ConfigError, match="at least 8"):
        int8.plan_calibration(data["calib"], 1)
    with pytest.raises(EvadError, match="gives 4 clip"):
        int8.plan_calibration(short)


def test_interrupted_calibration_leaves_nothing(tmp_path, tiny_onnx, data) -> None:
    """A KeyboardInterrupt in the middle of calibration (after 3 clips) propagates and the
    staging folder, with whatever ONNX Runtime had written, is gone."""
    plan = int8.plan_calibration(data["calib"] / "videos", 8)
    def interrupted(plan, spec):
        for i, clip in enumerate(calibration_clips(plan, spec)):
            if i == 3:
                raise KeyboardInterrupt
            yield clip

    out = tmp_path / "tiny.onnx"
    with pytest.raises(KeyboardInterrupt), Staging(out) as staging:
        try:
            int8.quantize(tiny_onnx, staging.folder / "tiny.int8.onnx",
                          int8.Calibration(plan, interrupted))
        finally:  # the working copy of the weights went with the interrupt, before staging's
            left = list(staging.folder.iterdir())
    assert left == [] and list(tmp_path.iterdir()) == []
    assert json.dumps(plan.clips) == "8"


def test_quantize_keeps_stdout_and_nncf_as_they_were(tmp_path, tiny_onnx, data, capfd,
                                                     monkeypatch) -> None:
    """Without progress nothing reaches stdout (NNCF draws its bars there) or stderr; NNCF's
    telemetry gets no call (nothing leaves the machine); NNCF's output insertion and telemetry
    are its own again afterwards; a clip source that runs short in a pass is refused rather than
    calibrated on fewer clips than the metadata would record."""
    from nncf.onnx.graph.model_transformer import ONNXModelTransformer
    from nncf.telemetry import decorator

    class Recorder:
        calls: list[str] = []

        def __getattr__(self, name: str):
            return lambda *a, **k: self.calls.append(name)

    recorder = Recorder()
    monkeypatch.setattr(decorator, "telemetry", recorder)
    before = ONNXModelTransformer.__dict__["_insert_outputs"]
    plan = int8.plan_calibration(data["calib"] / "videos", 8)
    record = int8.quantize(tiny_onnx, tmp_path / "q.int8.onnx",
                           int8.Calibration(plan, calibration_clips))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert ONNXModelTransformer.__dict__["_insert_outputs"] is before
    assert decorator.telemetry is recorder and recorder.calls == []
    assert record["calibration_clips"] == 8

    def short(plan, spec):
        for i, clip in enumerate(calibration_clips(plan, spec)):
            if i < 5:
                yield clip

    with pytest.raises(EvadError, match=r"calibration read \[5, .*of the 8 clips"):
        int8.quantize(tiny_onnx, tmp_path / "short.int8.onnx", int8.Calibration(plan, short))
    assert ONNXModelTransformer.__dict__["_insert_outputs"] is before
    # the working copy of the weights went after the success and after the failure
    assert [p.name for p in tmp_path.iterdir()] == ["q.int8.onnx"]
    # NNCF warns of the short data set ("Dataset contains only 5 samples"): not on stdout
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_weights_on_disk_give_the_same_file(quantized, tiny_onnx, data, tmp_path,
                                            monkeypatch) -> None:
    """NNCF reads the fp32 weights from a working copy on disk, beside the result, to hold less
    memory: it gets a graph whose weights are in that file, and the INT8 file is byte for byte
    the one it writes from the whole model in memory (each tensor as the export wrote it); the
    copy is gone after."""
    from onnx.external_data_helper import uses_external_data

    path, _ = quantized
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    on_disk, seen = int8._weights_on_disk, []

    @contextlib.contextmanager
    def watched(src: Path, workdir: Path):
        with on_disk(src, workdir) as (model, weights_dir):
            files = [f for f in Path(weights_dir).iterdir() if f.suffix == ".data"]
            seen.append((sum(uses_external_data(t) for t in model.graph.initializer),
                         model.ByteSize(), sum(f.stat().st_size for f in files)))
            yield model, weights_dir

    @contextlib.contextmanager
    def in_memory(src: Path, workdir: Path):
        yield onnx.load(str(src)), None

    plan = int8.plan_calibration(data["calib"] / "videos", 16)
    made = {}
    for name, how in (("disk", watched), ("memory", in_memory)):
        monkeypatch.setattr(int8, "_weights_on_disk", how)
        made[name] = tmp_path / name / path.name
        made[name].parent.mkdir()
        write_int8(tiny_onnx, made[name], int8.Calibration(plan, calibration_clips))
        assert [p.name for p in made[name].parent.iterdir()] == [path.name]
    [(external, graph_bytes, file_bytes)] = seen
    size = tiny_onnx.stat().st_size
    assert external > 100 and graph_bytes < 0.2 * size and 0.8 * size < file_bytes < size
    assert made["disk"].read_bytes() == made["memory"].read_bytes() == path.read_bytes()


def test_no_room_for_the_weights_copy_is_refused_in_one_line(tmp_path, tiny_onnx, data,
                                                             monkeypatch) -> None:
    """The working copy of the weights cannot be written (no such folder, too little free
    space, a disk that fills while it is written): one line naming the file, its size and the
    folder, before any clip is read, and nothing is left behind."""
    plan = int8.plan_calibration(data["calib"] / "videos", 8)
    read: list[int] = []

    def counted(plan, spec):
        for clip in calibration_clips(plan, spec):
            read.append(1)
            yield clip

    calibration = int8.Calibration(plan, counted)
    copy = r"^the calibration's working copy of tiny\.onnx's weights \((\d+) MB\) "
    with pytest.raises(EvadError, match=copy + r"could not be written into .*missing \(.*No "
                       r"such.*\): check the folder and its free space$"):
        int8.quantized_model(tiny_onnx, calibration, workdir=tmp_path / "missing")

    real_usage = int8.shutil.disk_usage
    monkeypatch.setattr(int8.shutil, "disk_usage",
                        lambda p: real_usage(p)._replace(free=tiny_onnx.stat().st_size - 1))
    with pytest.raises(EvadError, match=copy + r"does not fit in .*: \d+ MB free there; free "):
        int8.quantized_model(tiny_onnx, calibration, workdir=tmp_path)
    monkeypatch.setattr(int8.shutil, "disk_usage", real_usage)

    def fills(model, f, *_, **__):  # half the bytes, then the disk is full
        Path(f).write_bytes(model.SerializeToString()[: model.ByteSize() // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", fills)
    with pytest.raises(EvadError, match=copy + r"could not be written into .* \(.*no space left "
                       r"on the device\): check"):
        int8.quantized_model(tiny_onnx, calibration, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == [] and read == []


def test_weights_that_cannot_be_read_back_are_refused_in_one_line(tmp_path) -> None:
    """The working copy's weights file is gone when the weights are read back: one line that
    says which model's weights, not onnx's own error."""
    from evad.export.external_data import save_with_weights_file

    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        initializer=[w])
    data = save_with_weights_file(onnx.helper.make_model(graph), tmp_path / "m.onnx",
                                  min_bytes=0)
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    data.unlink()
    with pytest.raises(EvadError, match=r"^cannot read NNCF's result's weights back from the "
                       r"calibration's working copy: .*m\.onnx\.data"):
        int8._load_weights(model, str(tmp_path), "NNCF's result")


def test_uint8_pairs_become_int8_of_the_same_range(tmp_path) -> None:
    """A uint8 activation pair with zero point 0 (what NNCF writes for a ReLU's output) is
    re-expressed as int8 with scale x 255/127: the same top of range, TensorRT's type. ORT
    runs both: the int8 pair rounds x in [0, 255 s] to a step of 255 s / 127."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    scale = np.float32(0.02)

    def graph(zp: np.ndarray) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="Q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="DQ")],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
            [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(zp, "z")],
            value_info=[helper.make_tensor_value_info("q", TensorProto.UINT8, [64]),
                        helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    model = graph(np.array(0, np.uint8))
    assert int8._signed_activations(model) == 1
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert init["z"].dtype == np.int8 and init["z"] == 0
    assert init["s"] == np.float32(np.float64(scale) * 255 / 127)
    assert {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info} == \
        {"q": TensorProto.INT8, "z": TensorProto.INT8}
    onnx.checker.check_model(model, full_check=True)
    x = np.linspace(0, 255 * scale, 64, dtype=np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]
                             ).run(None, {"x": x})[0]
    step = float(init["s"])
    np.testing.assert_allclose(y, np.clip(np.round(x / step), -128, 127) * step, rtol=0,
                               atol=1e-6)
    assert float(np.abs(y - x).max()) <= step / 2 + 1e-6
    # not a pair this export knows how to re-express: refused
    with pytest.raises(EvadError, match="uint8 quantizer.*pin nncf 3.4"):
        int8._signed_activations(graph(np.array(3, np.uint8)))


def test_float_products_read_the_fp32_exports_inputs(quantized, tiny_onnx) -> None:
    """NNCF 3.4's SmoothQuant scales every MatMul's input (it takes no ignored scope); on the
    nodes kept float that is undone: each reads the tensors the fp32 export feeds it, weights
    byte for byte, and no SmoothQuant ``Mul`` is left without a quantized reader."""
    path, meta = quantized
    m, src = onnx.load(str(path)), onnx.load(str(tiny_onnx))
    kept = meta["quantization"]["float_nodes"]
    nodes, src_nodes = {n.name: n for n in m.graph.node}, {n.name: n for n in src.graph.node}
    init, src_init = ({t.name: t.SerializeToString() for t in g.graph.initializer}
                      for g in (m, src))
    for name in kept:
        assert list(nodes[name].input) == list(src_nodes[name].input), name
        assert all(init[i] == src_init[i] for i in nodes[name].input if i in src_init), name
    users: dict[str, set[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            users.setdefault(i, set()).add(n.op_type)
    smooth = [n for n in m.graph.node if n.name.endswith("/nncf_smooth_quant")]
    # one per quantized MatMul input (56); the 24 that fed only the float products went
    assert len(smooth) == 56 and all(users[n.output[0]] == {"QuantizeLinear"} for n in smooth)
    assert "its 24 Mul(s) before float products removed" in meta["quantization"]["method"]


def test_unsmoothing_keeps_a_mul_a_quantized_product_still_reads() -> None:
    """One SmoothQuant ``Mul`` feeding a float and a quantized product: the float one reads x
    and the fp32 weight again (its output equals the fp32 graph's, run in ORT), the ``Mul``
    stays for the other; a ``Mul`` that is also a graph output stays. Refused, in one line: a
    float weight shared with a node not kept float, and a float product that afterwards reads
    another tensor or a changed weight (a ``Constant``, which NNCF's weight update also
    rewrites), or is missing; passed: what NNCF changes without changing values."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wa, wb = rng.normal(size=(2, 8, 4)).astype(np.float32)
    s = rng.uniform(0.5, 2, 8).astype(np.float32)
    mul = "x_0_0/nncf_smooth_quant"

    def graph(nodes: list, weights: dict[str, np.ndarray], outputs=("a", "b")
              ) -> onnx.ModelProto:
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, [3, 8 if o == "xs" else 4])
             for o in outputs],
            [numpy_helper.from_array(v, k) for k, v in weights.items()],
            value_info=[helper.make_tensor_value_info("xs", TensorProto.FLOAT, [3, 8])]
            if any(n.name == mul for n in nodes) else [])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    source = graph([helper.make_node("MatMul", ["x", "wa"], ["a"], name="A"),
                    helper.make_node("MatMul", ["x", "wb"], ["b"], name="B")],
                   {"wa": wa, "wb": wb})

    def smoothed(outputs=("a", "b")) -> onnx.ModelProto:
        return graph([helper.make_node("Mul", ["x", "inv_s"], ["xs"], name=mul),
                      helper.make_node("MatMul", ["xs", "wa"], ["a"], name="A"),
                      helper.make_node("MatMul", ["xs", "wb"], ["b"], name="B")],
                     {"inv_s": 1 / s, "wa": wa * s[:, None], "wb": wb * s[:, None]}, outputs)

    x = rng.normal(size=(3, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]
                                    ).run(["a", "b"], {"x": x})

    a0, b0 = run(source)
    model = smoothed()
    assert int8._unsmooth_float_nodes(model, source, {"A": "kept float"}) == 0
    nodes = {n.name: n for n in model.graph.node}
    assert list(nodes["A"].input) == ["x", "wa"] and list(nodes["B"].input) == ["xs", "wb"]
    assert mul in nodes
    a, b = run(model)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_allclose(b, b0, rtol=1e-5)
    # both float: the Mul, its scale and its value_info go
    model = smoothed()
    assert int8._unsmooth_float_nodes(model, source, {"A": "", "B": ""}) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "MatMul"]
    assert {t.name for t in model.graph.initializer} == {"wa", "wb"}
    assert not model.graph.value_info
    onnx.checker.check_model(model, full_check=True)
    for got, want in zip(run(model), (a0, b0), strict=True):
        np.testing.assert_array_equal(got, want)
    # the Mul's output is a graph output too: it stays, the products read x again
    model = smoothed(("a", "b", "xs"))
    assert int8._unsmooth_float_nodes(model, source, {"A": "", "B": ""}) == 0
    onnx.checker.check_model(model, full_check=True)
    assert [list(n.input) for n in model.graph.node] == [["x", "inv_s"], ["x", "wa"],
                                                         ["x", "wb"]]
    for got, want in zip(run(model), (a0, b0), strict=True):
        np.testing.assert_array_equal(got, want)

    def refused(model: onnx.ModelProto, source: onnx.ModelProto, message: str) -> None:
        with pytest.raises(EvadError, match=f"^cannot undo NNCF 3.4.*: {message}; report it"):
            int8._unsmooth_float_nodes(model, source, {"A": ""})

    # a weight both products read, B not kept float: refused, B's weight not overwritten
    shared = smoothed()
    shared.graph.node[2].input[1] = "wa"
    refused(shared, source, "A, kept float, shares wa with B, not kept float")
    assert numpy_helper.to_array(next(t for t in shared.graph.initializer if t.name == "wa")
                                 ).tobytes() == (wa * s[:, None]).tobytes()
    # a float product reading a weight under another name than in the fp32 export
    renamed = smoothed()
    renamed.graph.node[1].input[1] = "wz"
    renamed.graph.initializer.append(numpy_helper.from_array(wa * s[:, None], "wz"))
    refused(renamed, source, "A, kept float, reads wz where the fp32 export reads wa")
    # a float product missing from NNCF's output
    missing = smoothed()
    missing.graph.node.remove(missing.graph.node[1])
    with pytest.raises(EvadError, match="A, kept float, is missing from NNCF's output"):
        int8._unsmooth_float_nodes(missing, source, {"A": ""})
    # a scaled weight that is no initializer (a Constant) is not restored: refused
    def constant_weight(value: np.ndarray, name: str = "") -> onnx.ModelProto:
        m = graph([helper.make_node("Constant", [], ["wa"], name=name,
                                    value=numpy_helper.from_array(value)),
                   helper.make_node("MatMul", ["x", "wa"], ["a"], name="A"),
                   helper.make_node("MatMul", ["x", "wb"], ["b"], name="B")], {"wb": wb})
        return m

    constant = smoothed()
    constant.graph.node.insert(0, helper.make_node(
        "Constant", [], ["wa"], value=numpy_helper.from_array(wa * s[:, None])))
    constant.graph.initializer.remove(next(t for t in constant.graph.initializer
                                           if t.name == "wa"))
    refused(constant, constant_weight(wa), "A, kept float, reads a wa that differs from the "
                                           "fp32 export's")
    # what NNCF 3.4 changes without changing values passes: the name it gives an unnamed
    # Constant, and a Cast to the type its input has, removed (its reader rewired)
    named = constant_weight(wa, "Constant_nncf_0")
    int8._check_float_nodes(named, constant_weight(wa), {"A": ""})
    with_cast = graph([helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT),
                       helper.make_node("MatMul", ["xc", "wa"], ["a"], name="A"),
                       helper.make_node("MatMul", ["x", "wb"], ["b"], name="B")],
                      {"wa": wa, "wb": wb})
    int8._check_float_nodes(source, with_cast, {"A": ""})
    with pytest.raises(EvadError, match="A, kept float, reads x where the fp32 export reads "
                                        "xc"):
        int8._check_float_nodes(source, graph([helper.make_node("Relu", ["x"], ["xc"]),
                                               *with_cast.graph.node[1:]],
                                              {"wa": wa, "wb": wb}), {"A": ""})


def test_int8_on_an_fp32_export_is_refused_in_one_line(tiny_onnx, sample_mp4, tmp_path,
                                                      capfd) -> None:
    from evad.runtime.cli import main as run_main

    rc = run_main([str(sample_mp4), "--onnx", str(tiny_onnx), "--backend", "ort",
                   "--precision", "int8", "--out", str(tmp_path / "o")])
    _, err = capfd.readouterr()
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    assert "is an fp32 export" in err and "evad-export --int8 --calib DATA" in err
    assert not (tmp_path / "o").exists()


def test_parity_judges_the_int8_export_by_int8s_bars(quantized, tiny_onnx, tiny_model, tmp_path,
                                                     capsys) -> None:
    """``evad-parity --precision int8`` runs the INT8 export on ONNX Runtime against the torch
    reference and its float64 oracle, with int8's oracle factor (2**19) and the reduced
    rules (kept-token Jaccard per pruning block reported); an fp32 export is refused."""
    from evad.cli.parity import main as parity_main
    from evad.export.parity import INT8_THRESHOLDS
    from evad.models.checkpoint import save_checkpoint

    path, _ = quantized
    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.pth")  # the weights tiny_onnx holds
    rc = parity_main(["--onnx", str(path), "--ckpt", str(ckpt), "--precision", "int8",
                      "--clips", "1"])
    out, err = capsys.readouterr()
    assert f"bar {INT8_THRESHOLDS.oracle_k:.0f} x" in out, err
    blocks = re.findall(r"block (\d+): kept \d+ non-keyframe tokens .*Jaccard min ([\d.]+)", out)
    assert [b for b, _ in blocks] == ["3", "6", "9"], out
    assert all(0.9 <= float(j) <= 1.0 for _, j in blocks), out
    assert (rc == 0) == (out.strip().splitlines()[-1] == "PASS"), out
    rc = parity_main(["--onnx", str(tiny_onnx), "--ckpt", str(ckpt), "--precision", "int8",
                      "--clips", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "is an fp32 export" in err and len(err.strip().splitlines()) == 1, err
