"""evad.plugins: the TensorRT plugins of the ``evad`` ops, in C++ (CUDA) and in Python (torch).

Both sets declare the same plugin names, version ("1"), namespace ("evad") and fields
(:data:`PLUGIN_FIELDS`, the ONNX attributes of each op), so the engine builder can bind either:
``load("cpp")`` loads ``libevad_plugins.so`` (built by ``evad-build-plugins``) into TensorRT's
plugin registry, ``load("python")`` registers the Python creators
(:mod:`evad.plugins.python_plugins`). Heavy imports (tensorrt, torch) happen on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from evad.errors import EvadError

__all__ = ["NAMESPACE", "PLUGIN_FIELDS", "VERSION", "PluginError", "library_dir", "library_path",
           "load", "tensorrt"]

NAMESPACE = "evad"
VERSION = "1"
#: plugin name -> ordered (field name, kind) with kind "int" (INT32) or "float" (FLOAT32); the
#: ONNX attributes of the op (export/ops.py) and the C++ creators' getFieldNames().
PLUGIN_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "RoIAlign3D": (("output_height", "int"), ("output_width", "int"), ("spatial_scale", "float"),
                   ("sampling_ratio", "int"), ("aligned", "int")),
    "KeyframeTopKPrune": (("keep_num", "int"), ("keep_den", "int"),
                          ("keyframe_weight", "float")),
}
_LOADED: dict[str, object] = {}


class PluginError(EvadError):
    """TensorRT, the plugin library or a plugin creator is missing or unusable."""


def tensorrt() -> ModuleType:
    """The TensorRT Python module: ``tensorrt`` (full), else the runtime-only builds
    (``tensorrt_lean_bindings``, ``tensorrt_dispatch_bindings``) that can register plugins.

    Raises:
        PluginError: none is installed (``tensorrt-stubs`` alone does not count).
    """
    import importlib

    for name in ("tensorrt", "tensorrt_lean_bindings", "tensorrt_dispatch_bindings"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "get_plugin_registry"):  # the stubs import as an empty package
            return mod
    raise PluginError("TensorRT is not installed: pip install tensorrt (GPU machines) or "
                      "tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings (plugin registry only)")


def library_dir() -> Path:
    """Where ``evad-build-plugins`` puts the libraries: ``$EVAD_PLUGIN_LIB_DIR`` or
    ``<package>/build/lib``."""
    env = os.environ.get("EVAD_PLUGIN_LIB_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "build" / "lib"


def library_path(name: str = "libevad_plugins.so") -> Path:
    """Path of a built library (it may not exist yet)."""
    return library_dir() / name


def load(kind: str = "cpp", library: str | os.PathLike | None = None):
    """Register one set of evad plugins in TensorRT's plugin registry (idempotent per kind).

    Args:
        kind: ``"cpp"`` (libevad_plugins.so) or ``"python"`` (the torch plugins).
        library: the .so for ``"cpp"`` (default :func:`library_path`).

    Returns:
        The TensorRT module whose registry now holds both creators.

    Raises:
        PluginError: TensorRT or the library is missing, or a creator did not register.
    """
    if kind not in ("cpp", "python"):
        raise PluginError(f"plugin kind {kind!r}: use 'cpp' or 'python'")
    trt = tensorrt()
    registry = trt.get_plugin_registry()
    other = "python" if kind == "cpp" else "cpp"
    if other in _LOADED:
        raise PluginError(f"the {other} evad plugins are already registered in this process; "
                          "one set per process (same names, version and namespace)")
    if kind not in _LOADED:
        if kind == "cpp":
            path = Path(library) if library else library_path()
            if not path.is_file():
                raise PluginError(f"plugin library {path} not found: run evad-build-plugins "
                                  "(needs nvcc and cmake), or use the python plugins")
            handle = registry.load_library(str(path))
            if handle is None:
                raise PluginError(f"TensorRT could not load {path} (see its log above)")
            _LOADED[kind] = handle
        else:
            from evad.plugins.python_plugins import register

            _LOADED[kind] = register(trt)
    for name in PLUGIN_FIELDS:
        if registry.get_creator(name, VERSION, NAMESPACE) is None:
            raise PluginError(f"plugin {NAMESPACE}::{name} v{VERSION} is not registered after "
                              f"loading the {kind} plugins")
    return trt
