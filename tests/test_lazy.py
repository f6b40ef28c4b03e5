"""evad.lazy: the stand-in imports on first use and names what to install when it cannot."""

from __future__ import annotations

import sys

import pytest

from evad.errors import EvadError
from evad.lazy import LazyModule, MissingDependency, available, lazy_import


def test_imports_on_first_attribute_only(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    mod = lazy_import("colorsys", "it ships with Python")
    assert isinstance(mod, LazyModule) and "colorsys" not in sys.modules
    assert mod.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules and available(mod)


def test_a_missing_package_is_one_sentence_naming_the_install() -> None:
    mod = lazy_import("evad_no_such_package", "pip install evad-no-such-package")
    assert not available(mod)
    with pytest.raises(MissingDependency) as info:
        mod.anything  # noqa: B018 - the access is the test
    e = info.value
    assert isinstance(e, EvadError) and isinstance(e, ImportError)
    assert e.package == "evad_no_such_package" and e.install == "pip install evad-no-such-package"
    assert str(e).startswith("evad_no_such_package is not installed")
    assert str(e).endswith(": pip install evad-no-such-package") and "\n" not in str(e)


def test_a_nested_missing_dependency_keeps_the_real_package(tmp_path, monkeypatch) -> None:
    """A lazily loaded module that itself needs a missing package reports that package."""
    (tmp_path / "evad_lazy_outer.py").write_text(
        "from evad.lazy import lazy_import\n"
        "inner = lazy_import('evad_lazy_inner_missing', 'pip install inner')\n"
        "inner.x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    outer = lazy_import("evad_lazy_outer", "pip install outer")
    with pytest.raises(MissingDependency) as info:
        outer.inner  # noqa: B018
    assert info.value.package == "evad_lazy_inner_missing"
    assert "pip install inner" in str(info.value)
