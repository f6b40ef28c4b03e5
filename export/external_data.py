"""ONNX files whose weights sit in one external data file beside them (onnx's external data
format): writing one, and walking the tensors such a file can hold.

Why not ``onnx.save_model(..., save_as_external_data=True, location=...)``: onnx 1.23 refuses
("External data file exists in <name>.onnx.data") when a file of that name exists in the
process's current folder: it checks the location there, not in the model's folder. So
re-exporting a model past the 2 GB limit from the folder that holds the last export failed.
Here the tensors are marked (onnx's ``set_external_data``) and ``onnx.save_model`` writes them,
with their offsets, into the file beside the model: the same format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from evad.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx", "pip install onnx")

__all__ = ["initializers", "save_with_weights_file"]


def initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The graph's initializers and those of its nodes' subgraphs (``If`` / ``Loop`` bodies):
    what an external data file holds (``Constant`` values stay in the graph)."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            for g in [a.g] if a.HasField("g") else list(a.graphs):
                yield from initializers(g)


def save_with_weights_file(proto: onnx.ModelProto, path: str | Path, *,
                           min_bytes: int) -> Path:
    """Write ``proto`` to ``path`` with each initializer of ``min_bytes`` bytes or more in
    ``<path's name>.data`` beside it; returns that file's path. ``proto``'s tensors are left
    pointing at the file, their data cleared (as onnx's own writer leaves them).

    Raises:
        FileExistsError: the data file is already there (onnx would append to it).
        OSError: as writing a file does (a full disk), also where onnx raises its
            ``ValidationError`` for a data file it cannot open.
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    if data.exists():
        raise FileExistsError(f"{data} exists: an external data file is written anew")
    from onnx.external_data_helper import set_external_data

    for t in initializers(proto.graph):
        if t.HasField("raw_data") and len(t.raw_data) >= min_bytes:
            set_external_data(t, data.name)
    try:
        onnx.save_model(proto, str(path))
    except onnx.checker.ValidationError as e:  # onnx's word for a data file it cannot open
        raise OSError(f"cannot write {data}: {e}") from e
    return data
