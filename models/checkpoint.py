"""Loading and saving EVAD checkpoints in the released layout.

Released files are ``torch.save`` dicts ``{"model_state": state_dict, "cfg": yaml_string, "epoch",
"optimizer_state", ...}``. The training config (``cfg``) is the source of the preset: keep rates,
widths, classes, each value read as the official code reads it (``evad.models.official_cfg``).
Where there is none, the architecture is matched from the tensor shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from evad.atomic import atomic_write
from evad.command import ArgumentParser, check_input_file, run_command
from evad.errors import CheckpointError, ConfigError
from evad.hashing import file_sha256
from evad.models.evad import EVAD
from evad.models.official_cfg import OFFICIAL_DEFAULTS, official_value
from evad.models.presets import LOC_ACTIVATIONS, POOLER_TYPES, PRESETS, Preset, get_preset

__all__ = [
    "WEIGHT_DTYPES",
    "cfg_from_preset",
    "check_weights",
    "convert_trusted",
    "load_checkpoint",
    "official_state_dict",
    "preset_from_cfg",
    "save_checkpoint",
]

# Keys the released files carry that inference does not use.
_TRAINING_ONLY = re.compile(r"^criterion\.")
_EMPTY_WEIGHT = torch.tensor([1.0, 0.1])  # the no-object weight of the released loss


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

# Configs this project wrote before these keys had fields of their own: the reference then tied
# each to another field, so a file of that time lacking the key keeps the tie.
_TIED_BEFORE = {"DETECTION.ROI_XFORM_RESOLUTION": "pooler_resolution",
                "DETECTION.SPATIAL_SCALE_FACTOR": "patch_size",
                "MODEL.CRD.MLP_RATIO": "mlp_ratio"}


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
    return loader.construct_scalar(node)


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
        for path, tied in _TIED_BEFORE.items():
            field_name = next(f for f, p, _, _ in _CFG_FIELDS if p == path)
            if not _has(cfg, path):
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


def official_state_dict(model: EVAD) -> dict[str, torch.Tensor]:
    """The model's state dict as the released files store it (with the loss's
    ``criterion.empty_weight`` buffer, which inference ignores)."""
    sd = dict(model.state_dict())
    sd["criterion.empty_weight"] = _EMPTY_WEIGHT.clone()
    return sd


def save_checkpoint(model: EVAD, path: str | os.PathLike, epoch: int = 0,
                    optimizer_state: dict | None = None, extra: dict | None = None,
                    half: bool = False) -> Path:
    """Write ``model`` in the released layout, atomically (temporary file, then rename).

    ``extra`` adds top-level entries (e.g. the trainer's step); ``half`` stores floating point
    weights as fp16 (half the file; ``load_checkpoint`` restores fp32)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = official_state_dict(model)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    blob = {
        "epoch": epoch,
        "model_state": state,
        "optimizer_state": optimizer_state or {},
        "cfg": cfg_from_preset(model.preset),
        "amp": None,
        **(extra or {}),
    }
    with atomic_write(path, "wb") as f:
        torch.save(blob, f)
    return path


_CONVERT = "python -m evad.models.checkpoint --convert-trusted {path} {out}"


def _read(path: Path, trusted: bool) -> Any:
    check_input_file(path, "checkpoint", error=CheckpointError)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # torch.load raises many types for bad files
        text = str(e)
        if "Unsupported global" in text:  # a pickle of objects, not a corrupt file
            out = path.with_name(path.stem + ".weights" + path.suffix)
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors; loading those "
                "runs code from the file (pickle can execute anything), so evad-deploy does not. "
                "If you trust where it came from, convert it once to a weights-only file: "
                + _CONVERT.format(path=path, out=out)) from e
        # torch's own text suggests weights_only=False, which is wrong advice for a file
        # that is corrupt or no checkpoint at all: keep only what the unpickler found
        found = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in \
            text else text
        reason = next((x.strip() for x in found.splitlines() if x.strip()), type(e).__name__)
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated, corrupt or not "
                              f"a PyTorch checkpoint ({reason[:200]})") from e


def convert_trusted(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite a TRUSTED checkpoint that holds pickled Python objects as one that the safe
    loader reads: tensors, numbers, strings, lists and dicts only (other objects become their
    ``str``). Loading ``src`` runs any code it holds: only for files you trust.

    Returns:
        ``dst``, written atomically.
    """
    obj = _read(Path(src), trusted=True)

    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.detach().clone()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)

    dst = Path(dst)
    with atomic_write(dst, "wb") as f:
        torch.save(plain(obj), f)
    return dst


#: the weight dtypes a checkpoint may store (fp32 training, fp16 / bf16 copies); loaded as fp32
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_weights(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  path: Path) -> str:
    """Refuse weights that cannot be the model's: a floating tensor stored as an integer or in
    an unexpected dtype, or with NaN / inf values (the key is named).

    Returns:
        the dtype(s) the floating weights were stored in (``float16``).
    """
    stored = set()
    for k, ref in expected.items():
        v = sd[k]
        if ref.is_floating_point():
            if v.dtype not in WEIGHT_DTYPES:
                raise CheckpointError(
                    f"{path}: weight {k!r} is stored as {str(v.dtype).removeprefix('torch.')}; "
                    "EVAD's weights are float32, float16 or bfloat16 (an integer weight is a "
                    "corrupt or quantized file)")
            stored.add(str(v.dtype).removeprefix("torch."))
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CheckpointError(f"{path}: weight {k!r} has {bad} of {v.numel()} values "
                                      "that are NaN or infinite: the training diverged or the "
                                      "file is corrupt")
        elif v.dtype != ref.dtype:
            raise CheckpointError(f"{path}: buffer {k!r} is {v.dtype}, the model's is "
                                  f"{ref.dtype}")
    return "+".join(sorted(stored)) or "none"


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    for key in ("model_state", "model", "module", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            sd, extra = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd, extra = obj, {}
        else:
            raise CheckpointError(
                f"{path} has no state dict: expected a 'model_state', 'model', 'module' or "
                f"'state_dict' entry or a bare state dict; found keys {sorted(obj)[:8]}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: state dict entry {k!r} is a {type(v).__name__}, "
                                  "not a tensor")
        k = k[len("module."):] if k.startswith("module.") else k
        if not _TRAINING_ONLY.match(k):
            out[k] = v
    return out, extra


def _preset_from_shapes(sd: Mapping[str, torch.Tensor]) -> Preset:
    """Match the architecture by tensor shapes (keep rates cannot be read from weights)."""
    try:
        classes = int(sd["det_head.decoder.blocks.0.action_logits.weight"].shape[0])
    except KeyError:
        raise CheckpointError("the state dict has no det_head.decoder.blocks.0.action_logits: "
                              "it is not an EVAD checkpoint") from None
    shapes = {k: tuple(v.shape) for k, v in sd.items() if not _TRAINING_ONLY.match(k)}
    # the pruning (KTP) variants first: their shapes equal the plain ViTs'
    order = ["vit_b_ktp", "vit_l_ktp"] + [n for n in PRESETS if n not in ("vit_b_ktp",
                                                                         "vit_l_ktp")]
    for name in order:
        p = get_preset(name, num_classes=classes)
        with torch.device("meta"):
            ref = EVAD(p).state_dict()
        if {k: tuple(v.shape) for k, v in ref.items()} == shapes:
            if name == "vit_b_ktp":
                warnings.warn("checkpoint has no cfg: architecture matched ViT-B by shapes; keep "
                              "rates cannot be read from weights, so vit_b_ktp's (0.7 at blocks "
                              "3, 6, 9) are assumed. Pass preset= or keep_rate= to choose.",
                              stacklevel=3)
            return p
    raise CheckpointError("the checkpoint has no cfg and its shapes match no known preset "
                          f"({', '.join(PRESETS)}); pass preset= with the right sizes")


def load_checkpoint(
    path: str | os.PathLike,
    keep_rate: float | None = None,
    preset: str | Preset | None = None,
    trusted: bool = False,
) -> tuple[EVAD, dict]:
    """Load an EVAD checkpoint (released layout, or a bare / wrapped state dict), eval mode.

    Args:
        path: the ``.pth`` / ``.pyth`` file.
        keep_rate: override the trained keep rate of every pruning block (the paper runs a
            0.7-trained model at 0.6 .. 0.9 without retraining); 1.0 disables pruning.
        preset: force the architecture instead of reading it from ``cfg`` or the shapes.
        trusted: allow arbitrary pickled objects (``torch.load(weights_only=False)``).

    Returns:
        (model, meta) where meta holds ``preset`` (Preset), ``preset_source`` ("argument", "cfg"
        or "shapes"), ``trained_keep_rates``, ``epoch``, ``sha256``, ``path`` and ``dtype`` (what
        the weights were stored as; the model is float32).

    Raises:
        CheckpointError: unreadable file, pickled objects (unless ``trusted``), no state dict,
            missing or unexpected keys (listed), tensors whose shapes do not fit the preset,
            integer or non-finite weights, or a config with wrong types or sizes.
    """
    path = Path(path)
    sd, extra = _extract_state_dict(_read(path, trusted), path)
    # a config is read even when the preset is forced: a broken one means a broken file
    from_cfg = preset_from_cfg(extra["cfg"]) if extra.get("cfg") is not None else None
    if preset is not None:
        p, source = (get_preset(preset) if isinstance(preset, str) else preset), "argument"
    elif from_cfg is not None:
        p, source = from_cfg, "cfg"
    else:
        p, source = _preset_from_shapes(sd), "shapes"
    trained = dict(p.keep_rates)
    if keep_rate is not None:
        p = p.replace(keep_rate=keep_rate)
    model = EVAD(p)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        raise CheckpointError(
            f"{path} does not match preset {p.name!r} ({source}): "
            f"{len(missing)} missing key(s) [{show(missing)}], "
            f"{len(unexpected)} unexpected key(s) [{show(unexpected)}]")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) have shapes that do not fit preset "
                              f"{p.name!r} ({source}): {'; '.join(wrong[:4])}")
    dtype = check_weights(sd, expected, path)
    model.load_state_dict(sd, strict=True)
    model.eval()
    meta = {"preset": p, "preset_source": source, "trained_keep_rates": trained,
            "epoch": extra.get("epoch"), "sha256": file_sha256(path), "path": str(path),
            "dtype": dtype}
    return model, meta


def main(argv: list[str] | None = None) -> int:
    """``python -m evad.models.checkpoint --convert-trusted SRC DST``."""
    ap = ArgumentParser(prog="python -m evad.models.checkpoint", description="Convert a "
                        "TRUSTED checkpoint that holds pickled Python objects into a weights-only "
                        "file that evad-deploy loads safely. Loading SRC runs any code it holds.")
    ap.add_argument("--convert-trusted", nargs=2, metavar=("SRC", "DST"), type=Path,
                    required=True)
    args: argparse.Namespace = ap.parse_args(argv)

    def body() -> int:
        src, dst = args.convert_trusted
        out = convert_trusted(src, dst)
        model, meta = load_checkpoint(out)
        print(f"wrote {out}: preset {meta['preset'].name} ({meta['preset_source']}), weights "
              f"{meta['dtype']}; it loads without trusted=True")
        return 0

    return run_command(ap.prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
