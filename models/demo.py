"""The shipped demo model: the ``demo`` preset trained on ``evad.datasets.synthetic`` clips
(command in README, "Demo model"), stored as fp16 in the released checkpoint layout."""

from __future__ import annotations

from pathlib import Path

from evad.errors import EvadError

__all__ = ["DEMO_CHECKPOINT", "demo_checkpoint"]

DEMO_CHECKPOINT = Path(__file__).parent / "weights" / "demo.pth"


def demo_checkpoint() -> Path:
    """Path of the packaged demo checkpoint (load it with ``evad.models.load_checkpoint``).

    Raises:
        EvadError: the install has no demo weights (e.g. a source tree without them).
    """
    if not DEMO_CHECKPOINT.is_file():
        raise EvadError(f"the demo checkpoint {DEMO_CHECKPOINT} is missing: reinstall "
                        "evad-deploy, or pass a model explicitly")
    return DEMO_CHECKPOINT
