"""SHA-256 of artefact files: exports name the checkpoint they came from, engines the ONNX
(:func:`onnx_sha256`, the one hash of an ONNX model with its external data)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["content_identity", "file_sha256", "onnx_sha256"]


def file_sha256(*paths: str | os.PathLike) -> str:
    """Hex SHA-256 over the bytes of ``paths`` in order; a path that does not exist is skipped
    (an ONNX file's optional ``.data`` side file)."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        if p.is_file():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def onnx_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of an ONNX model: the ``.onnx`` file, then its external data file
    (``<path>.data``) when there is one. What a runner's ``spec.sha256`` is for an ONNX model
    and what an engine's sidecar records as its source (``onnx_sha256``)."""
    return file_sha256(path, f"{path}.data")


_MIB = 1 << 20


def content_identity(path: str | os.PathLike) -> dict[str, object]:
    """What a long input is, cheaply and by content: its size in bytes and the SHA-256 of its
    first and last MiB (a file replaced, re-encoded, cut or grown changes it). A directory of
    frames: the count, and a SHA-256 over every frame's name and size plus the first and last
    frame's identity."""
    p = Path(path)
    if p.is_dir():
        frames = sorted(q for q in p.iterdir() if q.is_file())
        h = hashlib.sha256()
        for q in frames:
            h.update(f"{q.name}\0{q.stat().st_size}\n".encode("utf-8", "surrogateescape"))
        for q in frames[:1] + frames[-1:]:
            h.update(str(content_identity(q)["head_tail_sha256"]).encode())
        return {"files": len(frames), "names_sizes_sha256": h.hexdigest()}
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(_MIB))
        if size > _MIB:
            f.seek(max(size - _MIB, _MIB))
            h.update(f.read(_MIB))
    return {"bytes": size, "head_tail_sha256": h.hexdigest()}
