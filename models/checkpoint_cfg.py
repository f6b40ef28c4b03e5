"""The released training config (``cfg``, YAML) <-> a :class:`~evad.models.presets.Preset`.

A released checkpoint carries the config it was trained with; its keys (``ViT.EMBED_DIM``,
``MODEL.KTP.KEEP_RATES``, ...) describe the architecture. One table (``_CFG_FIELDS``) maps each
preset field to its key, both ways: :func:`preset_from_cfg` reads a config into a preset, each
value first read as the official code reads it (``evad.models.official_cfg``: literals decoded,
types checked) and then refused, with the key and the reason, where the official model cannot
run it or this reference does not build it; :func:`cfg_from_preset` writes the config a saved
checkpoint carries. The checkpoint file itself (read, check, save) is ``evad.models.checkpoint``.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import yaml

from evad.errors import CheckpointError, ConfigError
from evad.models.official_cfg import OFFICIAL_DEFAULTS, official_value
from evad.models.presets import (
    LOC_ACTIVATIONS,
    POOLER_TYPES,
    PRESETS,
    TIED_BEFORE,
    Preset,
)

__all__ = ["cfg_from_preset", "preset_from_cfg"]


# Converters from a config value (already as the official code holds it: official_cfg) to a
# preset field. Each refuses a value of the right type that still cannot be the field (a float
# that is no whole number, a list holding words); counts and ranges are Preset.validate's.
def _integer(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
            v != int(v)):
        raise ValueError("not a whole number")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("not a number")
    return float(v)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not a string")
    return v


def _truth(v: Any) -> bool:
    # the official code tests truth, but its config merge lets only a bool replace the default
    if not isinstance(v, bool):
        raise ValueError("not True or False")
    return v


def _numbers(v: Any) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError("not a list")
    return tuple(_float(x) for x in v)


def _indices(v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError("not a list")
    return tuple(_integer(x) for x in v)


def _names(v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError("not a list")
    return tuple(_text(x) for x in v)


def _qk_scale(v: Any) -> float | None:
    # the official Attention takes `qk_scale or head_dim ** -0.5`: null and 0 both mean the default
    return _float(v) if v else None


def _top_k(v: Any) -> int:
    # the official test step runs only `if NUM_EVAL_ACT_CLASSES > 0`: a negative count keeps all
    return max(_integer(v), 0)


_INT, _NUM = "an integer", "a number"
# One table both ways: preset field <-> key path in the released training config, with the
# converter and what the field must be (for the message that refuses a value).
_CFG_FIELDS: list[tuple[str, str, Callable[[Any], Any], str]] = [
    ("embed_dim", "ViT.EMBED_DIM", _integer, _INT),
    ("depth", "ViT.DEPTH", _integer, _INT),
    ("num_heads", "ViT.NUM_HEADS", _integer, _INT),
    ("mlp_ratio", "ViT.MLP_RATIO", _float, _NUM),
    ("qk_scale", "ViT.QK_SCALE", _qk_scale, "null or a number"),
    ("patch_size", "ViT.PATCH_SIZE", _integer, _INT),
    ("tubelet_size", "ViT.TUBELET_SIZE", _integer, _INT),
    ("fpn_taps", "ViT.FPN_INDICES", _indices, "4 block indices"),
    ("keyframe_weight", "MODEL.KTP.ENHANCED_WEIGHT", _float, _NUM),
    ("decoder_dim", "MODEL.CRD.EMBED_DIM", _integer, _INT),
    ("decoder_depth", "MODEL.CRD.DEPTH", _integer, _INT),
    ("decoder_heads", "MODEL.CRD.NUM_HEADS", _integer, _INT),
    ("decoder_mlp_ratio", "MODEL.CRD.MLP_RATIO", _float, _NUM),
    ("box_extend", "MODEL.CRD.ROI_EXTENSION", _numbers, "2 finite numbers >= 0"),
    ("num_classes", "MODEL.NUM_CLASSES", _integer, _INT),
    # this project's key: class names beside AVA's (not in the official config)
    ("labels", "DEPLOY.LABELS", _names, "a list of class names"),
    ("num_proposals", "MODEL.SparseRCNN.NUM_PROPOSALS", _integer, _INT),
    ("loc_stages", "MODEL.SparseRCNN.NUM_HEADS", _integer, _INT),
    ("fpn_dim", "MODEL.SparseRCNN.HIDDEN_DIM", _integer, _INT),
    ("dynamic_dim", "MODEL.SparseRCNN.DIM_DYNAMIC", _integer, _INT),
    ("loc_heads", "MODEL.SparseRCNN.NHEADS", _integer, _INT),
    ("loc_ffn_dim", "MODEL.SparseRCNN.DIM_FEEDFORWARD", _integer, _INT),
    ("loc_activation", "MODEL.SparseRCNN.ACTIVATION", _text, "a string"),
    ("num_cls_layers", "MODEL.SparseRCNN.NUM_CLS", _integer, _INT),
    ("num_reg_layers", "MODEL.SparseRCNN.NUM_REG", _integer, _INT),
    ("action_hidden", "MODEL.SparseRCNN.ACT_FC_DIM", _integer, _INT),
    ("person_threshold", "MODEL.SparseRCNN.PERSON_THRESHOLD", _float, _NUM),
    ("softmax_pose", "MODEL.SparseRCNN.SOFTMAX_POSE", _truth, "True or False"),
    ("num_eval_act_classes", "MODEL.SparseRCNN.NUM_EVAL_ACT_CLASSES", _top_k, _INT),
    ("pooler_resolution", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", _integer, _INT),
    ("pooler_sampling_ratio", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", _integer, _INT),
    ("pooler_type", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", _text, "a string"),
    ("action_pooler_resolution", "DETECTION.ROI_XFORM_RESOLUTION", _integer, _INT),
    ("action_pooler_stride", "DETECTION.SPATIAL_SCALE_FACTOR", _integer, _INT),
    ("short_side", "AVA.MIN_SIZE_TEST", _integer, _INT),
    ("max_long_side", "AVA.MAX_SIZE_TEST", _integer, _INT),
    ("mean", "DATA.MEAN", _numbers, "3 finite numbers >= 0"),
    ("std", "DATA.STD", _numbers, "3 finite numbers > 0"),
    ("num_frames", "DATA.NUM_FRAMES", _integer, _INT),
    ("frame_stride", "DATA.SAMPLING_RATE", _integer, _INT),
]
_KEEP_RATES = "MODEL.KTP.KEEP_RATES"
_PRETRAIN_SIZE = "ViT.PRETRAIN_IMG_SIZE"
_PRESET_NAME = "DEPLOY.PRESET"  # written by this project only; absent from released files


def _power_of_two(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f >= 1 and f == int(f) and not int(f) & (int(f) - 1)


def _number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


# Released-config values the official model code itself cannot run, checked on the raw values
# so that each refusal names the official behaviour it stands for. Every other value of a key in
# _CFG_FIELDS is honoured (Preset.validate refuses, with the reason, the few the official code
# runs but this reference does not, e.g. adaptive RoIAlign sampling). Keys in neither table
# either leave the inference model alone (schedules, losses, augmentation, ...: ignored) or change
# its parameters (QKV_BIAS, NUM_ACT, learnable positions, ...), which the key/shape checks catch.
_REFUSED: list[tuple[str, Callable[[Any], bool], str]] = [
    ("ViT.QK_SCALE", lambda v: v is None or _number(v),
     "the official Attention multiplies q by it (vit_model.py), so it must be null or a number"),
    ("MODEL.SparseRCNN.ACTIVATION", lambda v: v in LOC_ACTIVATIONS,
     "the official RCNNHead runs 'relu' or 'gelu' only: its 'glu' halves DIM_FEEDFORWARD, which "
     "linear2 cannot take, and other names raise in _get_activation_fn (head_helper.py)"),
    ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", lambda v: v in POOLER_TYPES,
     "detectron2's ROIPooler runs 'ROIAlignV2', 'ROIAlign' or 'ROIPool' on EVAD's axis-aligned "
     "boxes; 'ROIAlignRotated' needs (R, 6) rotated boxes and other names raise ValueError"),
    ("DETECTION.SPATIAL_SCALE_FACTOR", _power_of_two,
     "the official actor pooler is a detectron2 ROIPooler with scale 1 / SPATIAL_SCALE_FACTOR, "
     "which asserts that the feature stride is a power of two (>= 1)"),
    ("DETECTION.ROI_XFORM_RESOLUTION", lambda v: _number(v) and float(v) == int(float(v)) >= 1,
     "detectron2's ROIPooler asserts an integer output size"),
]


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads ``!!python/tuple`` and other python tags as plain lists/maps."""


def _plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(cast(yaml.ScalarNode, node))  # yaml's third kind of node


_TolerantLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


def _get(cfg: Mapping, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _has(cfg: Mapping, path: str) -> bool:
    *parents, leaf = path.split(".")
    node = _get(cfg, ".".join(parents)) if parents else cfg
    return isinstance(node, Mapping) and leaf in node


def _set(cfg: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        cfg = cfg.setdefault(part, {})
    cfg[leaf] = value


def _plain_copy(node: Any) -> Any:
    """``node`` with every mapping copied into a dict (the caller's config stays untouched)."""
    if isinstance(node, Mapping):
        return {k: _plain_copy(v) for k, v in node.items()}
    return node


# What each key read into the preset must be, for the message that refuses its value.
_WANT = {path: f"{name} must be {want}" for name, path, _, want in _CFG_FIELDS} | {
    _KEEP_RATES: "keep_rates must be a list of numbers, one per encoder block",
    _PRETRAIN_SIZE: "the pre-training image size must be an integer"}
# The config key of each preset field, to name in a refusal from Preset.validate.
_FIELD_KEYS = {name: path for name, path, _, _ in _CFG_FIELDS} | {"pretrain_grid": _PRETRAIN_SIZE}


def _as_official(cfg: Mapping) -> dict:
    """A copy of ``cfg`` in which each key of ``OFFICIAL_DEFAULTS`` holds its value as the
    official code reads it from the file (``official_value``: literals decoded, types checked
    against the official default's)."""
    out = _plain_copy(cfg)
    for path in OFFICIAL_DEFAULTS:
        *parents, leaf = path.split(".")
        node: Any = out
        for i, part in enumerate(parents):
            if part not in node:
                node = None
                break
            if not isinstance(node[part], Mapping):
                section = ".".join(parents[:i + 1])
                raise CheckpointError(f"the checkpoint's cfg has {section} = {node[part]!r}, "
                                      f"where the official config has a section of keys "
                                      f"({path} among them)")
            node = node[part]
        if node is None or leaf not in node:
            continue
        try:
            node[leaf] = official_value(path, node[leaf])
        except ValueError as e:
            raise CheckpointError(f"the checkpoint's cfg has a value of the wrong type: {e}; "
                                  f"{_WANT[path]}") from e
    return out


def _converted(path: str, value: Any, conv: Callable[[Any], Any]) -> Any:
    try:
        return conv(value)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's cfg has a value of the wrong type: {path} = "
                              f"{value!r} ({e}); {_WANT[path]}") from e


def preset_from_cfg(cfg: str | Mapping, base: Preset | None = None) -> Preset:
    """The preset a released training config describes (keys missing from it keep ``base``'s or
    the vit_b_ktp values).

    Each value is first read as the official code reads it when it merges the file into its
    defaults (``evad.models.official_cfg``): ``ROI_EXTENSION: (0.4, 0.2)``, which YAML reads as
    text, is the tuple (0.4, 0.2); ``'8'`` is 8; a type the official default does not allow is
    refused.

    Raises:
        CheckpointError: the config is not YAML, has values of the wrong type, or values the
            official model cannot run or this reference does not build (the message names the
            key and says why).
    """
    if isinstance(cfg, str):
        try:
            cfg = yaml.load(cfg, Loader=_TolerantLoader) or {}
        except yaml.YAMLError as e:
            raise CheckpointError(f"the checkpoint's cfg is not valid YAML ({e})") from e
    if not isinstance(cfg, Mapping):
        raise CheckpointError("the checkpoint's cfg is not a mapping of config keys")
    cfg = _as_official(cfg)
    for path, accepted, why in _REFUSED:
        if _has(cfg, path) and not accepted(_get(cfg, path)):
            raise CheckpointError(f"the checkpoint was trained with {path} = {_get(cfg, path)!r}; "
                                  f"the official model cannot run it: {why}")
    fields: dict[str, Any] = {}
    for name, path, conv, _ in _CFG_FIELDS:
        value = _get(cfg, path)
        # an official key's null was refused or is its value (QK_SCALE); this project's own
        # keys read null as missing
        if _has(cfg, path) and (value is not None or path in OFFICIAL_DEFAULTS):
            fields[name] = _converted(path, value, conv)
    if _get(cfg, _KEEP_RATES) is not None:
        rates = _converted(_KEEP_RATES, _get(cfg, _KEEP_RATES), _numbers)
        fields["keep_rates"] = {i: r for i, r in enumerate(rates) if r < 1.0}
    if _get(cfg, _PRETRAIN_SIZE) is not None:
        size = _converted(_PRETRAIN_SIZE, _get(cfg, _PRETRAIN_SIZE), _integer)
        base_p = base or PRESETS["vit_b_ktp"]
        tubelet = fields.get("tubelet_size", base_p.tubelet_size)
        patch = fields.get("patch_size", base_p.patch_size)
        if tubelet > 0 and patch > 0:  # else Preset.validate refuses the size itself
            g = size // patch
            fields["pretrain_grid"] = (fields.get("num_frames", base_p.num_frames) // tubelet,
                                       g, g)
    name = _get(cfg, _PRESET_NAME)
    start = base or (PRESETS[name] if isinstance(name, str) and name in PRESETS
                     else PRESETS["vit_b_ktp"])
    if _has(cfg, _PRESET_NAME):
        # configs this project wrote before these keys had fields of their own: the reference
        # then tied each to another field, so a file of that time lacking the key keeps the tie
        for field_name, tied in TIED_BEFORE.items():
            if not _has(cfg, _FIELD_KEYS[field_name]):
                fields[field_name] = fields.get(tied, getattr(start, tied))
    try:
        preset = start.replace(**fields)
    except ConfigError as e:
        text = str(e)
        keys = [_FIELD_KEYS[f] for f in fields if f in _FIELD_KEYS
                and re.search(rf"\b{f}\b", text)]
        if "keep_rates" in fields and re.search(r"keep rate|pruning block", text):
            keys.append(_KEEP_RATES)
        named = f" ({', '.join(keys)})" if keys else ""
        raise CheckpointError(f"the checkpoint's cfg describes a model this reference cannot "
                              f"build{named}: {e}") from e
    return preset.replace(name=name if isinstance(name, str) else _closest_name(preset))


def _closest_name(p: Preset) -> str:
    """The released preset these fields describe (ignoring the class count), else "custom"."""
    for name, known in PRESETS.items():
        # unvalidated: p's top-k count may exceed the other preset's class count
        if dataclasses.replace(p, name=name, num_classes=known.num_classes) == known:
            return name
    return "custom"


def cfg_from_preset(p: Preset) -> str:
    """A config YAML (released key names) that ``preset_from_cfg`` reads back to ``p``."""
    cfg: dict = {}
    for name, path, _, _ in _CFG_FIELDS:
        value = getattr(p, name)
        _set(cfg, path, list(value) if isinstance(value, tuple) else value)
    _set(cfg, _KEEP_RATES, [float(p.keep_rates.get(i, 1.0)) for i in range(p.depth)])
    _set(cfg, _PRETRAIN_SIZE, p.pretrain_grid[1] * p.patch_size)
    _set(cfg, _PRESET_NAME, p.name)
    return yaml.safe_dump(cfg, sort_keys=True)
