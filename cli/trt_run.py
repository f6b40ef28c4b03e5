"""``evad-trt-run``: the runtime's command (``evad.runtime.cli``) with the demo video and the
demo model as the defaults for a missing video or model (the demo checkpoint for
``--backend torch``)."""

from __future__ import annotations

from evad.datasets.demo import demo_video
from evad.export.demo import demo_onnx
from evad.models.demo import demo_checkpoint
from evad.runtime.cli import main as run_main

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, default_video=demo_video, default_model=demo_onnx,
                    default_ckpt=demo_checkpoint)


if __name__ == "__main__":
    raise SystemExit(main())
