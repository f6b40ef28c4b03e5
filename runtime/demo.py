"""Defaults of ``evad-trt-run`` with no model or video: the shipped demo model (exported to
ONNX on first use) and the demo video (generated on first use), cached in ``$EVAD_CACHE``
(default ``~/.cache/evad-deploy``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["DEMO_INPUT", "cache_dir", "default_model", "default_video"]

DEMO_INPUT = (128, 256)  # the demo video (640x360) at the demo model's short side 128, padded


def cache_dir() -> Path:
    return Path(os.environ.get("EVAD_CACHE", Path.home() / ".cache" / "evad-deploy"))


def default_video() -> Path:
    """The demo video: 20 s, 640x360, 15 fps, four actors (a scene the demo model never saw),
    with its AVA ground truth beside it (``demo.csv``), in a folder per generator version."""
    from evad.datasets import GENERATOR_VERSION

    path = cache_dir() / f"video_v{GENERATOR_VERSION}" / "demo.mp4"
    if not path.is_file():
        from evad.datasets.synthetic import make_demo_video

        print(f"demo: generating the demo video {path} (first use) ...", file=sys.stderr)
        make_demo_video(path)
    return path


def default_model() -> Path:
    """The demo model as ONNX (exported from the packaged checkpoint on first use, ~20 s).

    Raises:
        EvadError: the install has no demo checkpoint.
    """
    from evad.models.checkpoint import file_sha256
    from evad.models.demo import demo_checkpoint

    ckpt = demo_checkpoint()
    h, w = DEMO_INPUT
    path = cache_dir() / f"demo_{file_sha256(ckpt)[:12]}_{h}x{w}.onnx"
    if not path.is_file():
        from evad.export.metadata import build_metadata, write_metadata
        from evad.export.onnx_export import export_onnx, save_model
        from evad.models import load_checkpoint

        print(f"demo: exporting the demo model to {path} (first use) ...", file=sys.stderr)
        model, meta = load_checkpoint(ckpt)
        proto = export_onnx(model, h, w)
        write_metadata(proto, build_metadata(meta["preset"], h, w, 18,
                                             checkpoint_sha256=meta["sha256"],
                                             exporter="evad.runtime.demo"))
        save_model(proto, path)
    return path
