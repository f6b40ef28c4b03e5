"""evad.models: the torch reference EVAD, the single source of truth for the maths.

Presets, the detector (``EVAD``, ``build_model``), the two custom ops as torch functions
(``keyframe_topk_prune``, ``roi_align_3d``), checkpoint loading (``load_or_build``: a checkpoint
or a preset's random calmed weights, for every command that takes either), analytic FLOP
counts and the torch :class:`~evad.runner.Runner` (``TorchRunner``).

Names load on first use (PEP 562), so the torch-free modules of this stage (``presets``,
``labels``, ``demo``) import without torch. Functions named like their module
(``flops``, ``keyframe_topk_prune``, ``roi_align_3d``) are imported from that module
(``from evad.models.flops import flops``): ``from evad.models import flops`` is the module.
"""

from evad.lazy import lazy_exports

_WHERE = {
    "load_checkpoint": "checkpoint", "load_or_build": "checkpoint",
    "official_state_dict": "checkpoint",
    "save_checkpoint": "checkpoint", "EVAD": "evad", "EVADOutput": "evad",
    "build_model": "evad", "keep_fraction": "keyframe_topk_prune",
    "pruned_count": "keyframe_topk_prune", "PRESETS": "presets", "Preset": "presets",
    "get_preset": "presets", "TorchRunner": "runner",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
