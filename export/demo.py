"""The demo model as ONNX, for ``evad-trt-run`` and ``evad-tokens`` with no model given: the
packaged demo checkpoint (``evad.models.demo``) exported by the one exporter
(``evad.export.exporter``) on first use and cached in ``$EVAD_CACHE`` (``evad.cache``).
Torch-free at import: torch loads only when the export runs."""

from __future__ import annotations

import sys
from pathlib import Path

from evad.cache import cache_dir
from evad.export.exporter import Exporter
from evad.hashing import file_sha256
from evad.models.demo import demo_checkpoint

__all__ = ["DEMO_INPUT", "demo_onnx"]

#: the demo model's input, (H, W) pixels: the demo video (640x360) at the demo model's short
#: side 128, padded to a multiple of 32
DEMO_INPUT = (128, 256)


def demo_onnx() -> Path:
    """The demo model's ONNX at :data:`DEMO_INPUT` (exported on first use, ~20 s), named after
    the checkpoint's hash, so that new demo weights make a new file.

    Raises:
        EvadError: the install has no demo checkpoint.
    """
    ckpt = demo_checkpoint()
    h, w = DEMO_INPUT
    path = cache_dir() / f"demo_{file_sha256(ckpt)[:12]}_{h}x{w}.onnx"
    if not path.is_file():
        print(f"demo: exporting the demo model to {path} (first use) ...", file=sys.stderr)
        Exporter(h, w, made_by="evad.export.demo")(path, ckpt=ckpt)
    return path
