"""evad.export: torch -> ONNX with the ``evad`` custom ops, metadata, and parity checks.

``export_onnx`` builds the graph, ``evad.export.ops`` defines the ``evad`` ONNX domain,
``evad.export.metadata`` the artefact metadata, ``evad.export.parity`` the backend comparison;
``evad-export`` and ``evad-parity`` are the commands.
"""

from evad.export.metadata import build_metadata, preset_of, read_metadata, write_metadata
from evad.export.onnx_export import DetectorGraph, export_onnx, save_model
from evad.export.parity import FP32_THRESHOLDS, REDUCED_THRESHOLDS, ParityReport, compare

__all__ = [
    "FP32_THRESHOLDS",
    "REDUCED_THRESHOLDS",
    "DetectorGraph",
    "ParityReport",
    "build_metadata",
    "compare",
    "export_onnx",
    "preset_of",
    "read_metadata",
    "save_model",
    "write_metadata",
]
