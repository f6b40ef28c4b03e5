"""How OpenVinoRunner compiles (``evad.export.openvino_runner._compile``): for one clip, a
batch run clip by clip; the rewritten graph kept as an IR file in the model cache, named by
the export's and the rewrite's SHA-256, written whole or not at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_H, TINY_W, require

from evad.export.parity import seeded_inputs


@pytest.fixture(scope="module")
def ov():
    return require("openvino", "openvino")


def _ir_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("evad-*") if p.suffix in (".xml", ".bin"))


def test_a_batch_runs_clip_by_clip(ov, tiny_onnx, monkeypatch) -> None:
    """Compiled for one clip, a batch of three gives each clip's own outputs, bit for bit,
    in batch order."""
    from evad.export.openvino_runner import OpenVinoRunner

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")
    clips, sizes = seeded_inputs(1, 3, 16, TINY_H, TINY_W, seed=5)
    sizes[0][1] = [TINY_H - 10, TINY_W - 30]  # per-clip image sizes travel with their clip
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        assert [p.get_partial_shape().is_static for p in runner.compiled.inputs] == [True] * 2
        batch = runner(clips[0], sizes[0])
        alone = [runner(clips[0][i:i + 1], sizes[0][i:i + 1]) for i in range(3)]
    assert batch["boxes"].shape[0] == 3
    for name, value in batch.items():
        assert np.array_equal(value, np.concatenate([a[name] for a in alone])), name
    assert not np.array_equal(alone[0]["boxes"], alone[1]["boxes"])


def test_the_ir_cache(ov, tiny_onnx, tmp_path, monkeypatch) -> None:
    """The first open writes one IR (.xml + .bin) beside OpenVINO's blob; the next finds it
    and gives the same outputs; an export with other bytes gets its own IR."""
    from evad.export.openvino_runner import OpenVinoRunner

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(cache))
    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=6)
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        first = runner(clips[0], sizes[0])
    files = _ir_files(cache)
    assert len(files) == 2 and {Path(f).suffix for f in files} == {".xml", ".bin"}
    assert all(p.parent.name == "fp32" for p in cache.rglob("evad-*"))
    assert list((cache / "fp32").glob("*.blob")), "OpenVINO's compiled blob"
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("evad-*") if p.suffix != ".use"}
    (use,) = cache.rglob("evad-*.use")
    os.utime(use, ns=(0, 0))
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        again = runner(clips[0], sizes[0])
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("evad-*")
            if p.suffix != ".use"} == stamp  # found, not made
    assert use.stat().st_mtime_ns > 0  # the load dated its use
    for name in first:
        assert np.array_equal(first[name], again[name]), name

    other = tmp_path / "other.onnx"
    model = onnx.load(str(tiny_onnx))
    model.producer_version += "-other"  # same graph and weights, other file bytes
    onnx.save(model, str(other))
    with OpenVinoRunner(other, "fp32") as runner:
        assert all(np.array_equal(v, first[k]) for k, v in runner(clips[0], sizes[0]).items())
    assert len(_ir_files(cache)) == 4


def test_the_cache_keeps_the_most_recently_used_models(ov, tiny_onnx, tmp_path,
                                                        monkeypatch) -> None:
    """With EVAD_OPENVINO_CACHE_KEEP=1 a second model's compile removes the first one's IR and
    the blob OpenVINO made from it; what is left is the second model, its ``.use`` file naming
    exactly the blob beside it."""
    import json

    from evad.export.openvino_runner import OpenVinoRunner

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(cache))
    monkeypatch.setenv("EVAD_OPENVINO_CACHE_KEEP", "1")
    other = tmp_path / "other.onnx"
    model = onnx.load(str(tiny_onnx))
    model.producer_version += "-other"  # same graph and weights, other file bytes: a new key
    onnx.save(model, str(other))
    with OpenVinoRunner(tiny_onnx, "fp32"):
        pass
    first = set(_ir_files(cache))
    first_blobs = {p.name for p in (cache / "fp32").glob("*.blob")}
    assert len(first) == 2 and len(first_blobs) == 1
    with OpenVinoRunner(other, "fp32"):
        pass
    left = set(_ir_files(cache))
    assert len(left) == 2 and not left & first
    blobs = {p.name for p in (cache / "fp32").glob("*.blob")}
    assert len(blobs) == 1 and not blobs & first_blobs
    (use,) = (cache / "fp32").glob("*.use")
    assert set(json.loads(use.read_text())["blobs"]) == blobs
    assert use.with_suffix(".xml").name in left


def test_a_build_first_makes_room_for_itself(ov, tiny_onnx, tmp_path, monkeypatch) -> None:
    """With EVAD_OPENVINO_CACHE_KEEP=1 the first model is gone before the second is built (on a
    full disk that is what lets the new IR be written), not only after."""
    from evad.export import openvino_runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(cache))
    monkeypatch.setenv("EVAD_OPENVINO_CACHE_KEEP", "1")
    other = tmp_path / "other.onnx"
    model = onnx.load(str(tiny_onnx))
    model.producer_version += "-other"
    onnx.save(model, str(other))
    with openvino_runner.OpenVinoRunner(tiny_onnx, "fp32"):
        pass
    build, seen = openvino_runner._build, []

    def build_watched(*args, **kwargs):
        seen.append((_ir_files(cache), sorted(p.name for p in cache.rglob("*.blob"))))
        return build(*args, **kwargs)

    monkeypatch.setattr(openvino_runner, "_build", build_watched)
    with openvino_runner.OpenVinoRunner(other, "fp32"):
        pass
    assert seen == [([], [])]


def test_a_bad_cache_keep_is_ignored_with_the_cache_off(ov, tiny_onnx, monkeypatch) -> None:
    from evad.export.openvino_runner import OpenVinoRunner

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")
    monkeypatch.setenv("EVAD_OPENVINO_CACHE_KEEP", "none")
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        assert runner.precision == "fp32"


def test_a_bad_cache_keep_is_refused_before_compiling(ov, tiny_onnx, tmp_path,
                                                      monkeypatch) -> None:
    from evad.errors import ConfigError
    from evad.export import openvino_runner

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EVAD_OPENVINO_CACHE_KEEP", "none")

    def no_build(*args, **kwargs):
        raise AssertionError("compiled before the setting was checked")

    monkeypatch.setattr(openvino_runner, "_build", no_build)
    monkeypatch.setattr(openvino_runner.onnx, "load", no_build)
    with pytest.raises(ConfigError, match="EVAD_OPENVINO_CACHE_KEEP='none'"):
        openvino_runner.OpenVinoRunner(tiny_onnx, "fp32")


def test_an_ir_removed_before_openvino_reads_it_is_built_again(ov, tiny_onnx, tmp_path,
                                                               monkeypatch) -> None:
    """Another process's prune may remove the IR this one just found (it listed the folder
    first): the runner builds it again instead of failing, with the same outputs."""
    from evad.export import openvino_runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(cache))
    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=6)
    with openvino_runner.OpenVinoRunner(tiny_onnx, "fp32") as runner:
        first = runner(clips[0], sizes[0])
    record_use, calls = openvino_runner.record_use, []

    def pruned_meanwhile(ir: Path, new_blobs=frozenset()) -> None:
        record_use(ir, new_blobs)
        if not calls:  # the first call, just before OpenVINO reads the IR it found: the other
            for path in (ir, ir.with_suffix(".bin"), ir.with_suffix(".use"),  # process's prune
                         *ir.parent.glob("*.blob")):
                path.unlink()
        calls.append(ir)

    monkeypatch.setattr(openvino_runner, "record_use", pruned_meanwhile)
    with openvino_runner.OpenVinoRunner(tiny_onnx, "fp32") as runner:
        again = runner(clips[0], sizes[0])
    assert all(np.array_equal(again[k], v) for k, v in first.items())
    assert len(_ir_files(cache)) == 2 and calls == [calls[0]] * 2  # found, then built again
    # the blob of the build again has the old one's name (OpenVINO names it after the path):
    # claimed all the same
    (use,) = cache.rglob("*.use")
    blobs = {p.name for p in use.parent.glob("*.blob")}
    assert blobs and set(json.loads(use.read_text())["blobs"]) == blobs


def test_an_ir_that_cannot_be_written_leaves_nothing(ov, tiny_onnx, tmp_path,
                                                     monkeypatch) -> None:
    """A failed save (a full disk) leaves no partial IR and the runner still runs,
    uncached."""
    from evad.export import openvino_runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(cache))

    def full_disk(model, path: str, compress_to_fp16: bool = True) -> None:
        Path(path).with_suffix(".bin").write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(openvino_runner.ov, "save_model", full_disk)
    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=6)
    with openvino_runner.OpenVinoRunner(tiny_onnx, "fp32") as runner:
        out = runner(clips[0], sizes[0])
    assert np.isfinite(out["action_probs"]).all()
    assert _ir_files(cache) == [] and not list(cache.rglob("*.tmp*"))


def test_no_cache_writes_nothing(ov, tiny_onnx, tmp_path, monkeypatch) -> None:
    from evad.export.openvino_runner import OpenVinoRunner

    home = tmp_path / "home"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")
    monkeypatch.setenv("EVAD_CACHE", str(home))
    shutil.copy(tiny_onnx, tmp_path / "m.onnx")
    with OpenVinoRunner(tmp_path / "m.onnx", "fp32"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_int8_graph_openvino_refuses_for_one_clip_keeps_its_batch(ov, tiny_int8_onnx,
                                                                      tmp_path,
                                                                      monkeypatch) -> None:
    """OpenVINO 2026.4 refuses some Q/DQ graphs compiled for one clip (the demo model's): the
    runner compiles such a graph with the export's symbolic batch, keeps that IR (no one-clip
    IR left behind) and finds it next time, with the same outputs."""
    from evad.export import openvino_runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(cache))
    clips, sizes = seeded_inputs(1, 2, 16, TINY_H, TINY_W, seed=8)
    real = openvino_runner._build
    refused = []

    def refuse_one_clip(core, graph, weights, ir, clip_shape, config):
        if clip_shape is not None:
            compiled = real(core, graph, weights, ir, clip_shape, config)  # writes its IR
            refused.append(ir)
            del compiled
            raise RuntimeError("Node x/DequantizationMultiply contains empty child edge")
        return real(core, graph, weights, ir, clip_shape, config)

    monkeypatch.setattr(openvino_runner, "_build", refuse_one_clip)
    runs = []
    for _ in range(2):
        with openvino_runner.OpenVinoRunner(tiny_int8_onnx, "int8") as runner:
            assert not runner.compiled.inputs[0].get_partial_shape().is_static
            runs.append(runner(clips[0], sizes[0]))
    assert runs[0]["boxes"].shape[0] == 2 and np.isfinite(runs[0]["action_probs"]).all()
    for name in runs[0]:
        assert np.array_equal(runs[0][name], runs[1][name]), name
    assert len(refused) == 1  # the second open found the batched IR
    assert [p.name.endswith("-batch.xml") for p in cache.rglob("evad-*.xml")] == [True]


def test_the_action_pooler_runs_as_two_f32_products(ov, tiny_onnx, tmp_path,
                                                    monkeypatch) -> None:
    """The RoIAlign3D that pools a clip's T > 1 slices (the action pooler) compiles to two
    MatMuls with each RoI's bilinear weights (``separable_clip_pooling``), no ROIAlign over its
    (1, C * T, H, W) map; its layers are marked f32 in the IR and the rewritten XML loses
    nothing else (at fp32, where the marks do nothing, the outputs equal those of an IR left
    unmarked, bit for bit); at the bf16 hint both products and the two RoIAligns that find
    the weights run at f32 and the actor localization's RoIAligns (T = 1) at bf16, with the
    cache on and off (a CPU with bf16 only)."""
    from evad.export import openvino_runner
    from evad.export.openvino_graph import is_clip_pooling_layer, tensor_dims
    from evad.export.openvino_runner import OpenVinoRunner, cpu_has_bf16

    model = onnx.load(str(tiny_onnx), load_external_data=False)
    pools = [n for n in model.graph.node if n.op_type == "RoIAlign3D"]
    clip_pools = [d for d in (tensor_dims(model, n.input[0]) for n in pools) if (d[2] or 0) > 1]
    assert len(clip_pools) == 1 and len(pools) > 1
    _, c, t, h, w = clip_pools[0]
    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=9)
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(tmp_path / "marked"))
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        marked_out = runner(clips[0], sizes[0])
    (xml,) = (tmp_path / "marked").rglob("evad-*.xml")
    layers = list(ET.parse(xml).getroot().iter("layer"))
    marked = [x for x in layers if any(a.get("name") == "precise" for a in x.iter("attribute"))]
    assert marked and all(is_clip_pooling_layer(x.get("name")) for x in marked)
    assert sorted(x.get("name").rsplit("_", 1)[1] for x in marked
                  if x.get("type") == "MatMul") == ["pooled", "xbins"]
    rois = [x for x in layers if x.get("type") == "ROIAlign"]
    # the localization's, and the two that find the weights over the small one-hot maps
    assert len(rois) == len(pools) - 1 + 2
    assert not any([int(d.text) for d in x.find("./input/port").findall("dim")]
                   == [1, c * t, h, w] for x in rois)
    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(tmp_path / "plain"))
    monkeypatch.setattr(openvino_runner, "_keep_at_f32", lambda ir, layers: None)
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        plain_out = runner(clips[0], sizes[0])
    monkeypatch.undo()
    for name in marked_out:
        assert np.array_equal(marked_out[name], plain_out[name]), name
    if not cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU: the runtime precisions are not checked")
    for cache in (str(tmp_path / "marked"), ""):
        monkeypatch.setenv("EVAD_OPENVINO_CACHE", cache)
        with OpenVinoRunner(tiny_onnx, "bf16") as runner:
            ran = [(op.get_friendly_name(), op.get_rt_info()["layerType"].astype(str),
                    op.get_rt_info()["runtimePrecision"].astype(str))
                   for op in runner.compiled.get_runtime_model().get_ops()]
        products = [p for name, kind, p in ran if kind == "MatMul" and is_clip_pooling_layer(name)]
        assert products == ["f32", "f32"], (cache, products)
        weights = [p for name, kind, p in ran if kind == "ROIAlign" and is_clip_pooling_layer(name)]
        assert weights == ["f32", "f32"], (cache, weights)
        localization = [p for name, kind, p in ran
                        if kind == "ROIAlign" and not is_clip_pooling_layer(name)]
        assert localization == ["bf16"] * (len(pools) - 1), (cache, localization)


def test_the_clip_pooling_products_give_the_reference_in_openvino(ov, tmp_path) -> None:
    """OpenVINO (f32) runs ``separable_clip_pooling``'s graph to the torch reference's values
    (within 1e-5): RoIs partly or wholly outside the map, degenerate ones, both batch
    elements, and zeros for invalid batch indices (their RoiAlign is OpenVINO's own, whose
    edge rules the weights come from)."""
    import torch
    from test_openvino_graph import _pooling_model
    from test_roi_align_3d import EDGE_ROIS, _rois

    from evad.export.openvino_graph import separable_clip_pooling
    from evad.models.roi_align_3d import roi_align_3d

    b, c, t, h, w = 2, 6, 4, 9, 14
    onnx.save(separable_clip_pooling(_pooling_model(c, t, h, w)), tmp_path / "pool.onnx")
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(b, c, t, h, w, generator=gen)
    bad = torch.tensor([[v, 10.0, 20.0, 100.0, 80.0] for v in (-1.0, 2.0, 0.5, float("nan"))])
    rois = torch.cat((EDGE_ROIS, bad, _rois(20, b, (h * 16, w * 16), gen)))
    compiled = ov.Core().compile_model(str(tmp_path / "pool.onnx"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled([feat.numpy(), rois.numpy()])[0]
    want = roi_align_3d(feat, rois, 7, 7, 1 / 16, 2, True).numpy()
    invalid = slice(len(EDGE_ROIS), len(EDGE_ROIS) + len(bad))
    assert np.all(got[invalid] == 0) and np.all(want[invalid] == 0)
    assert np.abs(got - want).max() <= 1e-5 and np.abs(want).max() > 0.5


def test_the_importance_chunks_and_the_patch_embedding_compile_to_matrix_products(
        ov, tiny_onnx, monkeypatch) -> None:
    """What the rewrite is for, in the compiled model: each unrolled importance chunk runs as
    its logits MatMul, a Softmax and its row sum as a MatMul of the transposed probabilities
    with a ones column (no Reduce layer, no FullyConnected, no fused ``Subgraph``), and the
    patch embedding's convolution runs as a FullyConnected. Two regressions are caught: a
    constant ones column (OpenVINO turns that product into a FullyConnected, a 17 % slower
    clip) and the ones row in front (``MatMul(ones, probs)``, which OpenVINO fuses with the
    logits and Softmax into one ``Subgraph``, 4 % slower on the AMX Xeon)."""
    from evad.export.openvino_runner import OpenVinoRunner

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    prunes = sum(n.op_type == "KeyframeTopKPrune" for n in model.graph.node)
    (patch_conv,) = [n for n in model.graph.node
                     if n.op_type == "Conv" and n.input[0] == model.graph.input[0].name]
    with OpenVinoRunner(tiny_onnx, "fp32") as runner:
        layers = [(op.get_friendly_name(), op.get_rt_info()["layerType"].astype(str))
                  for op in runner.compiled.get_runtime_model().get_ops()]
    chunks: dict[str, set[str]] = {}
    for name, layer_type in layers:
        if m := re.search(r"_prune\d+_c\d+_(logits|probs|sum4)$", name):
            chunks.setdefault(m.group(1), set()).add(layer_type)
    assert prunes > 0 and chunks == {"logits": {"MatMul"}, "probs": {"Softmax"},
                                     "sum4": {"MatMul"}}, chunks
    chunk_types = {t for name, t in layers if re.search(r"_prune\d+_c\d+_", name)}
    assert not chunk_types & {"Reduce", "FullyConnected"}, chunk_types
    assert "Convolution" not in {t for name, t in layers if name.startswith(patch_conv.name)}
    assert any(t == "FullyConnected" and name.startswith("_patch") for name, t in layers)


def _runtime_precisions(runner) -> list[tuple[str, str, str]]:
    """(name, layer type, runtime precision) of each layer OpenVINO compiled."""
    return [(op.get_friendly_name(), op.get_rt_info()["layerType"].astype(str),
             op.get_rt_info()["runtimePrecision"].astype(str))
            for op in runner.compiled.get_runtime_model().get_ops()]


def test_the_int8_export_runs_its_float_rest_in_bf16_and_its_row_sums_at_f32(
        ov, tiny_int8_onnx, tmp_path, monkeypatch) -> None:
    """--precision int8 on a CPU with native bf16: the Q/DQ products in int8, the float rest in
    bf16, but every layer of the unrolled pruning except its logits products marked f32 (the
    row-sum products run f32, the logits products bf16; OpenVINO keeps the Softmax and the
    slices of q bf16), and the fused attention in bf16 (NNCF puts Q/DQ on the products' inputs
    only, so q and k reach it as bf16), with the cache on and off; asked fp32 (or where the IR
    cannot be written, so no layer can be marked), no layer runs bf16. The two runs agree to
    int8's and bf16's rounding."""
    from evad.export import openvino_runner
    from evad.export.openvino_graph import is_pruning_layer, is_pruning_logits
    from evad.export.openvino_runner import OpenVinoRunner, cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU: the int8 export's float rest runs at f32")
    clips, sizes = seeded_inputs(1, 1, 16, TINY_H, TINY_W, seed=12)
    outs = {}
    for cache in (str(tmp_path / "cache"), ""):
        monkeypatch.setenv("EVAD_OPENVINO_CACHE", cache)
        with OpenVinoRunner(tiny_int8_onnx, "int8") as runner:
            assert runner.name == "openvino (CPU, int8 + bf16)"
            layers = _runtime_precisions(runner)
            outs[cache] = runner(clips[0], sizes[0])
        pruning = [(n, t, p) for n, t, p in layers if is_pruning_layer(n)]
        logits = {p for n, t, p in pruning if t == "MatMul" and is_pruning_logits(n)}
        sums = {p for n, t, p in pruning if t == "MatMul" and n.endswith("_sum4")}
        assert len(pruning) > 20 and logits == {"bf16"} and sums == {"f32"}, (cache, pruning)
        # OpenVINO 2026.4 keeps the marked Softmax in bf16, and the slices of the bf16 q
        assert {t for n, t, p in pruning if p == "bf16" and not is_pruning_logits(n)} <= {
            "Softmax", "Reorder", "StridedSlice"}, cache
        rest = {p for n, _, p in layers if not is_pruning_layer(n)}
        assert "bf16" in rest and rest & {"i8", "u8"}, (cache, rest)
        # no Q/DQ on the qkv products' outputs: the fused attention reads bf16 q and k
        # (docs/design.md, "What 6x the official code needs")
        attention = {p for n, t, p in layers if t == "Subgraph" and "MultiHeadAttention" in n}
        assert attention == {"bf16"}, (cache, attention)
    for name in outs[""]:
        assert np.array_equal(outs[""][name], outs[str(tmp_path / "cache")][name]), name
    with OpenVinoRunner(tiny_int8_onnx, "fp32") as runner:
        assert runner.name == "openvino (CPU, int8)"
        assert "bf16" not in {p for _, _, p in _runtime_precisions(runner)}
        f32_rest = runner(clips[0], sizes[0])
    bf16_rest = outs[""]
    for name in ("boxes", "person_scores", "action_probs"):
        diff = np.abs(bf16_rest[name].astype(np.float64) - f32_rest[name])
        scale = 1.0 if name != "boxes" else float(max(TINY_H, TINY_W))
        assert 0 < diff.max() <= 0.05 * scale, (name, diff.max())

    def full_disk(model, path: str, compress_to_fp16: bool = True) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", str(tmp_path / "full"))
    monkeypatch.setattr(openvino_runner.ov, "save_model", full_disk)
    with OpenVinoRunner(tiny_int8_onnx, "int8") as runner:
        assert "bf16" not in {p for _, _, p in _runtime_precisions(runner)}
        assert runner.name == "openvino (CPU, int8)"  # what ran, not what was asked


def test_the_int8_export_on_a_cpu_without_bf16_runs_its_float_rest_at_f32(
        ov, tiny_int8_onnx, monkeypatch) -> None:
    """Where OpenVINO sees no native bf16, --precision int8 is not refused (as bf16 is): its
    float rest runs at f32."""
    from evad.export import openvino_runner

    monkeypatch.setenv("EVAD_OPENVINO_CACHE", "")
    monkeypatch.setattr(openvino_runner, "cpu_has_bf16", lambda core=None: False)
    with openvino_runner.OpenVinoRunner(tiny_int8_onnx, "int8") as runner:
        assert runner.name == "openvino (CPU, int8)"
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        assert "bf16" not in {p for _, _, p in _runtime_precisions(runner)}
