"""Heavy third-party packages, loaded on first use, in one visible way.

A module that needs TensorRT, onnxruntime, Triton, OpenCV (or torch, on a torch-free path) says
so at its top::

    from evad.lazy import lazy_import

    ort = lazy_import("onnxruntime", "pip install onnxruntime")

``ort`` is a stand-in that imports the package on the first attribute access. So ``import evad``
and every ``--help`` work on a machine without the package, and a command that really needs it
fails with one :class:`MissingDependency` sentence naming what to install (Polygraphy's
``mod.lazy_import`` is the model).

Where a type checker should see the real API (the TensorRT layer, checked by pyright with
``tensorrt-stubs``), import under ``TYPE_CHECKING`` and bind the stand-in otherwise::

    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = lazy_import("tensorrt", "pip install tensorrt")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from evad.errors import EvadError

__all__ = ["LazyModule", "MissingDependency", "available", "lazy_exports", "lazy_import"]


class MissingDependency(EvadError, ImportError):
    """A package that this step needs is not installed; the message names what to install.

    ``package`` is the import name; callers that can do without it (an optional engine step,
    a backend choice) test ``isinstance(e, MissingDependency)`` instead of matching text.
    """

    def __init__(self, package: str, install: str, reason: str = "") -> None:
        self.package = package
        self.install = install
        detail = f" ({reason})" if reason else ""
        super().__init__(f"{package} is not installed{detail}: {install}")


class LazyModule(ModuleType):
    """A module imported on first attribute access."""

    def __init__(self, name: str, install: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_name"] = name
        self.__dict__["_lazy_install"] = install
        self.__dict__["_lazy_module"] = None

    def _load(self) -> ModuleType:
        mod = self.__dict__["_lazy_module"]
        if mod is None:
            name = self.__dict__["_lazy_name"]
            try:
                mod = importlib.import_module(name)
            except MissingDependency:  # raised inside that module: it names the real package
                raise
            except ImportError as e:
                raise MissingDependency(name, self.__dict__["_lazy_install"], str(e)) from e
            self.__dict__["_lazy_module"] = mod
        return mod

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def lazy_import(name: str, install: str) -> Any:
    """A stand-in for ``import name`` that imports on first use.

    Args:
        name: the import name (``"onnxruntime"``, ``"tensorrt"``, ``"cv2"``).
        install: what the user should do when it is missing (``"pip install onnxruntime"``).

    Returns:
        A :class:`LazyModule`; typed ``Any`` so attribute access type-checks like the module.
    """
    return LazyModule(name, install)


def available(module: Any) -> bool:
    """Whether a lazy (or real) module can be imported here, without raising."""
    if isinstance(module, LazyModule):
        try:
            module._load()
        except MissingDependency:
            return False
    return True


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any],
                                                               Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package ``__init__`` whose names load on first use
    (PEP 562): ``where`` maps each exported name to the submodule that defines it.

    A name equal to a submodule's (``flops`` in ``evad.models.flops``) cannot be exported this
    way: once the submodule is imported, Python binds the package attribute to the module.
    """
    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
