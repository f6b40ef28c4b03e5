"""A training config's values as the official EVAD code holds them after reading its YAML file.

The official code (MCG-NJU/EVAD) builds its config from defaults (``slowfast/config/defaults.py``
plus ``add_evad_config`` in ``projects/evad/models/config.py``) and merges the YAML file into
them with yacs (``merge_from_file`` through fvcore's ``CfgNode``). That merge does two things
to each value, which plain YAML reading does not:

1. A string that is a Python literal becomes that literal: the released files write
   ``ROI_EXTENSION: (0.4, 0.2)``, which YAML reads as the text ``"(0.4, 0.2)"`` and the merge
   as the tuple ``(0.4, 0.2)``; ``'768'`` becomes 768 and ``'True'`` True. A string that is
   no literal (``relu``, a path) stays a string.
2. The value must have the type of the default it replaces, except that a list may replace a
   tuple and a tuple a list (the value takes the default's kind), and a null default takes
   any value.

This module does both for the keys the checkpoint loader reads (``OFFICIAL_DEFAULTS``), with
two differences, both towards what the official *model* code can run rather than what its
config merge lets through:

- An integer where the default is a float, or a float where it is an integer, is kept (yacs
  refuses ``MLP_RATIO: 4.0`` against the default 4, but the model computes the same with
  either, this project's own files write such floats, and a fine-tune's code may have changed
  the default's kind). Whether it must be a whole number is the loader's check.
- Null for a key whose default is not null is refused: yacs lets it through, and the model
  code then fails on it.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["OFFICIAL_DEFAULTS", "decode_value", "official_value"]

# The official default of every config key the checkpoint loader reads (MCG-NJU/EVAD,
# slowfast/config/defaults.py and projects/evad/models/config.py): only its type is used here.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "ViT.EMBED_DIM": 768,
    "ViT.DEPTH": 12,
    "ViT.NUM_HEADS": 12,
    "ViT.MLP_RATIO": 4,
    "ViT.QK_SCALE": None,
    "ViT.PATCH_SIZE": 16,
    "ViT.TUBELET_SIZE": 2,
    "ViT.FPN_INDICES": [2, 5, 8, 11],
    "ViT.PRETRAIN_IMG_SIZE": 224,
    "MODEL.NUM_CLASSES": 400,
    "MODEL.KTP.KEEP_RATES": [1] * 12,
    "MODEL.KTP.ENHANCED_WEIGHT": 1,
    "MODEL.CRD.EMBED_DIM": 384,
    "MODEL.CRD.DEPTH": 6,
    "MODEL.CRD.NUM_HEADS": 6,
    "MODEL.CRD.MLP_RATIO": 4,
    "MODEL.CRD.ROI_EXTENSION": (0.0, 0.0),
    "MODEL.SparseRCNN.NUM_PROPOSALS": 100,
    "MODEL.SparseRCNN.NUM_HEADS": 6,
    "MODEL.SparseRCNN.HIDDEN_DIM": 256,
    "MODEL.SparseRCNN.DIM_DYNAMIC": 64,
    "MODEL.SparseRCNN.NHEADS": 8,
    "MODEL.SparseRCNN.DIM_FEEDFORWARD": 2048,
    "MODEL.SparseRCNN.ACTIVATION": "relu",
    "MODEL.SparseRCNN.NUM_CLS": 1,
    "MODEL.SparseRCNN.NUM_REG": 3,
    "MODEL.SparseRCNN.ACT_FC_DIM": 2048,
    "MODEL.SparseRCNN.PERSON_THRESHOLD": 0.7,
    "MODEL.SparseRCNN.SOFTMAX_POSE": False,
    "MODEL.SparseRCNN.NUM_EVAL_ACT_CLASSES": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "DETECTION.ROI_XFORM_RESOLUTION": 7,
    "DETECTION.SPATIAL_SCALE_FACTOR": 16,
    "AVA.MIN_SIZE_TEST": 800,
    "AVA.MAX_SIZE_TEST": 1333,
    "DATA.MEAN": [0.45, 0.45, 0.45],
    "DATA.STD": [0.225, 0.225, 0.225],
    "DATA.NUM_FRAMES": 8,
    "DATA.SAMPLING_RATE": 8,
}

# The leaf types a yacs config may hold at all (a null default takes any of these).
_LEAF_TYPES = (tuple, list, str, int, float, bool, type(None))


def decode_value(value: Any) -> Any:
    """``value`` with a string that is a Python literal replaced by the literal, as the official
    config merge reads it (``"(0.4, 0.2)"`` -> ``(0.4, 0.2)``, ``"8"`` -> 8, ``"relu"`` stays).
    Only a string is decoded, not the items of a list."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        # not a literal (a word, a path, a broken tuple): yacs keeps the text
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def official_value(key: str, value: Any) -> Any:
    """``value`` of config key ``key`` (one of ``OFFICIAL_DEFAULTS``) as the official code holds
    it after merging the file: decoded (``decode_value``) and of its default's type.

    Raises:
        KeyError: ``key`` is not in ``OFFICIAL_DEFAULTS``.
        ValueError: a type the merge refuses, or null where the model needs a value; the
            message names the key, the value and the default.
    """
    default = OFFICIAL_DEFAULTS[key]
    decoded = decode_value(value)
    shown = f"{key} = {value!r}" + (f" (read as {decoded!r})" if decoded is not value else "")
    if default is None:
        if not isinstance(decoded, _LEAF_TYPES):
            raise ValueError(f"{shown} is {_kind(decoded)}, which no official config key holds")
        return decoded
    if decoded is None:
        raise ValueError(f"{shown} is null; the official model needs {_kind(default)} there "
                         f"(default {default!r})")
    if type(decoded) is type(default):
        return decoded
    if isinstance(decoded, (list, tuple)) and isinstance(default, (list, tuple)):
        return type(default)(decoded)
    if _is_number(decoded) and _is_number(default):
        return decoded
    raise ValueError(f"{shown} is {_kind(decoded)} where the official config has "
                     f"{_kind(default)} (default {default!r})")
