"""The ``<name>.engine.json`` sidecar: what an engine was built from (the ONNX export's
metadata and hash) and for (GPU, compute capability, TensorRT version, precision, plugins, batch
profile), and the check that refuses an engine on another setup. No onnx, no TensorRT here: the
TensorRT runner reads this on machines that have neither onnx nor a builder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evad.errors import EvadError

__all__ = ["FORMAT_VERSION", "EngineMismatchError", "check_engine_metadata", "engine_metadata",
           "merged_metadata", "read_engine_metadata", "sidecar_path",
]

FORMAT_VERSION = 1
#: what must equal between the engine's build and the machine that runs it
_SETUP_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")


class EngineMismatchError(EvadError):
    """The engine was built for another GPU, TensorRT version or model."""


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``x.engine`` -> ``x.engine.json``."""
    return Path(str(engine) + ".json")


def engine_metadata(env: dict[str, Any], precision: str, onnx_meta: dict[str, Any],
                    onnx_hash: str, plugins: str, batch: tuple[int, int, int],
                    math_modes: dict[str, bool] | None = None) -> dict[str, Any]:
    """The sidecar of an engine built in ``env`` (``environment.running_environment``) from an
    ONNX export with metadata ``onnx_meta`` and hash ``onnx_hash``; ``math_modes`` says which
    reduced-precision modes the builder was allowed (``{"tf32", "fp16", "bf16"}`` -> bool)."""
    return {"format_version": FORMAT_VERSION, **env, "precision": precision,
            "math_modes": dict(math_modes or {}),
            "input_size": onnx_meta.get("input_size"), "num_frames": onnx_meta.get("num_frames"),
            "batch_profile": list(batch), "plugins": plugins, "onnx_sha256": onnx_hash,
            "onnx_metadata": onnx_meta}


def read_engine_metadata(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of an engine file.

    Raises:
        EvadError: the engine or its sidecar is missing or unreadable, or newer than this
            evad-deploy.
    """
    path = sidecar_path(engine)
    if not Path(engine).is_file():
        raise EvadError(f"engine {engine} does not exist")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvadError(f"engine metadata {path} is missing or unreadable ({e}): rebuild the "
                        "engine with evad-build-engine") from e
    if not isinstance(meta, dict):
        raise EvadError(f"engine metadata {path} is not a JSON object: rebuild the engine")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise EvadError(f"engine metadata {path} has format_version {version!r}, not a number: "
                        "rebuild the engine")
    if version > FORMAT_VERSION:
        raise EvadError(f"{path} has metadata format {meta['format_version']}: upgrade "
                        "evad-deploy")
    return meta


def merged_metadata(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The ONNX export's metadata updated with what the engine is (precision, TensorRT version,
    GPU, compute capability, plugins, batch profile, ONNX hash): the keys a runner's
    ``ModelSpec`` reads, plus the engine's own."""
    engine = {k: v for k, v in sidecar.items() if k not in ("onnx_metadata", "format_version")}
    return {**sidecar.get("onnx_metadata", {}), **engine}


def check_engine_metadata(meta: dict[str, Any], env: dict[str, Any]) -> None:
    """Refuse an engine built for another GPU or TensorRT version.

    Raises:
        EngineMismatchError: naming what differs and what to do.
    """
    diffs = [f"{key} {meta.get(key)!r} (this machine: {env[key]!r})"
             for key in _SETUP_KEYS if meta.get(key) != env[key]]
    if diffs:
        raise EngineMismatchError("engine built for another setup: " + "; ".join(diffs)
                                  + ". Rebuild it here with evad-build-engine (TensorRT engines "
                                  "are tied to one GPU model and TensorRT version)")
