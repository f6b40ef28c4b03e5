"""evad.engines: ONNX -> TensorRT engine (profiles, precision, timing cache, metadata sidecar)
and the TensorRT runtime model. TensorRT and torch are imported on first use, so this package
imports on machines without them."""

from evad.engines.builder import (
    EngineMismatchError,
    build,
    check_engine_metadata,
    engine_metadata,
    missing_for_engine_build,
    read_engine_metadata,
    strip_evad_functions,
)

__all__ = ["EngineMismatchError", "build", "check_engine_metadata", "engine_metadata",
           "missing_for_engine_build", "read_engine_metadata", "strip_evad_functions"]
