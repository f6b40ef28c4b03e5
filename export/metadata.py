"""What an export records about itself: the ``evad.*`` metadata keys an ONNX file carries
(preset, keep rates, labels, input size, normalisation, token counts, checkpoint hash), stored
and read back by ``evad.metadata``; and the preset an export was made with."""

from __future__ import annotations

from typing import Any

import evad
from evad.errors import BackendError, ConfigError
from evad.metadata import FORMAT_VERSION
from evad.models.flops import token_counts
from evad.models.labels import SYNTHETIC_PRESETS, label_names, trained_on
from evad.models.presets import Preset

__all__ = ["build_metadata", "preset_of"]


def build_metadata(preset: Preset, height: int, width: int, opset: int, *,
                   checkpoint_sha256: str | None = None, labels: list[str] | None = None,
                   precision: str = "fp32", exporter: str = "",
                   random_weights: bool = False) -> dict[str, Any]:
    """The metadata of an ONNX export of ``preset`` at ``height`` x ``width`` input pixels
    (``random_weights``: exported from a preset, not a checkpoint)."""
    counts = token_counts(preset, height, width)
    s = (height // preset.patch_size) * (width // preset.patch_size)
    kept = [counts[b + 1] for b in sorted(preset.keep_rates) if counts[b + 1] < counts[b]]
    return {
        "format_version": FORMAT_VERSION,
        "evad_deploy_version": evad.__version__,
        "preset_name": preset.name,
        "trained_on": trained_on(preset.name, preset.num_classes, random_weights),
        "synthetic_only": preset.name in SYNTHETIC_PRESETS and not random_weights,
        "preset": preset.to_dict(),
        "keep_rates": {str(b): r for b, r in sorted(preset.keep_rates.items())},
        "num_classes": preset.num_classes,
        "labels": labels or label_names(preset.num_classes, preset.labels),
        "input_size": [height, width],
        "num_frames": preset.num_frames,
        "frame_stride": preset.frame_stride,
        "mean": list(preset.mean),
        "std": list(preset.std),
        "short_side": preset.short_side,
        "max_long_side": preset.max_long_side,
        "person_threshold": preset.person_threshold,
        "tokens": [counts[0], *kept],
        "keyframe_tokens": s,
        "opset": opset,
        "exporter": exporter,
        "precision": precision,
        "checkpoint_sha256": checkpoint_sha256,
    }


def preset_of(meta: dict[str, Any]) -> Preset:
    """The Preset an export was made with.

    Raises:
        BackendError: the metadata has no preset, or one with missing or bad fields.
    """
    d = meta.get("preset")
    if not isinstance(d, dict):
        raise BackendError("the model's evad metadata has no preset: re-export it with "
                           "evad-export")
    try:
        return Preset.from_dict(d)
    except ConfigError as e:
        raise BackendError(f"the model's evad metadata has a bad preset ({e}); re-export it") \
            from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BackendError(f"the model's evad metadata has a malformed preset ({e}); re-export "
                           "it with evad-export") from e
