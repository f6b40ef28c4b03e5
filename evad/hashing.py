"""SHA-256 of artefact files: exports name the checkpoint they came from, engines the ONNX."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256"]


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
