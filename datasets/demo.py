"""The demo video of ``evad-trt-run`` and ``evad-tokens`` with no video given: made on first use
and cached in ``$EVAD_CACHE`` (``evad.cache``). Torch-free."""

from __future__ import annotations

import sys
from pathlib import Path

from evad.cache import cache_dir
from evad.datasets import GENERATOR_VERSION
from evad.datasets.synthetic import make_demo_video

__all__ = ["demo_video"]


def demo_video() -> Path:
    """The demo video: 20 s, 640x360, 15 fps, four actors (a scene the demo model never saw),
    with its AVA ground truth beside it (``demo.csv``), in a folder per generator version (a
    newer generator makes a new one rather than reuse a stale one)."""
    path = cache_dir() / f"video_v{GENERATOR_VERSION}" / "demo.mp4"
    if not path.is_file():
        print(f"demo: generating the demo video {path} (first use) ...", file=sys.stderr)
        make_demo_video(path)
    return path
