"""Artefact metadata: what an exported model was made from, read back by every later stage.

Stored as ONNX ``metadata_props`` under ``evad.<key>``, each value JSON-encoded, so Netron and
``onnx`` show them as plain key/value pairs and ``read_metadata`` restores the types.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

import evad
from evad.errors import EvadError

if TYPE_CHECKING:
    from evad.models.presets import Preset

__all__ = ["FORMAT_VERSION", "build_metadata", "preset_of", "read_metadata", "write_metadata"]

FORMAT_VERSION = 1
_PREFIX = "evad."


def build_metadata(preset: Preset, height: int, width: int, opset: int, *,
                   checkpoint_sha256: str | None = None, labels: list[str] | None = None,
                   precision: str = "fp32", exporter: str = "") -> dict[str, Any]:
    """The metadata of an ONNX export of ``preset`` at ``height`` x ``width`` input pixels."""
    from evad.models.flops import token_counts
    from evad.models.labels import label_names

    counts = token_counts(preset, height, width)
    s = (height // preset.patch_size) * (width // preset.patch_size)
    kept = [counts[b + 1] for b in sorted(preset.keep_rates) if counts[b + 1] < counts[b]]
    return {
        "format_version": FORMAT_VERSION,
        "evad_deploy_version": evad.__version__,
        "preset_name": preset.name,
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


def write_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Replace the model's ``evad.*`` metadata_props with ``meta``."""
    keep = [p for p in model.metadata_props if not p.key.startswith(_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = _PREFIX + key, json.dumps(value)


def read_metadata(model: onnx.ModelProto | str | os.PathLike) -> dict[str, Any]:
    """The ``evad.*`` metadata of a model or ONNX file (weights are not loaded).

    Raises:
        EvadError: the file is missing, not ONNX, or was not exported by evad-deploy.
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise EvadError(f"ONNX file {path} does not exist")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise EvadError(f"{path} is not a readable ONNX file ({e})") from e
    meta = {}
    for p in model.metadata_props:
        if p.key.startswith(_PREFIX):
            meta[p.key[len(_PREFIX):]] = json.loads(p.value)
    if "format_version" not in meta:
        raise EvadError("the ONNX model has no evad metadata: export it with evad-export")
    if meta["format_version"] > FORMAT_VERSION:
        raise EvadError(f"the ONNX model has metadata format {meta['format_version']}; this "
                        f"evad-deploy reads up to {FORMAT_VERSION}: upgrade evad-deploy")
    return meta


def preset_of(meta: dict[str, Any]) -> Preset:
    """The Preset an export was made with."""
    from evad.models.presets import Preset

    return Preset.from_dict(meta["preset"])
