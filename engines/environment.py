"""What this machine has for TensorRT engines: what a build lacks (structured, so callers
decide on fields, not on message text) and the setup an engine is built for or run on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evad.engines.cuda_memory import current_device, no_gpu_reason
from evad.errors import EvadError
from evad.lazy import available, lazy_import
from evad.plugins import library_path

if TYPE_CHECKING:
    import tensorrt
else:
    tensorrt = lazy_import("tensorrt", "pip install tensorrt (on a machine with an NVIDIA GPU)")

__all__ = ["Missing", "missing_for_engine_build", "running_environment", "tensorrt_builder"]


@dataclass(frozen=True)
class Missing:
    """One thing an engine build lacks.

    key: ``"tensorrt"``, ``"gpu"`` or ``"plugin_library"``.
    what: a phrase naming it and how to get it.
    optional: the build can go on without it (the C++ plugin library: the Python plugins serve).
    """

    key: str
    what: str
    optional: bool = False

    def __str__(self) -> str:
        return self.what


def tensorrt_builder() -> Any | None:
    """The full ``tensorrt`` module (with Builder and OnnxParser), or None. The runtime-only
    builds and ``tensorrt-stubs`` (an empty package when imported) do not count."""
    if not available(tensorrt):
        return None
    return tensorrt if hasattr(tensorrt, "Builder") and hasattr(tensorrt, "OnnxParser") else None


def missing_for_engine_build() -> list[Missing]:
    """What this machine lacks to build an engine; empty when nothing is missing."""
    missing = []
    if tensorrt_builder() is None:
        missing.append(Missing("tensorrt", "TensorRT with its builder and ONNX parser (pip "
                               "install tensorrt; the runtime-only tensorrt-lean/-dispatch wheels "
                               "cannot build)"))
    why = no_gpu_reason()
    if why is not None:  # device memory comes from cuda-python (engines/cuda_memory.py)
        missing.append(Missing("gpu", f"a CUDA GPU visible to cuda-python ({why})"))
    if not library_path().is_file():
        missing.append(Missing("plugin_library", f"the C++ plugin library {library_path()} (run "
                               "evad-build-plugins; --plugins python works without it)",
                               optional=True))
    return missing


def running_environment(trt: Any) -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this process (current device).

    The GPU comes from cuda-python (``cudaGetDeviceProperties``, ``cudaDeviceGetAttribute``):
    the same name and capability torch reports, so sidecars written either way compare equal.

    Raises:
        EvadError: no CUDA GPU, or cuda-python is missing (the message says what to install).
    """
    why = no_gpu_reason()
    if why is not None:
        raise EvadError(f"no CUDA GPU: TensorRT engines need one ({why})")
    name, capability = current_device()
    return {"tensorrt_version": trt.__version__, "gpu_name": name,
            "compute_capability": capability}
