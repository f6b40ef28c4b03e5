"""What this machine has for TensorRT engines: what a build lacks (structured, so callers
decide on fields, not on message text) and the setup an engine is built for or run on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evad.errors import EvadError
from evad.lazy import available, lazy_import
from evad.plugins import library_path

if TYPE_CHECKING:
    import tensorrt
    import torch
else:
    tensorrt = lazy_import("tensorrt", "pip install tensorrt (on a machine with an NVIDIA GPU)")
    torch = lazy_import("torch", "pip install torch")

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
    if not available(torch):
        missing.append(Missing("gpu", "torch (pip install torch) for device buffers"))
    elif not torch.cuda.is_available():
        missing.append(Missing("gpu", "a CUDA GPU visible to torch (torch.cuda.is_available() is "
                               "False)"))
    if not library_path().is_file():
        missing.append(Missing("plugin_library", f"the C++ plugin library {library_path()} (run "
                               "evad-build-plugins; --plugins python works without it)",
                               optional=True))
    return missing


def running_environment(trt: Any) -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this process (current device).

    Raises:
        EvadError: no CUDA GPU.
    """
    if not torch.cuda.is_available():
        raise EvadError("no CUDA GPU: TensorRT engines need one")
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return {"tensorrt_version": trt.__version__, "gpu_name": torch.cuda.get_device_name(dev),
            "compute_capability": f"{major}.{minor}"}
