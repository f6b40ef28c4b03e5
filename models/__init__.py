"""evad.models: the torch reference EVAD, the single source of truth for the maths.

Presets, the detector (``EVAD``, ``build_model``), the two custom ops as torch functions
(``keyframe_topk_prune``, ``roi_align_3d``), checkpoint loading and analytic FLOP counts.
"""

from evad.models.checkpoint import load_checkpoint, official_state_dict, save_checkpoint
from evad.models.evad import EVAD, EVADOutput, build_model
from evad.models.flops import flops
from evad.models.keyframe_topk_prune import keep_fraction, keyframe_topk_prune, pruned_count
from evad.models.presets import PRESETS, Preset, get_preset
from evad.models.roi_align_3d import roi_align_3d

__all__ = [
    "EVAD",
    "PRESETS",
    "EVADOutput",
    "Preset",
    "build_model",
    "flops",
    "get_preset",
    "keep_fraction",
    "keyframe_topk_prune",
    "load_checkpoint",
    "official_state_dict",
    "pruned_count",
    "roi_align_3d",
    "save_checkpoint",
]
