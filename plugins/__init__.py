"""evad.plugins: the TensorRT plugins of the ``evad`` ops, in C++ (CUDA) and in Python (Triton).

Both sets implement the op contracts of :mod:`evad.op_contracts` (names, version "1", namespace
"evad", the fields with their types and valid ranges), so the engine builder can bind either:
``load("cpp")`` loads ``libevad_plugins.so`` (built by ``evad-build-plugins``; its creators read
the generated header ``common/evadOpContract.h``) into TensorRT's plugin registry,
``load("python")`` registers the Python creators (:mod:`evad.plugins.python_plugins`, Triton
kernels). TensorRT, Triton and torch are imported on first use (:mod:`evad.lazy`).

This stage imports no other evad stage: only :mod:`evad.errors`, :mod:`evad.lazy` and
:mod:`evad.op_contracts` from first-party code.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from types import ModuleType

from evad.errors import EvadError
from evad.lazy import available, lazy_import
from evad.op_contracts import CONTRACTS, NAMESPACE
from evad.op_contracts import PLUGIN_VERSION as VERSION
from evad.plugins import python_plugins

__all__ = ["NAMESPACE", "VERSION", "PluginError", "library_dir", "library_path",
           "load", "tensorrt"]

_TENSORRT_INSTALL = ("pip install tensorrt (GPU machines) or tensorrt-lean-cu13-libs "
                     "tensorrt-lean-cu13-bindings (plugin registry only)")
#: the TensorRT Python modules that can register plugins, in order of preference
_TENSORRT_MODULES = tuple(lazy_import(name, _TENSORRT_INSTALL) for name in
                          ("tensorrt", "tensorrt_lean_bindings", "tensorrt_dispatch_bindings"))

_LOADED: dict[str, object] = {}


class PluginError(EvadError):
    """TensorRT, the plugin library or a plugin creator is missing or unusable."""


def tensorrt() -> ModuleType:
    """The TensorRT Python module: ``tensorrt`` (full), else the runtime-only builds
    (``tensorrt_lean_bindings``, ``tensorrt_dispatch_bindings``) that can register plugins.

    Raises:
        PluginError: none is installed (``tensorrt-stubs`` alone does not count).
    """
    for mod in _TENSORRT_MODULES:
        # the stubs import as an empty package: no registry
        if available(mod) and hasattr(mod, "get_plugin_registry"):
            return mod
    raise PluginError(f"TensorRT is not installed: {_TENSORRT_INSTALL}")


def library_dir() -> Path:
    """Where ``evad-build-plugins`` puts the libraries: ``$EVAD_PLUGIN_LIB_DIR`` or
    ``<package>/build/lib``."""
    env = os.environ.get("EVAD_PLUGIN_LIB_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "build" / "lib"


def library_path(name: str = "libevad_plugins.so") -> Path:
    """Path of a built library (it may not exist yet)."""
    return library_dir() / name


def load(kind: str = "cpp", library: str | os.PathLike[str] | None = None):
    """Register one set of evad plugins in TensorRT's plugin registry (idempotent per kind).

    Args:
        kind: ``"cpp"`` (libevad_plugins.so) or ``"python"`` (the Triton plugins).
        library: the .so for ``"cpp"`` (default :func:`library_path`).

    Returns:
        The TensorRT module whose registry now holds both creators.

    Raises:
        PluginError: TensorRT or the library is missing, or a creator did not register.
        MissingDependency: ``"python"`` without Triton (``pip install triton``).
        EvadError: TensorRT refused a Python creator.
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
            _LOADED[kind] = _load_library(registry, path)
        else:
            _LOADED[kind] = python_plugins.register(trt)  # MissingDependency without Triton
    for c in CONTRACTS.values():
        if registry.get_creator(c.name, c.plugin_version, c.domain) is None:
            hint = ""
            if kind == "cpp" and isinstance(_LOADED.get(kind), ctypes.CDLL):
                hint = (" (a static-registration build: it registers into the libnvinfer it "
                        "links, which must be this TensorRT's, of its headers' major version; "
                        "see its stderr line)")
            raise PluginError(f"plugin {c.domain}::{c.name} v{c.plugin_version} is not "
                              f"registered after loading the {kind} plugins{hint}")
    return trt


def _load_library(registry, path: Path):
    """Load libevad_plugins.so by the one registration path it was built with: the default build
    exports ``getCreators`` (TensorRT's ``loadLibrary`` registers its creators); a build with
    ``EVAD_STATIC_REGISTRATION`` exports none and registers its creators itself, under "evad",
    when it is loaded (dlopen), so it must not go through ``loadLibrary``. Returns what keeps the
    library loaded."""
    try:
        lib = ctypes.CDLL(str(path))  # dlopen: a static-registration build registers here
    except OSError as e:
        raise PluginError(f"could not load {path}: {e}") from e
    if not hasattr(lib, "getCreators"):
        return lib
    handle = registry.load_library(str(path))
    if handle is None:
        raise PluginError(f"TensorRT could not load {path} (see its log above)")
    return handle
