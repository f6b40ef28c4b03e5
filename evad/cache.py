"""Where evad-deploy keeps what it makes on first use (the demo video, the demo model's ONNX,
OpenVINO's compiled models): ``$EVAD_CACHE``, default ``~/.cache/evad-deploy``; one root for
all of them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache folder (``$EVAD_CACHE``, else ``~/.cache/evad-deploy``); not created here."""
    return Path(os.environ.get("EVAD_CACHE", Path.home() / ".cache" / "evad-deploy"))
