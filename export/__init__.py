"""evad.export: torch -> ONNX with the ``evad`` custom ops, metadata, and parity checks.

``export_onnx`` builds the graph, ``evad.export.ops`` defines the ``evad`` ONNX domain,
``evad.export.metadata`` the artefact metadata, ``evad.export.parity`` the backend comparison;
``evad-export`` and ``evad-parity`` are the commands. Names are imported on first use, so an
ONNX Runtime deployment that only reads metadata and runs sessions never imports torch.
"""

from importlib import import_module

_WHERE = {
    "build_metadata": "metadata", "preset_of": "metadata", "read_metadata": "metadata",
    "write_metadata": "metadata", "DetectorGraph": "onnx_export", "export_onnx": "onnx_export",
    "save_model": "onnx_export", "FP32_THRESHOLDS": "parity", "REDUCED_THRESHOLDS": "parity",
    "ParityReport": "parity", "compare": "parity",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"evad.export.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'evad.export' has no attribute {name!r}")
