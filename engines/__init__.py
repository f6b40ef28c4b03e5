"""evad.engines: ONNX -> TensorRT engine, and the TensorRT runner.

One job per module: ``onnx_prep`` (the ONNX as the parser should see it, and the checks it
passes), ``mixed_precision`` (its fp16/bf16 copy for strongly typed TensorRT), ``environment``
(what a build lacks; the GPU/TensorRT setup), ``builder`` (parse -> configure -> build -> write),
``metadata`` (the ``.engine.json`` sidecar), ``trt_runner`` (:class:`TrtRunner`), ``cli``
(``evad-build-engine``). Names load on first use (PEP 562), so the runner and the metadata
import without onnx, and everything imports without TensorRT.
"""

from evad.lazy import lazy_exports

_WHERE = {
    "build": "builder", "build_plan": "builder", "check_batch_profile": "builder",
    "parser_graph": "builder", "Plan": "builder",
    "Missing": "environment", "missing_for_engine_build": "environment",
    "running_environment": "environment", "EngineMismatchError": "metadata",
    "check_engine_metadata": "metadata", "engine_metadata": "metadata",
    "read_engine_metadata": "metadata", "FP32_OPS": "mixed_precision",
    "strip_evad_functions": "onnx_prep", "for_parser": "onnx_prep", "check_types": "onnx_prep",
    "check_topk": "onnx_prep", "TOPK_MAX_K": "onnx_prep",
    "to_mixed_precision": "mixed_precision",
    "TrtRunner": "trt_runner",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
