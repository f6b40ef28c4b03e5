"""The frame resize of the specification (docs/model.md, "Pre-processing"),
shared by training data and the runtime; no heavy imports."""

from __future__ import annotations

__all__ = ["resized_size"]


def resized_size(height: int, width: int, short_side: int,
                 max_long_side: int) -> tuple[int, int]:
    """(h, w) after resizing a ``height`` x ``width`` frame: short side ``short_side`` unless
    the long side would then pass ``max_long_side`` (then long side = ``max_long_side``); sizes
    rounded with ``int(x + 0.5)`` as the released pre-processing."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_long_side:
        scale = max_long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)
