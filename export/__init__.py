"""evad.export: torch -> ONNX with the ``evad`` custom ops, metadata, and parity checks.

``export_onnx`` builds the graph, ``evad.export.ops`` defines the ``evad`` ONNX domain from
the op contracts, ``evad.export.metadata`` what an export records, ``evad.export.parity`` the
backend comparison, ``evad.export.ort_runner`` runs an export in ONNX Runtime (torch-free). The
commands that use them (``evad-export``, ``evad-parity``) live in ``evad.cli``. Names are
imported on first use, so an ONNX Runtime deployment never imports torch.
"""

from evad.lazy import lazy_exports

_WHERE = {
    "build_metadata": "metadata", "preset_of": "metadata", "DetectorGraph": "onnx_export",
    "export_onnx": "onnx_export", "save_model": "onnx_export", "FP32_THRESHOLDS": "parity",
    "REDUCED_THRESHOLDS": "parity", "ParityReport": "parity", "compare": "parity",
    "seeded_inputs": "parity", "OrtRunner": "ort_runner",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
