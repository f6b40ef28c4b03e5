"""Checkpoint loading: the released layout and key names, presets from cfg, clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

from evad.errors import CheckpointError
from evad.models import EVAD, build_model, get_preset, load_checkpoint, save_checkpoint
from evad.models.checkpoint import official_state_dict
from evad.models.checkpoint_cfg import cfg_from_preset, preset_from_cfg


def official_vit_b_keys(depth: int = 12, stages: int = 6, dec_depth: int = 6) -> set[str]:
    """The state-dict keys of the released ViT-B EVAD (MCG-NJU/EVAD, EVAD model class), written
    out from its module definitions: 529 keys for ViT-B."""
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "init_proposal_features.weight", "init_proposal_boxes.weight",
            "criterion.empty_weight", "det_head.mask_token", "det_head.encoder_to_decoder.weight"}
    wb = ("weight", "bias")
    for i in range(depth):
        keys |= {f"blocks.{i}.{m}.{p}" for m in ("norm1", "norm2", "attn.proj", "mlp.fc1",
                                                  "mlp.fc2") for p in wb}
        keys |= {f"blocks.{i}.attn.{p}" for p in ("q_bias", "v_bias", "qkv.weight")}
    for lvl in range(2, 6):
        keys |= {f"fpn_{kind}{lvl}.{p}" for kind in ("lateral", "output") for p in wb}
    for s in range(stages):
        h = f"det_head.s0_headseries.{s}"
        keys |= {f"{h}.self_attn.in_proj_weight", f"{h}.self_attn.in_proj_bias",
                 f"{h}.self_attn.out_proj.weight", f"{h}.self_attn.out_proj.bias",
                 f"{h}.cls_module.0.weight", f"{h}.cls_module.1.weight", f"{h}.cls_module.1.bias"}
        keys |= {f"{h}.inst_interact.{m}.{p}" for m in ("dynamic_layer", "norm1", "norm2",
                                                         "out_layer", "norm3") for p in wb}
        keys |= {f"{h}.{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3",
                                          "class_logits", "bboxes_delta") for p in wb}
        keys |= {f"{h}.reg_module.{j}.weight" for j in (0, 1, 3, 4, 6, 7)}
        keys |= {f"{h}.reg_module.{j}.bias" for j in (1, 4, 7)}
    for j in range(dec_depth):
        b = f"det_head.decoder.blocks.{j}"
        keys |= {f"{b}.{m}.{p}" for m in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2",
                                          "act_module.1", "action_logits") for p in wb}
        keys |= {f"{b}.attn.{p}" for p in ("q_bias", "v_bias", "qkv.weight")}
        keys.add(f"{b}.act_module.0.weight")
    return keys


def _meta_model(preset: str) -> EVAD:
    with torch.device("meta"):
        return EVAD(get_preset(preset))


@pytest.mark.parametrize("preset", ["vit_b", "vit_b_ktp", "vit_b_ktp_ew"])
def test_key_set_equals_official(preset: str) -> None:
    want = official_vit_b_keys()
    assert len(want) == 529
    assert set(official_state_dict(_meta_model(preset))) == want


def test_vit_l_key_set_and_shapes() -> None:
    sd = official_state_dict(_meta_model("vit_l_ktp"))
    assert set(sd) == official_vit_b_keys(depth=24, dec_depth=12) and len(sd) == 793
    shapes = {
        "patch_embed.proj.weight": (1024, 3, 2, 16, 16), "blocks.0.attn.qkv.weight": (3072, 1024),
        "fpn_lateral2.weight": (256, 1024, 1, 1), "det_head.mask_token": (1, 1, 512),
        "det_head.encoder_to_decoder.weight": (512, 1024),
        "det_head.s0_headseries.0.inst_interact.dynamic_layer.weight": (32768, 256),
        "det_head.s0_headseries.0.inst_interact.out_layer.weight": (256, 12544),
        "det_head.s0_headseries.0.class_logits.weight": (2, 256),
        "det_head.decoder.blocks.11.action_logits.weight": (80, 2048),
        "init_proposal_boxes.weight": (100, 4),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k


def test_vit_b_ktp_saved_in_official_layout_loads(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("vit_b_ktp")
    sd = official_state_dict(model)
    cfg = cfg_from_preset(model.preset)
    path = tmp_path / "vitb_ktp.pyth"
    torch.save({"model_state": sd, "cfg": cfg, "epoch": 29, "optimizer_state": {}}, path)
    del model
    loaded, meta = load_checkpoint(path)
    assert meta["preset"].name == "vit_b_ktp" and meta["preset_source"] == "cfg"
    assert meta["trained_keep_rates"] == {3: 0.7, 6: 0.7, 9: 0.7} and meta["epoch"] == 29
    got = loaded.state_dict()
    assert set(got) | {"criterion.empty_weight"} == official_vit_b_keys()
    for k in ("blocks.11.mlp.fc2.weight", "det_head.mask_token", "fpn_output5.bias"):
        assert torch.equal(got[k], sd[k])


def test_released_cfg_yaml_gives_the_preset() -> None:
    # the keys and values of ViT_B_16x4_KTP_EW.yaml (as merged by the official config code)
    cfg = {
        "ViT": {"EMBED_DIM": 768, "DEPTH": 12, "NUM_HEADS": 12, "FPN_INDICES": [2, 5, 8, 11],
                "PATCH_SIZE": 16, "TUBELET_SIZE": 2, "PRETRAIN_IMG_SIZE": 224, "MLP_RATIO": 4.0},
        "MODEL": {"NUM_CLASSES": 80,
                  "KTP": {"KEEP_RATES": [1, 1, 1, 0.6, 1, 1, 0.6, 1, 1, 0.6, 1, 1],
                          "ENHANCED_WEIGHT": 4},
                  "CRD": {"EMBED_DIM": 384, "DEPTH": 6, "NUM_HEADS": 6,
                          "ROI_EXTENSION": [0.4, 0.2]},
                  "SparseRCNN": {"NUM_PROPOSALS": 100, "NUM_HEADS": 6, "HIDDEN_DIM": 256,
                                 "DIM_DYNAMIC": 64, "NHEADS": 8, "PERSON_THRESHOLD": 0.7}},
        "DATA": {"NUM_FRAMES": 16, "SAMPLING_RATE": 4, "MEAN": [0.45] * 3, "STD": [0.225] * 3},
        "AVA": {"MIN_SIZE_TEST": 288, "MAX_SIZE_TEST": 1333},
    }
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert p == get_preset("vit_b_ktp_ew")
    # a python tuple tag (yacs dumps) and another class count (UCF101-24)
    cfg["MODEL"]["NUM_CLASSES"] = 24
    text = yaml.dump(cfg).replace("- 0.4\n      - 0.2", "!!python/tuple [0.4, 0.2]")
    p24 = preset_from_cfg(text)
    assert p24.num_classes == 24 and p24.name == "vit_b_ktp_ew" and p24.box_extend == (0.4, 0.2)
    cfg["MODEL"]["KTP"]["KEEP_RATES"] = [1] * 12
    cfg["MODEL"]["KTP"]["ENHANCED_WEIGHT"] = 1
    cfg["MODEL"]["CRD"]["ROI_EXTENSION"] = [0.0, 0.0]
    assert preset_from_cfg(yaml.safe_dump(cfg)).name == "vit_b"


def _tiny_file(tmp_path, **kw):
    torch.manual_seed(0)
    model = build_model("tiny", **kw).eval()
    return model, save_checkpoint(model, tmp_path / "tiny.pth", epoch=3)


def test_round_trip_and_outputs(tmp_path, clip_small) -> None:
    model, path = _tiny_file(tmp_path, num_classes=24)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pth"]  # no temporary left behind
    loaded, meta = load_checkpoint(path)
    assert meta["preset"] == model.preset and len(meta["sha256"]) == 64
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # random tiny weights give near-tied importance: two runs may break a tie differently (seen
    # in 1 of ~10 CI runs), so the loaded copy is forced to the same kept tokens
    with torch.no_grad():
        a = model(clip_small)
        b = loaded(clip_small, kept_indices=a.kept_indices)
    torch.testing.assert_close(a.action_logits, b.action_logits, rtol=1e-5, atol=1e-6)
    assert a.action_logits.shape[-1] == 24


@pytest.mark.parametrize("wrap", ["model", "module", "state_dict", "bare", "prefixed"])
def test_other_layouts(tmp_path, wrap: str) -> None:
    model, _ = _tiny_file(tmp_path)
    sd = official_state_dict(model)
    if wrap == "bare":
        blob = sd
    elif wrap == "prefixed":
        blob = {"model_state": {f"module.{k}": v for k, v in sd.items()}}
    else:
        blob = {wrap: sd}
    path = tmp_path / f"{wrap}.pth"
    torch.save(blob, path)
    loaded, meta = load_checkpoint(path)  # no cfg: the architecture is matched by shapes
    assert meta["preset_source"] == "shapes" and meta["preset"].name == "tiny"
    assert torch.equal(loaded.state_dict()["blocks.0.attn.qkv.weight"],
                       sd["blocks.0.attn.qkv.weight"])


def test_shapes_only_vit_b_warns_about_keep_rates(tmp_path) -> None:
    with torch.device("meta"):
        sd = official_state_dict(EVAD(get_preset("vit_b_ktp")))
    from evad.models.checkpoint import _preset_from_shapes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = _preset_from_shapes(sd)
    assert p.name == "vit_b_ktp" and "keep rates cannot be read" in str(caught[0].message)


def test_keep_rate_override(tmp_path, clip_small) -> None:
    _, path = _tiny_file(tmp_path)
    model, meta = load_checkpoint(path, keep_rate=0.6)
    assert meta["trained_keep_rates"] == {3: 0.7, 6: 0.7, 9: 0.7}
    assert meta["preset"].keep_rates == {3: 0.6, 6: 0.6, 9: 0.6}
    with torch.no_grad():
        out = model(clip_small)
    assert [k.shape[1] for k in out.kept_indices] == [288 - 60, 173 - 60, 104 - 60]
    with pytest.raises(Exception, match="keep rate"):
        load_checkpoint(path, keep_rate=1.5)


def test_missing_and_unexpected_keys_are_named(tmp_path) -> None:
    model, _ = _tiny_file(tmp_path)
    sd = official_state_dict(model)
    sd.pop("det_head.mask_token")
    sd["det_head.extra_head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model_state": sd, "cfg": cfg_from_preset(model.preset)}, path)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \[det_head.mask_token\], "
                                              r"1 unexpected key\(s\) \[det_head.extra_head"):
        load_checkpoint(path)


def test_wrong_shapes_are_named(tmp_path) -> None:
    model, _ = _tiny_file(tmp_path)
    sd = official_state_dict(model)
    sd["norm.weight"] = torch.zeros(7)
    path = tmp_path / "shape.pth"
    torch.save({"model_state": sd, "cfg": cfg_from_preset(model.preset)}, path)
    with pytest.raises(CheckpointError, match=r"norm.weight \(7,\) vs \(192,\)"):
        load_checkpoint(path)


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(text)
    _, good = _tiny_file(tmp_path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    other = tmp_path / "list.pth"
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(other)
    empty = tmp_path / "dict.pth"
    torch.save({"epoch": 1, "cfg": "a: 1"}, empty)
    with pytest.raises(CheckpointError, match="has no state dict"):
        load_checkpoint(empty)


_NON_DEFAULT = {"qk_scale": 0.1, "loc_activation": "gelu", "pooler_type": "ROIAlign",
                "softmax_pose": True, "num_eval_act_classes": 5, "decoder_mlp_ratio": 2.0,
                "pooler_resolution": 3, "action_pooler_resolution": 7, "action_pooler_stride": 8}


def test_key_set_unchanged_by_the_config_fields() -> None:
    """The config-driven fields change values and widths, never the released key names."""
    with torch.device("meta"):
        model = EVAD(get_preset("vit_b_ktp", **_NON_DEFAULT))
    assert set(official_state_dict(model)) == official_vit_b_keys()


@pytest.mark.parametrize(("section", "key", "value", "field"), [
    ("ViT", "QK_SCALE", 0.1, "qk_scale"), ("MODEL.SparseRCNN", "ACTIVATION", "gelu",
                                           "loc_activation"),
    ("MODEL.ROI_BOX_HEAD", "POOLER_TYPE", "ROIAlign", "pooler_type"),
    ("MODEL.SparseRCNN", "SOFTMAX_POSE", True, "softmax_pose"),
    ("MODEL.SparseRCNN", "NUM_EVAL_ACT_CLASSES", 5, "num_eval_act_classes"),
    ("MODEL.CRD", "MLP_RATIO", 2.0, "decoder_mlp_ratio"),
    ("MODEL.ROI_BOX_HEAD", "POOLER_RESOLUTION", 3, "pooler_resolution"),
    ("DETECTION", "ROI_XFORM_RESOLUTION", 3, "action_pooler_resolution"),
    ("DETECTION", "SPATIAL_SCALE_FACTOR", 8, "action_pooler_stride"),
])
def test_official_cfg_values_are_honoured(section, key, value, field) -> None:
    """Values the official model code runs, which this reference used to refuse, are read into
    the preset (tests/test_official_cfg.py checks what each one computes)."""
    cfg = yaml.safe_load(cfg_from_preset(get_preset("vit_b_ktp")))
    del cfg["DEPLOY"]  # as in a released file
    cfg.setdefault("DETECTION", {})["ROI_XFORM_RESOLUTION"] = 5  # != POOLER_RESOLUTION (7)
    node = cfg
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    p = preset_from_cfg(yaml.safe_dump(cfg))
    assert getattr(p, field) == value and p.name == "custom"
    if key != "ROI_XFORM_RESOLUTION":
        assert p.action_pooler_resolution == 5 and p.pooler_resolution == (
            3 if key == "POOLER_RESOLUTION" else 7)
    assert preset_from_cfg(cfg_from_preset(p)) == p
    node[key] = {"QK_SCALE": None, "ACTIVATION": "relu", "POOLER_TYPE": "ROIAlignV2",
                 "SOFTMAX_POSE": False, "NUM_EVAL_ACT_CLASSES": 0, "MLP_RATIO": 4.0,
                 "POOLER_RESOLUTION": 7, "ROI_XFORM_RESOLUTION": 7,
                 "SPATIAL_SCALE_FACTOR": 16}[key]
    cfg["DETECTION"]["ROI_XFORM_RESOLUTION"] = 7
    assert preset_from_cfg(yaml.safe_dump(cfg)).name == "vit_b_ktp"  # released values


@pytest.mark.parametrize(("section", "key", "value", "official"), [
    ("MODEL.SparseRCNN", "ACTIVATION", "glu", "'glu' halves DIM_FEEDFORWARD"),
    ("MODEL.ROI_BOX_HEAD", "POOLER_TYPE", "ROIAlignRotated", "'ROIAlignRotated' needs"),
    ("DETECTION", "SPATIAL_SCALE_FACTOR", 12, "asserts that the feature stride is a power"),
])
def test_values_the_official_code_cannot_run_are_refused(section, key, value, official) -> None:
    cfg = yaml.safe_load(cfg_from_preset(get_preset("vit_b_ktp")))
    node = cfg
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    with pytest.raises(CheckpointError, match=f"{key} = {value!r}; the official model cannot "
                                              f"run it: .*{official}"):
        preset_from_cfg(yaml.safe_dump(cfg))
