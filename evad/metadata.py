"""Artefact metadata: what an exported model was made from, read back by every later stage.

Stored in an ONNX file as ``metadata_props`` under ``evad.<key>``, each value JSON-encoded, so
Netron and ``onnx`` show plain key/value pairs and :func:`read_metadata` restores the types. An
engine carries the same keys in its ``.engine.json`` sidecar (``evad.engines.metadata``). What
the keys are is decided by the exporter (``evad.export.metadata.build_metadata``); this module
only stores and reads them, with onnx loaded on first use.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from evad.command import check_input_file
from evad.errors import EvadError
from evad.lazy import lazy_import
from evad.runner import DETECTIONS, INPUT_CLIP, INPUT_IMAGE_SIZE, ModelSpec

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx", "pip install onnx")

__all__ = ["FORMAT_VERSION", "load_detector", "read_metadata", "write_metadata"]

FORMAT_VERSION = 1
_PREFIX = "evad."


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
    if isinstance(model, (str, os.PathLike)):
        path = check_input_file(model, "ONNX model")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise EvadError(f"{path} is not a readable ONNX file ({e})") from e
    meta = {}
    for p in model.metadata_props:
        if p.key.startswith(_PREFIX):
            try:
                meta[p.key[len(_PREFIX):]] = json.loads(p.value)
            except ValueError:
                raise EvadError(f"the ONNX model's metadata {p.key} is not JSON "
                                f"({p.value[:40]!r}): the file was edited or is not an "
                                "evad-export; re-export it") from None
    if "format_version" not in meta:
        raise EvadError("the ONNX model has no evad metadata: export it with evad-export")
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EvadError(f"the ONNX model's evad.format_version is {version!r}, not a version "
                        "number; re-export it")
    if version > FORMAT_VERSION:
        raise EvadError(f"the ONNX model has metadata format {meta['format_version']}; this "
                        f"evad-deploy reads up to {FORMAT_VERSION}: upgrade evad-deploy")
    return meta


#: the detector graph's inputs: name -> (ONNX element type, rank)
_SIGNATURE = {INPUT_CLIP: (1, 5), INPUT_IMAGE_SIZE: (7, 2)}  # FLOAT (B,3,T,H,W), INT64 (B,2)


def load_detector(path: str | os.PathLike
                  ) -> tuple[onnx.ModelProto, dict[str, Any], ModelSpec]:
    """An evad export read for serving or inspection: its graph (weights not loaded), its evad
    metadata and what that says (``ModelSpec``), once the file is a readable ONNX file, its metadata
    complete and valid, and its graph the detector's signature (``clip`` float (B, 3, T, H, W),
    ``image_size`` int64 (B, 2) in; ``boxes``, ``person_scores``, ``action_probs`` out), as the
    runners require before they run it.

    Raises:
        EvadError: one line naming the file and what is wrong (missing, not ONNX or cut short,
            no or broken evad metadata, another graph carrying copied metadata).
    """
    file = check_input_file(path, "ONNX model")
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as e:  # DecodeError and friends: a cut or foreign file
        raise EvadError(f"{file} is not a readable ONNX file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'cut short?'}); re-export "
                        "it") from None
    try:
        meta = read_metadata(model)
    except EvadError as e:
        raise EvadError(f"{file}: {e}") from None
    spec = ModelSpec.from_metadata(meta, f"ONNX model {file}")  # names the file itself
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    for name, (elem, rank) in _SIGNATURE.items():
        t = inputs.get(name)
        if t is None or t.elem_type != elem or len(t.shape.dim) != rank:
            raise EvadError(f"{file} carries evad metadata but is not an evad detector: its "
                            f"graph has no input {name!r} of rank {rank} (inputs: "
                            f"{', '.join(inputs) or 'none'}); export it with evad-export")
    outputs = {o.name for o in model.graph.output}
    missing = [n for n in DETECTIONS if n not in outputs]
    if missing:
        raise EvadError(f"{file} carries evad metadata but is not an evad detector: its graph "
                        f"has no output {', '.join(map(repr, missing))}; export it with "
                        "evad-export")
    return model, meta, spec
