"""What an export records about itself: the ``evad.*`` metadata keys an ONNX file carries
(preset, keep rates, labels, input size, normalisation, token counts, checkpoint hash), stored
and read back by ``evad.metadata``; and the preset an export was made with."""

from __future__ import annotations

from typing import Any

import evad
from evad.errors import BackendError, ConfigError
from evad.metadata import FORMAT_VERSION
from evad.models.flops import token_counts
from evad.models.labels import synthetic_only, trained_on
from evad.models.presets import Preset, preset_metadata

__all__ = ["PROVENANCE_KEYS", "build_metadata", "int8_metadata", "preset_of"]

#: the keys that say where an export came from, not what it is: the tool that made it (command
#: and torch version) and the weights (a checkpoint's SHA-256, or the seed of a preset's random
#: weights). Two exports of the same weights, preset, input size, opset and precision differ in
#: these keys at most, whichever command made them (tests/test_export_entry.py).
PROVENANCE_KEYS = ("exporter", "checkpoint_sha256", "random_seed")


def build_metadata(preset: Preset, height: int, width: int, opset: int, *,
                   checkpoint_sha256: str | None = None, labels: list[str] | None = None,
                   precision: str = "fp32", exporter: str = "",
                   random_weights: bool = False,
                   random_seed: int | None = None) -> dict[str, Any]:
    """The metadata of an ONNX export of ``preset`` at ``height`` x ``width`` input pixels.

    ``random_weights``: exported from a preset, not a checkpoint; ``random_seed``: the seed of
    those weights (``evad.models.load_or_build``), recorded so that ``evad-parity`` can rebuild
    them (the key is left out when None). ``precision`` is the one asked of the engine step.
    """
    counts = token_counts(preset, height, width)
    s = (height // preset.patch_size) * (width // preset.patch_size)
    kept = [counts[b + 1] for b in sorted(preset.keep_rates) if counts[b + 1] < counts[b]]
    return {
        "format_version": FORMAT_VERSION,
        "evad_deploy_version": evad.__version__,
        **preset_metadata(preset, labels),
        "trained_on": trained_on(preset.name, preset.num_classes, random_weights),
        "synthetic_only": synthetic_only(preset.name, random_weights),
        "keep_rates": {str(b): r for b, r in sorted(preset.keep_rates.items())},
        "input_size": [height, width],
        "tokens": [counts[0], *kept],
        "keyframe_tokens": s,
        "opset": opset,
        "exporter": exporter,
        "precision": precision,
        "checkpoint_sha256": checkpoint_sha256,
        **({} if random_seed is None else {"random_seed": random_seed}),
    }


def int8_metadata(meta: dict[str, Any], quantization: dict[str, Any]) -> dict[str, Any]:
    """The metadata of the INT8 Q/DQ ONNX made from an fp32 export with metadata ``meta``: the
    same keys, ``precision`` int8 (what runners read: the file is int8), and ``quantization``
    (``evad.export.int8.quantize``'s record: method, calibration data, clip count and SHA-256,
    the nodes kept in float)."""
    return {**meta, "precision": "int8", "quantization": quantization}


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
