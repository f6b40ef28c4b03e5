"""What an export may be asked for, checked before anything heavy loads: the input size and the
default opset. Torch-free and onnx-free, so ``evad-export`` refuses a bad size in a fraction of a
second (the exporter itself, ``evad.export.onnx_export``, re-exports these)."""

from __future__ import annotations

from evad.errors import ConfigError

__all__ = ["DEFAULT_OPSET", "MAX_SIDE", "validate_size"]

#: default-domain opset of the export
DEFAULT_OPSET = 18
#: the largest input side an export takes, pixels (AVA's test resize caps the long side at 1333)
MAX_SIDE = 2048


def validate_size(height: int, width: int) -> None:
    """Refuse an input size that is not two multiples of 32 in 32..MAX_SIDE pixels."""
    if not (32 <= height <= MAX_SIDE and 32 <= width <= MAX_SIDE) or height % 32 or width % 32:
        raise ConfigError(f"input size {height}x{width}: height and width must be multiples of "
                          f"32 in 32..{MAX_SIDE} (e.g. 288x512)")
