"""The demo assets of ``evad-trt-run`` with no model or video: the shipped demo model exported
to ONNX and the demo video, both made on first use and cached in ``$EVAD_CACHE`` (default
``~/.cache/evad-deploy``). The video needs no torch; the export does (loaded on first use)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from evad.datasets import GENERATOR_VERSION
from evad.datasets.synthetic import make_demo_video
from evad.hashing import file_sha256
from evad.lazy import lazy_import
from evad.metadata import write_metadata
from evad.models.demo import demo_checkpoint

if TYPE_CHECKING:
    from evad.export import metadata as export_metadata
    from evad.export import onnx_export
    from evad.models import checkpoint
else:
    export_metadata = lazy_import("evad.export.metadata", "pip install torch")
    onnx_export = lazy_import("evad.export.onnx_export", "pip install torch")
    checkpoint = lazy_import("evad.models.checkpoint", "pip install torch")

__all__ = ["DEMO_INPUT", "cache_dir", "default_model", "default_video"]

DEMO_INPUT = (128, 256)  # the demo video (640x360) at the demo model's short side 128, padded


def cache_dir() -> Path:
    return Path(os.environ.get("EVAD_CACHE", Path.home() / ".cache" / "evad-deploy"))


def default_video() -> Path:
    """The demo video: 20 s, 640x360, 15 fps, four actors (a scene the demo model never saw),
    with its AVA ground truth beside it (``demo.csv``), in a folder per generator version."""
    path = cache_dir() / f"video_v{GENERATOR_VERSION}" / "demo.mp4"
    if not path.is_file():
        print(f"demo: generating the demo video {path} (first use) ...", file=sys.stderr)
        make_demo_video(path)
    return path


def default_model() -> Path:
    """The demo model as ONNX (exported from the packaged checkpoint on first use, ~20 s).

    Raises:
        EvadError: the install has no demo checkpoint.
    """
    ckpt = demo_checkpoint()
    h, w = DEMO_INPUT
    path = cache_dir() / f"demo_{file_sha256(ckpt)[:12]}_{h}x{w}.onnx"
    if not path.is_file():
        print(f"demo: exporting the demo model to {path} (first use) ...", file=sys.stderr)
        model, meta = checkpoint.load_checkpoint(ckpt)
        proto = onnx_export.export_onnx(model, h, w)
        write_metadata(proto, export_metadata.build_metadata(
            meta["preset"], h, w, onnx_export.DEFAULT_OPSET, checkpoint_sha256=meta["sha256"],
            exporter="evad.cli.demo"))
        onnx_export.save_model(proto, path)
    return path
