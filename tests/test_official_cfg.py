"""Released config values beyond the released presets: each one the official model code runs is
honoured by the reference, value by value (MCG-NJU/EVAD head_helper.py, vit_model.py,
e2e_detector.py, detectron2's ROIPooler)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from evad.errors import CheckpointError, ConfigError
from evad.models import EVAD, build_model, get_preset, load_checkpoint, save_checkpoint
from evad.models.checkpoint_cfg import cfg_from_preset, preset_from_cfg
from evad.models.evad import extend_boxes, keep_top_actions, pose_softmax_logits
from evad.models.flops import flops, token_counts
from evad.models.localization import pool_rois, roi_pool_3d
from evad.models.presets import Preset
from evad.models.roi_align_3d import roi_align_3d


def _clip(seed: int = 1, height: int = 96, width: int = 160) -> torch.Tensor:
    return torch.randn(1, 3, 16, height, width, generator=torch.Generator().manual_seed(seed))


def _tiny(**overrides) -> EVAD:
    torch.manual_seed(0)
    return build_model("tiny", **overrides).eval().calm()


def _same_weights(model: EVAD, **overrides) -> EVAD:
    other = EVAD(model.preset.replace(**overrides)).eval()
    other.load_state_dict(model.state_dict())
    return other


def _released_cfg(p: Preset) -> dict:
    """``p``'s config as a released file has it: no DEPLOY keys (this project's own)."""
    cfg = yaml.safe_load(cfg_from_preset(p))
    del cfg["DEPLOY"]
    return cfg


def _hand_action_logits(model: EVAD, clip: torch.Tensor, resolution: int, stride: int,
                        pool) -> torch.Tensor:
    """The classification branch written out: actor RoIs of ``resolution`` bins on the decoder
    token map, boxes scaled by 1 / ``stride``, max over the bins, mean over time, decoder."""
    p, head = model.preset, model.det_head
    size = model._image_size(clip, None)
    enc = model.encode(clip)
    boxes = model.localize(enc, size)[1][-1]
    actors = extend_boxes(boxes, p.box_extend, size)[0]  # (n, 4)
    n = actors.shape[0]
    t, h, w = (p.num_frames // p.tubelet_size, clip.shape[-2] // p.patch_size,
               clip.shape[-1] // p.patch_size)
    dense, tokens = head.dense_map(head.encoder_to_decoder(enc.x), enc.idx, (t, h, w))
    fmap = dense.transpose(1, 2).reshape(1, p.decoder_dim, t, h, w)
    rois = torch.cat((torch.zeros(n, 1), actors), dim=1)
    pooled = pool(fmap, rois, resolution, 1.0 / stride)  # (n, C_d, t, res, res)
    assert pooled.shape == (n, p.decoder_dim, t, resolution, resolution)
    actor = pooled.flatten(3).max(dim=-1).values.mean(dim=2)  # (n, C_d)
    z = torch.cat((tokens, actor[None]), dim=1)
    for blk in head.decoder.blocks:
        z = blk(z)
    return blk.head(z[:, -n:])


def _align(aligned: bool, ratio: int = 2):
    return lambda f, r, res, scale: roi_align_3d(f, r, res, res, scale, ratio, aligned)


def test_released_layout_3x3_box_pooler_7x7_actor_pooler(tmp_path) -> None:
    """POOLER_RESOLUTION 3 with ROI_XFORM_RESOLUTION 7: the official code runs it (two separate
    ROIPoolers), so the reference loads it and pools the actors on 7 x 7 bins."""
    model = _tiny(pooler_resolution=3)
    assert model.preset.action_pooler_resolution == 7
    out_layer = model.det_head.s0_headseries[0].inst_interact.out_layer
    assert tuple(out_layer.weight.shape) == (64, 64 * 9)  # 3 x 3 box-head RoI features
    path = save_checkpoint(model, tmp_path / "r3_x7.pth")
    cfg = yaml.safe_load(torch.load(path, weights_only=True)["cfg"])
    assert cfg["MODEL"]["ROI_BOX_HEAD"]["POOLER_RESOLUTION"] == 3
    assert cfg["DETECTION"] == {"ROI_XFORM_RESOLUTION": 7, "SPATIAL_SCALE_FACTOR": 16}
    loaded, meta = load_checkpoint(path)
    assert meta["preset"] == model.preset
    assert set(loaded.state_dict()) == set(build_model("tiny").state_dict())  # same key set

    clip = _clip()
    with torch.no_grad():
        out = loaded(clip)
        hand7 = _hand_action_logits(loaded, clip, 7, 16, _align(True))
        hand3 = _hand_action_logits(loaded, clip, 3, 16, _align(True))
    torch.testing.assert_close(out.action_logits, hand7, rtol=1e-5, atol=1e-5)
    assert (out.action_logits - hand3).abs().max() > 1e-3  # the 3 x 3 pooling is not what ran

    # another actor resolution, same weights: the actions change, the localization does not
    other = _same_weights(loaded, action_pooler_resolution=5)
    with torch.no_grad():
        moved = other(clip)
    assert torch.equal(moved.boxes, out.boxes) and torch.equal(moved.person_scores,
                                                               out.person_scores)
    assert (moved.action_logits - out.action_logits).abs().max() > 1e-3


@pytest.mark.parametrize(("pooler_type", "resolution", "stride"), [
    ("ROIAlignV2", 5, 8), ("ROIAlign", 7, 16), ("ROIAlign", 4, 32), ("ROIPool", 7, 16),
])
def test_actor_pooler_follows_detection_keys_and_pooler_type(pooler_type, resolution,
                                                             stride) -> None:
    """ROI_XFORM_RESOLUTION, SPATIAL_SCALE_FACTOR (the stride may differ from the patch size:
    the official pooler then scales the boxes by it all the same) and POOLER_TYPE."""
    cfg = _released_cfg(get_preset("tiny"))
    cfg["DETECTION"] = {"ROI_XFORM_RESOLUTION": resolution, "SPATIAL_SCALE_FACTOR": stride}
    cfg["MODEL"]["ROI_BOX_HEAD"]["POOLER_TYPE"] = pooler_type
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert (p.action_pooler_resolution, p.action_pooler_stride, p.pooler_type) == (
        resolution, stride, pooler_type)
    assert preset_from_cfg(cfg_from_preset(p)) == p
    model = _same_weights(_tiny(), **{f: getattr(p, f) for f in (
        "action_pooler_resolution", "action_pooler_stride", "pooler_type")})
    pool = ((lambda f, r, res, scale: roi_pool_3d(f, r, res, res, scale))
            if pooler_type == "ROIPool" else _align(pooler_type == "ROIAlignV2"))
    clip = _clip(2)
    with torch.no_grad():
        got = model(clip).action_logits
        want = _hand_action_logits(model, clip, resolution, stride, pool)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pooler_type_reaches_the_box_head(monkeypatch) -> None:
    """detectron2 builds both poolers with POOLER_TYPE: ROIAlign (aligned=False) in both."""
    import evad.models.evad as evad_mod
    import evad.models.localization as loc

    calls: list[tuple[int, float, str]] = []
    real = loc.pool_rois

    def spy(features, rois, resolution, scale, ratio, pooler_type="ROIAlignV2"):
        calls.append((resolution, scale, pooler_type))
        return real(features, rois, resolution, scale, ratio, pooler_type)

    monkeypatch.setattr(loc, "pool_rois", spy)
    monkeypatch.setattr(evad_mod, "pool_rois", spy)
    base = _tiny(pooler_resolution=3)
    model = _same_weights(base, pooler_type="ROIAlign")
    with torch.no_grad():
        a, b = base(_clip()), model(_clip())
    box_calls = [c for c in calls if c[0] == 3]
    actor_calls = [c for c in calls if c[0] == 7]
    # 2 forwards x 2 stages x 4 FPN levels; 2 forwards x 1 actor pooling at stride 16
    assert len(box_calls) == 16 and len(actor_calls) == 2
    assert {c[1] for c in box_calls} == {1 / 4, 1 / 8, 1 / 16, 1 / 32}
    assert [c[2] for c in calls[len(calls) // 2:]] == ["ROIAlign"] * (len(calls) // 2)
    assert {c[1] for c in actor_calls} == {1 / 16}
    assert (a.boxes - b.boxes).abs().max() > 1e-4  # the unaligned box pooler moved the boxes


def _brute_roi_pool(feat, rois, oh, ow, scale):
    """torchvision's CPU roi_pool kernel, loop by loop (C round: half away from zero)."""
    b, c, t, h, w = feat.shape
    out = torch.zeros(len(rois), c, t, oh, ow)
    for r, (bi, x1, y1, x2, y2) in enumerate(rois.tolist()):
        def rnd(v):
            return int(math.copysign(math.floor(abs(v) + 0.5), v))

        sw, sh, ew, eh = rnd(x1 * scale), rnd(y1 * scale), rnd(x2 * scale), rnd(y2 * scale)
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = rh / oh, rw / ow
        for i in range(oh):
            for j in range(ow):
                hs = min(max(math.floor(i * bh) + sh, 0), h)
                he = min(max(math.ceil((i + 1) * bh) + sh, 0), h)
                ws = min(max(math.floor(j * bw) + sw, 0), w)
                we = min(max(math.ceil((j + 1) * bw) + sw, 0), w)
                if he <= hs or we <= ws:
                    continue
                out[r, :, :, i, j] = feat[int(bi), :, :, hs:he, ws:we].amax(dim=(-2, -1))
    return out


def test_roi_pool_matches_torchvision_kernel() -> None:
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 3, 2, 9, 11, generator=g)
    rois = torch.tensor([
        [0, 8.0, 8.0, 120.0, 100.0],  # 0.5 rounds up to 1 (torch.round would give 0)
        [1, 40.0, 24.0, 72.0, 56.0],  # 2.5 -> 3, 1.5 -> 2
        [0, 0.0, 0.0, 175.0, 143.0],  # the whole map, bins of uneven size
        [1, 30.0, 30.0, 31.0, 31.0],  # one cell, every bin the same
        [0, -90.0, -70.0, -20.0, -30.0],  # outside: every bin empty -> 0
        [1, 150.0, 120.0, 400.0, 300.0],  # beyond the far edges: clipped bins
        [0, 60.0, 20.0, 40.0, 10.0],  # inverted: forced to 1 x 1
    ])
    got = roi_pool_3d(feat, rois, 4, 3, 1 / 16)
    want = _brute_roi_pool(feat, rois, 4, 3, 1 / 16)
    assert torch.equal(got, want)
    assert torch.equal(got[4], torch.zeros_like(got[4]))
    assert torch.equal(pool_rois(feat, rois, 5, 1 / 16, 0, "ROIPool"),
                       _brute_roi_pool(feat, rois, 5, 5, 1 / 16))


def test_roi_pool_refuses_export() -> None:
    class Pool(torch.nn.Module):
        def forward(self, f, r):
            return roi_pool_3d(f, r, 2, 2, 1.0)

    args = (torch.randn(1, 2, 1, 4, 4), torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]))
    with pytest.raises(ConfigError, match="torch reference only"):
        torch.export.export(Pool(), args)


def test_qk_scale_scales_the_encoder_attention_only() -> None:
    """ViT.QK_SCALE = 0.05: the official Attention multiplies q by it (in the encoder's KTP
    blocks, whose pruning scores come from the same attention); the decoder is built without it."""
    cfg = _released_cfg(get_preset("tiny"))
    cfg["ViT"]["QK_SCALE"] = 0.05
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert p.qk_scale == 0.05 and preset_from_cfg(cfg_from_preset(p)) == p
    cfg["ViT"]["QK_SCALE"] = 0  # `qk_scale or head_dim ** -0.5`
    assert preset_from_cfg(yaml.safe_dump(cfg)).qk_scale is None
    base = _tiny()
    model = _same_weights(base, qk_scale=0.05)
    assert all(blk.attn.scale == 0.05 for blk in model.blocks)
    assert all(blk.attn.scale == 32 ** -0.5 for blk in model.det_head.decoder.blocks)

    attn = model.blocks[0].attn  # by hand: softmax(0.05 q k^T) v, q and k biased as VideoMAE's
    x = torch.randn(1, 5, 192, generator=torch.Generator().manual_seed(4))
    qkv = F.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, torch.zeros(192), attn.v_bias)))
    q, k, v = qkv.reshape(1, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)
    a = torch.softmax(0.05 * q @ k.transpose(-2, -1), dim=-1) @ v
    want = attn.proj(a.transpose(1, 2).reshape(1, 5, 192))
    with torch.no_grad():
        got, q_scaled, _ = attn(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q_scaled, 0.05 * q)
        a_out, b_out = base(_clip()), model(_clip())
    assert (a_out.action_logits - b_out.action_logits).abs().max() > 1e-3


def test_gelu_activation_in_the_box_head_ffn() -> None:
    """MODEL.SparseRCNN.ACTIVATION = gelu: the official RCNNHead FFN is linear2(gelu(linear1))."""
    cfg = _released_cfg(get_preset("tiny"))
    cfg["MODEL"]["SparseRCNN"]["ACTIVATION"] = "gelu"
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert p.loc_activation == "gelu" and preset_from_cfg(cfg_from_preset(p)) == p
    base = _tiny()
    model = _same_weights(base, loc_activation="gelu")
    head = model.det_head.s0_headseries[0]
    seen = {}
    head.linear1.register_forward_hook(lambda m, i, o: seen.setdefault("hidden", o))
    head.linear2.register_forward_pre_hook(lambda m, i: seen.setdefault("ffn_in", i[0]))
    with torch.no_grad():
        out = model(_clip())
        ref = base(_clip())
    assert float(seen["hidden"].min()) < -0.5  # negative inputs, where gelu and relu differ
    torch.testing.assert_close(seen["ffn_in"], F.gelu(seen["hidden"]))
    assert (out.boxes - ref.boxes).abs().max() > 1e-4


def test_decoder_mlp_ratio_differs_from_the_encoder_one(tmp_path) -> None:
    """MODEL.CRD.MLP_RATIO sizes the decoder MLP only (head_helper.py passes it to the CRD)."""
    model = _tiny(decoder_mlp_ratio=2.0)
    assert tuple(model.det_head.decoder.blocks[0].mlp.fc1.weight.shape) == (192, 96)
    assert tuple(model.blocks[0].mlp.fc1.weight.shape) == (768, 192)
    path = save_checkpoint(model, tmp_path / "crd2.pth")
    cfg = yaml.safe_load(torch.load(path, weights_only=True)["cfg"])
    assert cfg["MODEL"]["CRD"]["MLP_RATIO"] == 2.0 and cfg["ViT"]["MLP_RATIO"] == 4.0
    loaded, meta = load_checkpoint(path)
    assert meta["preset"].decoder_mlp_ratio == 2.0 and meta["preset"].mlp_ratio == 4.0
    with torch.no_grad():
        assert torch.equal(loaded(_clip()).action_logits, model(_clip()).action_logits)


def test_flops_follow_the_fields_that_change_the_computation() -> None:
    tiny = get_preset("tiny")
    f0 = flops(tiny, 96, 160)
    # RoI pooling, activations, the attention scale and the scores are not counted (fvcore)
    for kw in ({"action_pooler_resolution": 3}, {"action_pooler_stride": 8},
               {"pooler_type": "ROIAlign"}, {"loc_activation": "gelu"}, {"qk_scale": 0.1},
               {"softmax_pose": True, "num_eval_act_classes": 3}):
        assert flops(tiny.replace(**kw), 96, 160) == f0, kw
    f2 = flops(tiny.replace(decoder_mlp_ratio=2.0), 96, 160)
    assert f2["encoder"] == f0["encoder"] and f2["localization"] == f0["localization"]
    tokens = token_counts(tiny, 96, 160)[-1] + tiny.num_proposals  # decoder sequence length
    fc_saved = 2 * tokens * 96 * (384 - 192)  # fc1 + fc2 per block, 96 -> 384 vs 96 -> 192
    assert f0["decoder"] - f2["decoder"] == pytest.approx(2 * fc_saved / 1e9, rel=1e-12)
    # the matmul part still equals torch's own count
    torch.manual_seed(0)
    model = build_model("tiny", decoder_mlp_ratio=2.0, pooler_resolution=3).eval()
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 3, 16, 96, 160), all_stages=True)
    want = flops(model.preset, 96, 160)["matmul_total"]
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(want, rel=1e-9)


def test_softmax_pose_scores() -> None:
    """SOFTMAX_POSE: the official test step takes softmax over the first 14 logits (the AVA
    poses) and sigmoid over the rest; the reference's logits give exactly that under sigmoid."""
    cfg = _released_cfg(get_preset("tiny"))
    cfg["MODEL"]["SparseRCNN"]["SOFTMAX_POSE"] = True
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert p.softmax_pose and preset_from_cfg(cfg_from_preset(p)) == p
    base = _tiny()
    model = _same_weights(base, softmax_pose=True)
    with torch.no_grad():
        raw = base(_clip()).action_logits
        got = torch.sigmoid(model(_clip()).action_logits)
    torch.testing.assert_close(got[..., :14], torch.softmax(raw[..., :14], dim=-1))
    torch.testing.assert_close(got[..., 14:], torch.sigmoid(raw[..., 14:]))
    torch.testing.assert_close(got[..., :14].sum(-1), torch.ones(1, 20))
    # the official loss is the BCE of those probabilities: BCE-with-logits of ours equals it
    y = (torch.rand(raw.shape, generator=torch.Generator().manual_seed(5)) > 0.8).float()
    z = pose_softmax_logits(raw)
    torch.testing.assert_close(F.binary_cross_entropy_with_logits(z, y),
                               F.binary_cross_entropy(got, y))
    # fewer than 14 classes: all of them form the softmax (the official slice [:14])
    few = torch.tensor([[0.3, -1.0, 2.0]])
    torch.testing.assert_close(torch.sigmoid(pose_softmax_logits(few)), torch.softmax(few, -1))


def test_num_eval_act_classes_keeps_the_top_scores_at_test_time() -> None:
    """NUM_EVAL_ACT_CLASSES = 3: the official test step keeps each actor's top 3 scores and
    zeroes the rest (after the softmax-pose step); training is unaffected."""
    cfg = _released_cfg(get_preset("tiny"))
    cfg["MODEL"]["SparseRCNN"].update(NUM_EVAL_ACT_CLASSES=3, SOFTMAX_POSE=True)
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert p.num_eval_act_classes == 3 and preset_from_cfg(cfg_from_preset(p)) == p
    cfg["MODEL"]["SparseRCNN"]["NUM_EVAL_ACT_CLASSES"] = -2  # `if ... > 0`: keep all
    assert preset_from_cfg(yaml.safe_dump(cfg)).num_eval_act_classes == 0
    base = _same_weights(_tiny(), softmax_pose=True)
    model = _same_weights(base, num_eval_act_classes=3)
    with torch.no_grad():
        full = torch.sigmoid(base(_clip()).action_logits)
        got = torch.sigmoid(model(_clip()).action_logits)
        top = full.topk(3, dim=-1)
        want = torch.zeros_like(full).scatter(-1, top.indices, top.values)
        torch.testing.assert_close(got, want)
        assert ((got > 0).sum(-1) == 3).all()
        model.train()
        assert torch.equal(model(_clip()).action_logits, base.train()(_clip()).action_logits)
    assert torch.equal(keep_top_actions(torch.tensor([[1.0, 3.0, 2.0]]), 2),
                       torch.tensor([[-math.inf, 3.0, 2.0]]))


def test_files_written_before_the_new_fields_keep_their_ties() -> None:
    """This project's cfgs of before (DEPLOY.PRESET, no DETECTION / CRD.MLP_RATIO) describe
    models whose actor pooler followed POOLER_RESOLUTION and the patch size."""
    p = get_preset("tiny", pooler_resolution=5, mlp_ratio=2.0, decoder_mlp_ratio=2.0,
                   action_pooler_resolution=5)
    cfg = yaml.safe_load(cfg_from_preset(p.replace(name="custom")))
    del cfg["DETECTION"], cfg["MODEL"]["CRD"]["MLP_RATIO"]
    old = preset_from_cfg(yaml.safe_dump(cfg))
    assert (old.action_pooler_resolution, old.action_pooler_stride, old.decoder_mlp_ratio) == (
        5, 16, 2.0)
    # a released file without the keys gets the official defaults (DETECTION.* 7 and 16)
    del cfg["DEPLOY"]
    released = preset_from_cfg(yaml.safe_dump(cfg))
    assert (released.action_pooler_resolution, released.action_pooler_stride) == (7, 16)
    # export metadata of before, likewise
    d = p.to_dict()
    for k in ("action_pooler_resolution", "action_pooler_stride", "decoder_mlp_ratio"):
        d.pop(k)
    assert Preset.from_dict(d) == p
    # and the shipped demo model still pools its actors on 5 x 5 bins
    assert get_preset("demo").action_pooler_resolution == 5


@pytest.mark.parametrize(("section", "key", "value", "why"), [
    ("MODEL.SparseRCNN", "ACTIVATION", "glu", "halves DIM_FEEDFORWARD"),
    ("MODEL.SparseRCNN", "ACTIVATION", "silu", "raise in _get_activation_fn"),
    ("MODEL.ROI_BOX_HEAD", "POOLER_TYPE", "ROIAlignRotated", "rotated boxes"),
    ("DETECTION", "SPATIAL_SCALE_FACTOR", 12, "power of two"),
    ("DETECTION", "SPATIAL_SCALE_FACTOR", 0.5, "power of two"),
    ("DETECTION", "ROI_XFORM_RESOLUTION", 6.5, "integer output size"),
    ("ViT", "QK_SCALE", "large", "null or a number"),
    ("MODEL.SparseRCNN", "NUM_EVAL_ACT_CLASSES", 81, "torch.topk fails"),
    ("MODEL.ROI_BOX_HEAD", "POOLER_SAMPLING_RATIO", 0, "adaptive mode"),
])
def test_values_the_reference_cannot_run_are_refused_with_the_reason(section, key, value,
                                                                     why) -> None:
    cfg = _released_cfg(get_preset("vit_b_ktp"))
    node = cfg
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    with pytest.raises(CheckpointError, match=why) as e:
        preset_from_cfg(yaml.safe_dump(cfg))
    assert key in str(e.value) or key.lower() in str(e.value)


def test_roi_pool_ignores_the_sampling_ratio() -> None:
    # detectron2's RoIPool has no sampling ratio, so a 0 there is a valid config
    assert get_preset("tiny", pooler_type="ROIPool", pooler_sampling_ratio=0).pooler_type == (
        "ROIPool")
    with pytest.raises(ConfigError, match="adaptive"):
        get_preset("tiny", pooler_sampling_ratio=0)


def test_every_new_field_survives_export(tmp_path) -> None:
    """The fields are plain torch in the model, so the exported graph computes them too: ORT
    matches the reference with all of them away from the released values."""
    from evad.cli.export import main as export_main
    from evad.export import FP32_THRESHOLDS, compare, seeded_inputs
    from evad.export.ort_runner import OrtRunner

    torch.manual_seed(0)
    model = build_model("tiny", qk_scale=0.1, loc_activation="gelu", decoder_mlp_ratio=2.0,
                        pooler_resolution=3, action_pooler_resolution=5, action_pooler_stride=8,
                        softmax_pose=True, num_eval_act_classes=3).calm().eval()
    ckpt = save_checkpoint(model, tmp_path / "fields.pth")
    assert export_main(["--ckpt", str(ckpt), "--height", "96", "--width", "160", "--out",
                        str(tmp_path), "--onnx-only", "--quiet"]) == 0
    runner = OrtRunner(tmp_path / "fields.onnx", cuda=False)
    clips, sizes = seeded_inputs(2, 1, 16, 96, 160)
    report = compare(model, runner, clips, sizes, FP32_THRESHOLDS)
    assert report.passed, report.lines()
    probs = runner(np.asarray(clips[0]), np.asarray(sizes[0]))["action_probs"]
    assert ((probs > 0).sum(-1) == 3).all()  # as the official top-3 test step leaves them
