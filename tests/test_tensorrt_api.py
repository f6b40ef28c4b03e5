"""Every TensorRT API the TensorRT layer uses exists in the TensorRT it runs on.

The names come from the source, not from a list: an AST scan of the files in :data:`SOURCES`
with a small dataflow finds every TensorRT class, function, attribute, enum member and method
the code touches:

- chains on the TensorRT module (``trt.X``, ``trt.X.Y``; the module is whatever ``import
  tensorrt``, ``lazy_import("tensorrt...")``, a parameter of :data:`MODULE_PARAMS` or a function
  returning the module (``evad.plugins.tensorrt``, ``load``, ...) gives);
- attributes of TensorRT objects: a value derived from the module (a call, an attribute, an
  element) is typed by its annotation (``self.engine: trt.ICudaEngine``), by its constructor
  (``trt.Runtime(...)``), by :data:`RESULT_TYPES` for chains (``network.get_layer(i).type``) or
  by the name it is bound to (:data:`OBJECT_TYPES`: ``self.context`` -> IExecutionContext).
  A TensorRT-derived value that none of these types, used as ``x.attr``, fails
  :func:`test_every_tensorrt_object_is_typed` and names the expression, so the mapping cannot
  silently go stale;
- subclasses of TensorRT classes (the Python plugins): each method they define (TensorRT calls
  it: a renamed base method would never be called) and each ``self.attr`` that is not their own
  (:data:`PLUGIN_OWN`, private names, class-body names) must exist on one of the bases.

``hasattr(x, "NAME")`` and ``getattr(x, "NAME", default)`` guard NAME in the enclosing function:
such version-dependent names (``BuilderFlag.FP16``, gone in TensorRT 11; ``EXPLICIT_BATCH``) are
reported but may be missing. ``if not hasattr(x, "NAME"): raise`` is a requirement, not a guard.

Where each name is checked: runtime and plugin APIs in the runtime-only TensorRT 11 bindings
(``tensorrt_lean_bindings``); builder and parser APIs (:data:`BUILDER_APIS`) in TensorRT-RTX
(``tensorrt_rtx_bindings``, the builder that runs on a CPU), where the API is shared; the
TensorRT 10 weakly typed path (:data:`TRT10_ONLY`) in ``tensorrt-stubs`` 10.13. Each probe runs
in a subprocess. Without the bindings the probes skip (fail with ``CI=true``: .ci/plugins.sh
installs them). ``python tests/test_tensorrt_api.py`` prints every API found and its check.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: import name -> file (relative to the repository root) of the scanned TensorRT layer
SOURCES = {
    "evad.engines.trt_runner": "engines/trt_runner.py",
    "evad.engines.builder": "engines/builder.py",
    "evad.engines.environment": "engines/environment.py",
    "evad.plugins": "plugins/__init__.py",
    "evad.plugins.python_plugins": "plugins/python_plugins.py",
}
#: import names of TensorRT's Python modules
TRT_MODULES = ("tensorrt", "tensorrt_lean_bindings", "tensorrt_rtx_bindings",
               "tensorrt_dispatch_bindings")
#: parameters that hold the TensorRT module by convention (also where a caller passes it
#: through a dynamic call the scan cannot follow, e.g. ``OpPlugin.output_shapes(trt, ...)``)
MODULE_PARAMS = frozenset({"trt", "trt_module"})

#: variable, parameter or ``self.`` attribute name -> the TensorRT class it holds, for values the
#: scan knows come from TensorRT but cannot type itself (a ``func.name`` key wins over ``name``).
#: A parameter with one of these names is taken to hold that class even when no caller is seen.
OBJECT_TYPES = {
    # engines/trt_runner.py
    "engine": "ICudaEngine",
    "self.engine": "ICudaEngine",
    "ctx": "IExecutionContext",
    "self.context": "IExecutionContext",
    # engines/builder.py
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "layer": "ILayer",
    # plugins/__init__.py, plugins/python_plugins.py
    "registry": "IPluginRegistry",
    "fc": "PluginFieldCollection",
    "pf": "PluginField",
    "desc": "PluginTensorDesc",
    "in_out": "list[DynamicPluginTensorDesc]",
    "input_desc": "list[PluginTensorDesc]",
    "output_desc": "list[PluginTensorDesc]",
    "exprs": "IExprBuilder",
    "expr_builder": "IExprBuilder",
}
#: (class, attribute) -> the class of ``x.attribute`` / ``x.attribute(...)``, for chains;
#: class "" is the module (``trt.get_plugin_registry()``)
RESULT_TYPES = {
    ("INetworkDefinition", "get_layer"): "ILayer",
    ("ILayer", "get_output"): "ITensor",
    ("INetworkDefinition", "get_output"): "ITensor",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("DynamicPluginTensorDesc", "desc"): "PluginTensorDesc",
    ("PluginField", "type"): "PluginFieldType",
}
#: class -> the class of its elements (``for pf in fc``)
ELEMENT_TYPES = {"PluginFieldCollection": "PluginField"}
#: attributes the plugin classes (subclasses of TensorRT classes) add themselves
PLUGIN_OWN = frozenset({"attrs", "kernel"})
#: builder/parser side of TensorRT: checked in TensorRT-RTX, the rest in the lean runtime.
#: TensorFormat: the lean bindings do not bind the enum (PluginTensorDesc.format they do); the
#: plugins compare it only in supports_format_combination, which only a builder calls.
BUILDER_APIS = frozenset({
    "Builder", "OnnxParser", "IBuilderConfig", "INetworkDefinition", "IOptimizationProfile",
    "ILayer", "ITensor", "ITimingCache", "IHostMemory", "BuilderFlag", "MemoryPoolType",
    "NetworkDefinitionCreationFlag", "LayerType", "TensorFormat",
})
#: (class, name) of TensorRT 10's weakly typed build path, which TensorRT-RTX (strongly typed,
#: like TensorRT 11) does not have: checked in tensorrt-stubs 10.13. engines/builder.py reaches
#: them only when ``getattr(trt.BuilderFlag, "FP16"/"BF16", None)`` is not None.
TRT10_ONLY = {
    ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"): "precision constraints (TensorRT 10 fp16/bf16)",
    ("ILayer", "precision"): "per-layer precision (weakly typed networks)",
    ("ILayer", "set_output_type"): "per-output type (weakly typed networks)",
}


# --- values of the dataflow -----------------------------------------------------------------

@dataclass(frozen=True)
class Mod:
    """The TensorRT module."""


@dataclass(frozen=True)
class Cls:
    """A TensorRT class (or enum) object, ``trt.X``."""

    name: str


@dataclass(frozen=True)
class Obj:
    """An instance of a TensorRT class (``list[X]``: a list of them)."""

    cls: str


@dataclass(frozen=True)
class AnyOf:
    """A value whose attributes must exist on one of these TensorRT classes (a subclass)."""

    classes: tuple[str, ...]


@dataclass(frozen=True)
class Unk:
    """Derived from TensorRT, class not known; ``origin`` says where it came from."""

    origin: str


@dataclass(frozen=True)
class Seq:
    """A tuple or list display (or a tuple annotation)."""

    items: tuple[Any, ...]


@dataclass(frozen=True)
class SeqOf:
    """A collection whose elements are all ``elem``."""

    elem: Any


@dataclass(frozen=True)
class Strs:
    """One of these string constants (a comprehension over literals)."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Zip:
    """``zip(...)``: its elements are tuples of these."""

    elems: tuple[Any, ...]


@dataclass(frozen=True)
class Func:
    """A function defined in a scanned file."""

    module: str
    name: str
    node_id: int


@dataclass(frozen=True)
class ModRef:
    """A scanned module, imported."""

    module: str


@dataclass
class ClassInfo:
    key: int  # id of its ClassDef
    name: str
    trt_bases: tuple[str, ...]
    own: set[str]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class SelfOf:
    info_id: int


def _tensorrt_ish(v: Any) -> bool:
    return isinstance(v, (Mod, Cls, Obj, AnyOf, Unk, Seq, SeqOf, Zip))


def _better(old: Any, new: Any) -> Any:
    """Merge two values seen for one parameter: a typed one wins over an untyped one."""
    if old is None:
        return new
    if new is None or isinstance(old, (Mod, Obj, Cls, AnyOf)):
        return old
    if isinstance(old, Unk) and isinstance(new, (Mod, Obj, Cls, AnyOf)):
        return new
    return old


@dataclass(frozen=True)
class Use:
    """One use of a TensorRT API: ``owner`` () for the module, (C,) for class C, several for
    "any of these bases" (a plugin method or attribute)."""

    file: str
    line: int
    owner: tuple[str, ...]
    name: str
    kind: str  # "use", "store", "override", "guard"
    scope: int

    @property
    def api(self) -> str:
        if not self.owner:
            return f"trt.{self.name}"
        return f"{'|'.join(self.owner)}.{self.name}"


@dataclass
class Report:
    uses: list[Use] = field(default_factory=list)
    guards: set[tuple[int, tuple[str, ...], str]] = field(default_factory=set)
    #: getattr/hasattr with a computed name: (file:line, scope, owner, the name's expression,
    #: whether this call guards it); see :meth:`dynamic_uses`
    dynamic: list[tuple[str, int, tuple[str, ...], str, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    used_mapping: set[str] = field(default_factory=set)

    def dynamic_uses(self) -> list[tuple[str, str, bool]]:
        """(file:line, ``Owner.<expr>``, guarded): guarded by itself or by a guard with the same
        name expression in the same function (``getattr(C, n) for n in ... if hasattr(C, n)``)."""
        guards = {(sc, o, e) for _, sc, o, e, g in self.dynamic if g}
        return [(at, f"{'.'.join(o) or 'trt'}.<{e}>", g or (sc, o, e) in guards)
                for at, sc, o, e, g in self.dynamic]

    def guarded(self, use: Use) -> bool:
        return use.kind == "guard" or (use.scope, use.owner, use.name) in self.guards

    def apis(self) -> dict[tuple[tuple[str, ...], str], list[Use]]:
        """Each API once, with every place that uses it."""
        out: dict[tuple[tuple[str, ...], str], list[Use]] = {}
        for u in self.uses:
            out.setdefault((u.owner, u.name), []).append(u)
        return out

    def is_guarded(self, key: tuple[tuple[str, ...], str]) -> bool:
        """Guarded wherever it is used."""
        return all(self.guarded(u) for u in self.apis()[key])


class Env:
    def __init__(self, parent: Env | None, module: str, scope: int, func: str = "",
                 func_id: int | None = None) -> None:
        self.vars: dict[str, Any] = {}
        self.parent, self.module, self.scope, self.func, self.func_id = (
            parent, module, scope, func, func_id)

    def lookup(self, name: str) -> tuple[bool, Any]:
        env: Env | None = self
        while env is not None:
            if name in env.vars:
                return True, env.vars[name]
            env = env.parent
        return False, None


_TRY_STAR = tuple(t for t in (getattr(ast, "TryStar", None),) if t is not None)  # 3.11+
_BUILTIN_COLLECTIONS = frozenset({"tuple", "list", "set", "frozenset", "sorted", "reversed"})


class Scanner:
    """The dataflow over ``sources`` (import name -> (label, source text))."""

    def __init__(self, sources: dict[str, tuple[str, str]]) -> None:
        self.labels = {m: label for m, (label, _) in sources.items()}
        self.trees = {m: ast.parse(src, label) for m, (label, src) in sources.items()}
        self.top_defs = {m: {n.name: n for n in t.body
                             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                         for m, t in self.trees.items()}
        self.defs = {id(n): n for t in self.trees.values() for n in ast.walk(t)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.requirements = {id(c) for t in self.trees.values() for c in _requirement_calls(t)}
        # what a pass learns (arguments bound to parameters, functions that return the module,
        # functions seen called, self attributes); the next pass reads it and learns afresh,
        # until nothing changes
        self.params: dict[int, dict[str, Any]] = {}
        self.factories: set[int] = set()
        self.called: set[int] = set()
        self.classes: dict[int, ClassInfo] = {}
        self.module_envs: dict[str, Env] = {}
        self._fresh()

    # -- driver ------------------------------------------------------------------------------

    def _fresh(self) -> None:
        self.new_params: dict[int, dict[str, Any]] = {}
        self.new_factories: set[int] = set()
        self.new_called: set[int] = set()
        self.new_attrs: dict[int, dict[str, Any]] = {}

    def run(self) -> Report:
        for _ in range(20):
            self._pass()
            learned = (self.new_params, self.new_factories, self.new_called, self.new_attrs)
            same = _canon(learned) == _canon(
                (self.params, self.factories, self.called,
                 {k: c.attrs for k, c in self.classes.items()}))
            self.params, self.factories, self.called = learned[:3]
            for k, c in self.classes.items():
                c.attrs = self.new_attrs.get(k, {})
            self._fresh()
            if same:
                break
        return self.report

    def _pass(self) -> None:
        self.report = Report()
        self.queue: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, Env, ClassInfo | None]] = []
        for module, tree in self.trees.items():
            env = self.module_envs[module] = Env(None, module, id(tree))
            for name, node in self.top_defs[module].items():
                env.vars[name] = Func(module, name, id(node))
            self.exec_block(tree.body, env)
        while self.queue:
            node, parent, info = self.queue.pop(0)
            self.exec_function(node, parent, info)

    # -- recording ---------------------------------------------------------------------------

    def _line(self, env: Env, node: ast.AST) -> str:
        return f"{self.labels[env.module]}:{getattr(node, 'lineno', 0)}"

    def record(self, env: Env, node: ast.AST, owner: tuple[str, ...], name: str,
               kind: str = "use") -> None:
        self.report.uses.append(Use(self.labels[env.module], getattr(node, "lineno", 0), owner,
                                    name, kind, env.scope))
        if kind == "guard":
            self.report.guards.add((env.scope, owner, name))

    def typed(self, value: Any, key: str, env: Env) -> Any:
        """An untyped TensorRT value bound to ``key`` gets the class OBJECT_TYPES gives it."""
        if isinstance(value, Unk):
            for k in (f"{env.func}.{key}", key):
                if k in OBJECT_TYPES:
                    self.report.used_mapping.add(k)
                    return Obj(OBJECT_TYPES[k])
        return value

    # -- statements --------------------------------------------------------------------------

    def exec_block(self, body: Iterable[ast.stmt], env: Env) -> None:
        for stmt in body:
            self.exec_stmt(stmt, env)

    def exec_stmt(self, s: ast.stmt, env: Env) -> None:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in s.decorator_list:
                self.eval(d, env)
            env.vars[s.name] = Func(env.module, s.name, id(s))
            self.queue.append((s, env, None))
        elif isinstance(s, ast.ClassDef):
            self.exec_class(s, env)
        elif isinstance(s, ast.Assign):
            v = self.eval(s.value, env)
            for t in s.targets:
                self.bind(t, v, env)
        elif isinstance(s, ast.AnnAssign):
            ann = self.eval_annotation(s.annotation, env)
            v = self.eval(s.value, env) if s.value is not None else None
            self.bind(s.target, ann if ann is not None else v, env, load_only=s.value is None)
        elif isinstance(s, ast.AugAssign):
            self.eval(s.value, env)
            self.eval(s.target, env)
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            self.bind(s.target, self.elem(self.eval(s.iter, env)), env)
            self.exec_block(s.body, env)
            self.exec_block(s.orelse, env)
        elif isinstance(s, (ast.If, ast.While)):
            self.eval(s.test, env)
            self.exec_block(s.body, env)
            self.exec_block(s.orelse, env)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                v = self.eval(item.context_expr, env)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, v, env)
            self.exec_block(s.body, env)
        elif isinstance(s, (ast.Try, *_TRY_STAR)):
            self.exec_block(s.body, env)
            for h in s.handlers:
                if h.type is not None:
                    self.eval(h.type, env)
                if h.name:
                    env.vars[h.name] = None
                self.exec_block(h.body, env)
            self.exec_block(s.orelse, env)
            self.exec_block(s.finalbody, env)
        elif isinstance(s, ast.Return):
            v = self.eval(s.value, env) if s.value is not None else None
            if isinstance(v, Mod) and env.func_id is not None:
                self.new_factories.add(env.func_id)
        elif isinstance(s, ast.Import):
            for a in s.names:
                top = a.name.split(".")[0]
                env.vars[a.asname or top] = (Mod() if (a.asname and a.name in TRT_MODULES)
                                             or (not a.asname and top in TRT_MODULES) else None)
        elif isinstance(s, ast.ImportFrom):
            self.exec_import_from(s, env)
        elif isinstance(s, (ast.Global, ast.Nonlocal, ast.Pass, ast.Break, ast.Continue)):
            pass
        else:  # Expr, Raise, Assert, Delete, Match, ...: evaluate what is in it
            for child in ast.iter_child_nodes(s):
                if isinstance(child, ast.expr):
                    self.eval(child, env)
                elif isinstance(child, ast.stmt):
                    self.exec_stmt(child, env)
                elif isinstance(child, ast.match_case):
                    self.exec_block(child.body, env)

    def exec_import_from(self, s: ast.ImportFrom, env: Env) -> None:
        module = s.module or ""
        for a in s.names:
            local = a.asname or a.name
            if module in TRT_MODULES:
                self.record(env, s, (), a.name)
                env.vars[local] = Cls(a.name) if a.name[:1].isupper() else Unk(f"trt.{a.name}")
            elif f"{module}.{a.name}" in self.trees:
                env.vars[local] = ModRef(f"{module}.{a.name}")
            elif module in self.trees and a.name in self.top_defs[module]:
                env.vars[local] = Func(module, a.name, id(self.top_defs[module][a.name]))
            else:
                env.vars[local] = None

    def exec_class(self, s: ast.ClassDef, env: Env) -> None:
        for d in s.decorator_list:
            self.eval(d, env)
        bases: list[str] = []
        for b in s.bases:
            v = self.eval(b.value if isinstance(b, ast.Starred) else b, env)
            for item in (v.items if isinstance(v, Seq) else (v,)):
                if isinstance(item, Cls):
                    bases.append(item.name)
        for k in s.keywords:
            self.eval(k.value, env)
        info = self.classes.get(id(s))
        if info is None:
            info = self.classes[id(s)] = ClassInfo(id(s), s.name, tuple(bases), set(), {})
        info.trt_bases = tuple(bases)
        body_env = Env(env, env.module, env.scope, env.func, env.func_id)
        for stmt in s.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                info.own.add(stmt.name)
                for d in stmt.decorator_list:
                    self.eval(d, env)
                if info.trt_bases and not _private(stmt.name) and stmt.name not in PLUGIN_OWN:
                    # TensorRT calls it: it must override a method of a base
                    self.record(env, stmt, info.trt_bases, stmt.name, "override")
                self.queue.append((stmt, env, info))  # methods see the enclosing scope
            else:
                for t in _targets(stmt):
                    info.own.add(t)
                self.exec_stmt(stmt, body_env)
        env.vars[s.name] = None

    def exec_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, parent: Env,
                      info: ClassInfo | None) -> None:
        env = Env(parent, parent.module, id(node), node.name, id(node))
        a = node.args
        params = [*a.posonlyargs, *a.args]
        extra = [*a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x is not None]
        decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
        method = info is not None and "staticmethod" not in decorators
        bound = self.params.get(id(node), {})
        # a function that takes the TensorRT module but is only called where the scan cannot
        # follow (OpPlugin.output_shapes(trt, ...)): its untyped parameters are TensorRT's
        callback = info is None and id(node) not in self.called and any(
            p.arg in MODULE_PARAMS or isinstance(bound.get(p.arg), Mod) for p in params)
        for i, arg in enumerate([*params, *extra]):
            if method and i == 0:
                v: Any = None if "classmethod" in decorators else SelfOf(info.key)
            else:
                v = self.eval_annotation(arg.annotation, env) if arg.annotation else None
                v = _better(v, bound.get(arg.arg))
                if v is None and arg.arg in MODULE_PARAMS:
                    v = Mod()
                if (v is None and info is not None and info.trt_bases
                        and node.name != "__init__"):
                    v = Unk(f"argument {arg.arg!r} TensorRT passes to {info.name}.{node.name}")
                if v is None and (f"{node.name}.{arg.arg}" in OBJECT_TYPES
                                  or arg.arg in OBJECT_TYPES):
                    v = Unk(f"parameter {arg.arg!r} of {node.name}")
                if v is None and callback and (arg.annotation is None or (
                        isinstance(arg.annotation, ast.Name) and arg.annotation.id == "Any")):
                    v = Unk(f"parameter {arg.arg!r} of {node.name}, which takes the TensorRT "
                            "module and is called where the scan cannot follow")
                v = self.typed(v, arg.arg, env)
            env.vars[arg.arg] = v
        for d in [*a.defaults, *a.kw_defaults]:
            if d is not None:
                self.eval(d, parent)
        if node.returns is not None:
            self.eval_annotation(node.returns, env)
        self.exec_block(node.body, env)

    # -- binding -----------------------------------------------------------------------------

    def bind(self, t: ast.expr, v: Any, env: Env, load_only: bool = False) -> None:
        if isinstance(t, ast.Name):
            if not load_only:
                env.vars[t.id] = self.typed(v, t.id, env)
        elif isinstance(t, ast.Attribute):
            recv = self.eval(t.value, env)
            if isinstance(recv, SelfOf):
                info = _info(self, recv)
                self.self_attr(info, t.attr, t, env, "store")
                if not load_only and v is not None:
                    attrs = self.new_attrs.setdefault(recv.info_id, {})
                    attrs[t.attr] = _better(attrs.get(t.attr),
                                            self.typed(v, f"self.{t.attr}", env))
            else:
                self.attr(recv, t.attr, t, env, "store")
        elif isinstance(t, (ast.Tuple, ast.List)):
            n = len(t.elts)
            if isinstance(v, Seq) and len(v.items) == n:
                items = list(v.items)
            elif isinstance(v, Unk):
                items = [Unk(f"{v.origin}[{i}]") for i in range(n)]
            else:
                items = [self.elem(v)] * n
            for e, item in zip(t.elts, items, strict=True):
                self.bind(e.value if isinstance(e, ast.Starred) else e,
                          None if isinstance(e, ast.Starred) else item, env)
        elif isinstance(t, ast.Subscript):
            self.eval(t.value, env)
            self.eval(t.slice, env)
        elif isinstance(t, ast.Starred):
            self.bind(t.value, None, env)

    def elem(self, v: Any) -> Any:
        """What iterating over ``v`` yields."""
        if isinstance(v, Seq):
            known = [i for i in v.items if i is not None]
            if known and all(isinstance(i, Cls) for i in known):
                return AnyOf(tuple(i.name for i in known))
            return known[0] if known and all(i == known[0] for i in known) else None
        if isinstance(v, SeqOf):
            return v.elem
        if isinstance(v, Zip):
            return Seq(v.elems)
        if isinstance(v, Strs):
            return v
        if isinstance(v, Obj):
            if v.cls.startswith("list[") and v.cls.endswith("]"):
                return Obj(v.cls[5:-1])
            if v.cls in ELEMENT_TYPES:
                return Obj(ELEMENT_TYPES[v.cls])
            return Unk(f"an element of {v.cls}")
        if isinstance(v, Unk):
            return Unk(f"an element of {v.origin}")
        return None

    # -- expressions -------------------------------------------------------------------------

    def attr(self, recv: Any, name: str, node: ast.AST, env: Env, kind: str = "use") -> Any:
        """Record ``recv.name`` when ``recv`` is TensorRT's; the value of the expression."""
        dunder = name.startswith("__") and name.endswith("__")
        if isinstance(recv, Mod):
            self.record(env, node, (), name, kind)
            if name[:1].isupper():
                return Cls(name)
            res = RESULT_TYPES.get(("", name))
            return Obj(res) if res else (None if dunder else Unk(f"trt.{name}"))
        if isinstance(recv, Cls):
            if dunder:
                return None
            self.record(env, node, (recv.name,), name, kind)
            return Obj(recv.name) if name.isupper() else Unk(f"{recv.name}.{name}")
        if isinstance(recv, Obj):
            if recv.cls.startswith("list["):
                return None  # list methods
            if dunder:
                return None
            self.record(env, node, (recv.cls,), name, kind)
            res = RESULT_TYPES.get((recv.cls, name))
            return Obj(res) if res else Unk(f"{recv.cls}.{name}")
        if isinstance(recv, AnyOf):
            if not dunder:
                self.record(env, node, recv.classes, name, kind)
            return None
        if isinstance(recv, SelfOf):
            return self.self_attr(_info(self, recv), name, node, env, kind)
        if isinstance(recv, Unk):
            what = ast.unparse(node.value) if isinstance(node, ast.Attribute) else "?"
            self.report.errors.append(
                f"{self._line(env, node)}: `{what}.{name}`: `{what}` holds a TensorRT object "
                f"({recv.origin}) whose class the scan does not know: add its name to "
                "OBJECT_TYPES (or the chain to RESULT_TYPES) in tests/test_tensorrt_api.py")
            return None  # reported once, not again for the rest of the chain
        if isinstance(recv, ModRef) and name in self.top_defs.get(recv.module, {}):
            return Func(recv.module, name, id(self.top_defs[recv.module][name]))
        return None

    def self_attr(self, info: ClassInfo, name: str, node: ast.AST, env: Env, kind: str) -> Any:
        if info.trt_bases and not (_private(name) or name in info.own or name in PLUGIN_OWN):
            self.record(env, node, info.trt_bases, name, kind)
        return info.attrs.get(name)  # as the previous pass learned it

    def eval_annotation(self, node: ast.expr | None, env: Env) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.Subscript):
            head = node.value.id if isinstance(node.value, ast.Name) else ""
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            vals = [self.eval_annotation(x, env) for x in args]
            if head == "tuple" and any(v is not None for v in vals):
                return Seq(tuple(vals))
            if head == "list" and len(vals) == 1 and isinstance(vals[0], Obj):
                return Obj(f"list[{vals[0].cls}]")
            return None
        if isinstance(node, ast.BinOp):  # X | None
            left = self.eval_annotation(node.left, env)
            right = self.eval_annotation(node.right, env)
            return left if left is not None else right
        v = self.eval(node, env)
        return Obj(v.name) if isinstance(v, Cls) else None

    def call_func(self, f: Func, args: list[Any], keywords: dict[str, Any]) -> Any:
        node = self.defs[f.node_id]
        a = node.args
        params = [p.arg for p in [*a.posonlyargs, *a.args]]
        bound = self.new_params.setdefault(f.node_id, {})
        self.new_called.add(f.node_id)
        pairs = list(zip(params, args, strict=False)) + [
            (k, v) for k, v in keywords.items()
            if k in params or k in {p.arg for p in a.kwonlyargs}]
        for p, v in pairs:
            if _tensorrt_ish(v) or isinstance(v, Strs):
                bound[p] = _better(bound.get(p), v)
        if f.node_id in self.factories:
            return Mod()
        if node.returns is not None:
            # evaluated where the function is defined (its module's `trt`), recording nothing
            uses = len(self.report.uses)
            value = self.eval_annotation(node.returns, self.module_envs.get(f.module)
                                         or Env(None, f.module, f.node_id))
            del self.report.uses[uses:]
            return value
        return None

    def eval_guard(self, node: ast.Call, fname: str, env: Env) -> Any:
        recv = self.eval(node.args[0], env)
        for x in node.args[1:]:
            self.eval(x, env)
        owner = _owner(self, recv)
        if owner is None or len(node.args) < 2:
            return None
        key = node.args[1]
        has_default = fname == "getattr" and len(node.args) >= 3
        guard = (fname == "hasattr" and id(node) not in self.requirements) or has_default
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            if fname == "getattr":
                if not guard:
                    return self.attr(recv, key.value, node, env)
                self.record(env, node, owner, key.value, "guard")
                return self.attr_value(recv, key.value)
            self.record(env, node, owner, key.value, "guard" if guard else "use")
            return None
        self.report.dynamic.append((self._line(env, node), env.scope, owner, ast.unparse(key),
                                    guard))
        return Unk(f"getattr(..., {ast.unparse(key)})") if fname == "getattr" else None

    def attr_value(self, recv: Any, name: str) -> Any:
        """The value of ``recv.name`` without recording it (it was recorded as a guard)."""
        if isinstance(recv, Mod):
            return Cls(name) if name[:1].isupper() else Unk(f"trt.{name}")
        if isinstance(recv, Cls):
            return Obj(recv.name) if name.isupper() else Unk(f"{recv.name}.{name}")
        return Unk(f"{recv}.{name}")

    def eval(self, node: ast.expr | None, env: Env) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env.lookup(node.id)[1]
        if isinstance(node, ast.Attribute):
            return self.attr(self.eval(node.value, env), node.attr, node, env)
        if isinstance(node, ast.Call):
            fname = node.func.id if isinstance(node.func, ast.Name) else None
            shadowed = fname is not None and env.lookup(fname)[0]
            if fname in ("hasattr", "getattr") and not shadowed and node.args:
                return self.eval_guard(node, fname, env)
            f = self.eval(node.func, env)
            args = [self.eval(x.value if isinstance(x, ast.Starred) else x, env)
                    for x in node.args]
            kwargs = {k.arg: self.eval(k.value, env) for k in node.keywords if k.arg}
            for k in node.keywords:
                if not k.arg:
                    self.eval(k.value, env)
            if fname == "lazy_import" and args:
                first = node.args[0]
                names = ((first.value,) if isinstance(first, ast.Constant) else
                         args[0].values if isinstance(args[0], Strs) else ())
                return Mod() if any(str(n).split(".")[0] in TRT_MODULES for n in names) else None
            if fname in _BUILTIN_COLLECTIONS and not shadowed and len(args) == 1:
                e = self.elem(args[0])
                return SeqOf(e) if e is not None else None
            if fname == "zip" and not shadowed:
                return Zip(tuple(self.elem(x) for x in args))
            if fname == "enumerate" and not shadowed and args:
                return Zip((None, self.elem(args[0])))
            if isinstance(f, Cls):
                return Obj(f.name)
            if isinstance(f, Func):
                return self.call_func(f, args, kwargs)
            if isinstance(f, Obj) and not f.cls.startswith("list["):
                return f  # a method's result: RESULT_TYPES gave it
            if isinstance(f, Unk):
                return Unk(f"{f.origin}()")
            return None
        if isinstance(node, ast.Subscript):
            v = self.eval(node.value, env)
            self.eval(node.slice, env)
            if isinstance(v, Seq) and isinstance(node.slice, ast.Constant):
                i = node.slice.value
                return v.items[i] if isinstance(i, int) and -len(v.items) <= i < len(
                    v.items) else None
            if isinstance(v, (Seq, SeqOf)) or (isinstance(v, Obj) and v.cls.startswith("list[")):
                return self.elem(v)
            if isinstance(v, Obj):
                return Unk(f"an item of {v.cls}")
            if isinstance(v, Unk):
                return Unk(f"an item of {v.origin}")
            return None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items: list[Any] = []
            for e in node.elts:
                v = self.eval(e.value if isinstance(e, ast.Starred) else e, env)
                items.extend(v.items if isinstance(e, ast.Starred) and isinstance(v, Seq)
                             else [v])
            if node.elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                 for e in node.elts):
                return Strs(tuple(str(getattr(e, "value", "")) for e in node.elts))
            return Seq(tuple(items)) if any(i is not None for i in items) else None
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            for g in node.generators:
                self.bind(g.target, self.elem(self.eval(g.iter, env)), env)
                for cond in g.ifs:
                    self.eval(cond, env)
            if isinstance(node, ast.DictComp):
                self.eval(node.key, env)
                self.eval(node.value, env)
                return None
            e = self.eval(node.elt, env)
            return SeqOf(e) if e is not None else None
        if isinstance(node, ast.IfExp):
            self.eval(node.test, env)
            body, orelse = self.eval(node.body, env), self.eval(node.orelse, env)
            return body if body is not None else orelse
        if isinstance(node, ast.BoolOp):
            vals = [self.eval(x, env) for x in node.values]
            return next((v for v in vals if v is not None), None)
        if isinstance(node, ast.NamedExpr):
            v = self.eval(node.value, env)
            self.bind(node.target, v, env)
            return v
        if isinstance(node, ast.Lambda):
            lam = Env(env, env.module, env.scope, env.func, env.func_id)
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                lam.vars[arg.arg] = Mod() if arg.arg in MODULE_PARAMS else None
            self.eval(node.body, lam)
            return None
        for child in ast.iter_child_nodes(node):  # BinOp, Compare, JoinedStr, Dict, ...
            if isinstance(child, ast.expr):
                self.eval(child, env)
        return None


def _canon(x: Any) -> str:
    """A comparable text of nested dicts and sets."""
    if isinstance(x, dict):
        return "{" + ",".join(f"{k!r}:{_canon(v)}" for k, v in sorted(x.items())) + "}"
    if isinstance(x, (set, frozenset)):
        return repr(sorted(x))
    if isinstance(x, tuple):
        return "(" + ",".join(_canon(v) for v in x) + ")"
    return repr(x)


def _private(name: str) -> bool:
    return name.startswith("_")


def _targets(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return [n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    return []


def _info(scanner: Scanner, s: SelfOf) -> ClassInfo:
    return scanner.classes[s.info_id]


def _owner(scanner: Scanner, v: Any) -> tuple[str, ...] | None:
    if isinstance(v, Mod):
        return ()
    if isinstance(v, Cls):
        return (v.name,)
    if isinstance(v, Obj) and not v.cls.startswith("list["):
        return (v.cls,)
    if isinstance(v, AnyOf):
        return v.classes
    if isinstance(v, SelfOf) and _info(scanner, v).trt_bases:
        return _info(scanner, v).trt_bases
    return None


def _requirement_calls(tree: ast.AST) -> Iterable[ast.Call]:
    """``if not hasattr(x, "N"): ... raise``: N is required, not guarded."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp)
                and isinstance(node.test.op, ast.Not) and isinstance(node.test.operand, ast.Call)
                and isinstance(node.test.operand.func, ast.Name)
                and node.test.operand.func.id == "hasattr"
                and node.body and isinstance(node.body[-1], ast.Raise)):
            yield node.test.operand


def scan(sources: dict[str, tuple[str, str]]) -> Report:
    """Every TensorRT API used in ``sources`` (import name -> (label, source text))."""
    return Scanner(sources).run()


def scan_project() -> Report:
    return scan({m: (p, (ROOT / p).read_text()) for m, p in SOURCES.items()})


# --- where each API is checked --------------------------------------------------------------

def target(key: tuple[tuple[str, ...], str]) -> str:
    """``stubs`` (TensorRT 10 only), ``rtx`` (builder/parser) or ``lean`` (runtime/plugins)."""
    owner, name = key
    if len(owner) == 1 and (owner[0], name) in TRT10_ONLY:
        return "stubs"
    if (not owner and name in BUILDER_APIS) or any(o in BUILDER_APIS for o in owner):
        return "rtx"
    return "lean"


_PROBE = """
import json, sys
mod = __import__(sys.argv[1])
out = []
for owner, name in json.loads(sys.stdin.read()):
    if not owner:
        out.append([hasattr(mod, name), "", []])
        continue
    missing = [c for c in owner if not hasattr(mod, c)]
    where = next((c for c in owner if hasattr(getattr(mod, c, None), name)), "")
    out.append([bool(where), where, missing])
print("PROBE" + json.dumps(out))
"""


def probe(module: str, keys: list[tuple[tuple[str, ...], str]]) -> list[tuple[bool, str, list]]:
    """Which of ``keys`` exist in the TensorRT module ``module``, in a subprocess (the bindings
    load CUDA libraries; a crash stays there). Skips (fails with CI=true) when not installed."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, module],
                          input=json.dumps([[list(o), n] for o, n in keys]),
                          capture_output=True, text=True, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE")), None)
    if proc.returncode != 0 or line is None:
        why = (f"{module} is not importable here (pip install tensorrt-lean-cu13-libs "
               "tensorrt-lean-cu13-bindings tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings, "
               f"as .ci/plugins.sh does): {proc.stderr.strip().splitlines()[-1:]}")
        if IN_CI:
            pytest.fail("CI must run this: " + why)
        pytest.skip(why)
    return [(bool(a), str(b), list(c)) for a, b, c in json.loads(line[len("PROBE"):])]


def stub_members() -> dict[str, set[str]] | None:
    """``{class: member names, "": module names}`` from tensorrt-stubs' .pyi, or None."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("tensorrt-stubs")
    except PackageNotFoundError:
        return None
    pyi = next((f for f in dist.files or [] if str(f).endswith("tensorrt_bindings/tensorrt.pyi")),
               None)
    if pyi is None:
        return None
    # read line by line: the generated .pyi is not all valid Python (a parameter without a
    # default after defaults), so ast cannot parse it
    members: dict[str, set[str]] = {"": set()}
    cls = ""
    for line in Path(str(dist.locate_file(pyi))).read_text().splitlines():
        m = re.match(r"( *)(?:class|def) (\w+)|( *)(\w+)\s*[:=]", line)
        if not m:
            continue
        indent, name = (m.group(1), m.group(2)) if m.group(2) else (m.group(3), m.group(4))
        if not indent:
            members[""].add(name)
            cls = name if line.startswith("class ") else ""
            members.setdefault(cls, set()) if cls else None
        elif len(indent) == 4 and cls:
            members[cls].add(name)
    return members


def _check(report: Report, where: str, module: str) -> tuple[list[str], list[str], list[str]]:
    """(verified, missing and unguarded, missing but guarded) lines for the APIs of ``where``."""
    apis = report.apis()
    keys = sorted(k for k in apis if target(k) == where)
    assert keys, f"the scan found no API to check in {module}"
    ok, bad, allowed = [], [], []
    for key, (found, base, missing) in zip(keys, probe(module, keys), strict=True):
        uses = apis[key]
        at = ", ".join(sorted({f"{u.file}:{u.line}" for u in uses}))
        name = f"trt.{key[1]}" if not key[0] else f"{base or '|'.join(key[0])}.{key[1]}"
        line = f"{name} ({at})"
        if found:
            ok.append(line)
        elif report.is_guarded(key):
            allowed.append(f"{line}: not in {module}; guarded by hasattr/getattr")
        else:
            extra = f" ({', '.join(missing)} missing)" if missing else ""
            bad.append(f"{line}: not in {module}{extra}")
    return ok, bad, allowed


# --- tests ----------------------------------------------------------------------------------

_SELF_TEST = '''
from typing import TYPE_CHECKING, Any
if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = lazy_import("tensorrt", "pip install tensorrt")

def setup(trt: Any) -> int:
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return flags

class Runner:
    def __init__(self, engine: trt.ICudaEngine) -> None:
        if not hasattr(trt, "Runtime"):
            raise RuntimeError("no runtime")
        self.context: trt.IExecutionContext = engine.create_execution_context()
        self.out = trt.TensorIOMode.OUTPUT

    def run(self, stream: int) -> bool:
        ctx = self.context
        ctx.set_tensor_address("x", 0)
        return self.context.execute_async_v3(stream)

def plugin_base(trt: Any) -> type:
    class P(trt.IPluginV3, trt.IPluginV3OneBuild):
        def get_output_data_types(self, input_types):
            self.num_outputs = 1
            self.attrs = {}
            return [trt.DataType.BF16]
    return P

def shapes(trt: Any, exprs: Any):
    return exprs.operation(trt.DimensionOperation.CEIL_DIV, exprs.constant(1), exprs.constant(2))
'''


def test_scanner_finds_known_uses() -> None:
    report = scan({"selftest": ("selftest.py", _SELF_TEST)})
    assert report.errors == []
    found = {u.api for u in report.uses}
    for api in ("trt.Runtime", "trt.TensorIOMode", "TensorIOMode.OUTPUT",
                "ICudaEngine.create_execution_context", "IExecutionContext.execute_async_v3",
                "IExecutionContext.set_tensor_address", "trt.IPluginV3OneBuild",
                "IPluginV3|IPluginV3OneBuild.get_output_data_types",
                "IPluginV3|IPluginV3OneBuild.num_outputs", "DataType.BF16",
                "IExprBuilder.operation", "IExprBuilder.constant",
                "DimensionOperation.CEIL_DIV", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"):
        assert api in found, (api, sorted(found))
    assert "IPluginV3|IPluginV3OneBuild.attrs" not in found  # the plugin's own (PLUGIN_OWN)
    assert report.is_guarded((("NetworkDefinitionCreationFlag",), "EXPLICIT_BATCH"))
    assert not report.is_guarded(((), "Runtime"))  # `if not hasattr(...): raise` requires it
    assert not report.is_guarded((("IExecutionContext",), "execute_async_v3"))
    assert target(((), "Builder")) == "rtx" and target((("ICudaEngine",), "x")) == "lean"


def test_scanner_fails_loudly_on_an_untyped_tensorrt_object() -> None:
    """A TensorRT-derived value whose class no annotation, constructor or mapping gives."""
    src = ("import tensorrt as trt\n"
           "def f():\n"
           "    widget = trt.Runtime(None).deserialize_cuda_engine(b'')\n"
           "    return widget.layer_info()\n"
           "class P(trt.IPluginV3OneBuild):\n"
           "    def supports_format_combination(self, pos, tensors, num_inputs):\n"
           "        return tensors[pos].desc.type\n"
           "def shapes(trt, attrs: dict, eb: Any):\n"  # called back through a dataclass field
           "    return eb.constant(attrs['n'])\n")
    errors = scan({"selftest": ("selftest.py", src)}).errors
    assert len(errors) == 3, errors
    assert "selftest.py:4: `widget.layer_info`" in errors[0]
    assert "selftest.py:7: `tensors[pos].desc`" in errors[1]
    assert "'tensors' TensorRT passes to P.supports_format_combination" in errors[1]
    assert "selftest.py:9: `eb.constant`" in errors[2]


def test_every_tensorrt_object_is_typed() -> None:
    """No ``x.attr`` on a TensorRT object of unknown class, each file uses TensorRT, and the
    explicit exception lists are still needed."""
    report = scan_project()
    assert report.errors == [], "\n".join(report.errors)
    files = {u.file for u in report.uses}
    assert files == set(SOURCES.values()), f"no TensorRT use in {set(SOURCES.values()) - files}"
    used = set(report.apis())
    stale = [k for k in TRT10_ONLY if ((k[0],), k[1]) not in used]
    assert not stale, f"TRT10_ONLY entries the code no longer uses: {stale}"


def test_runtime_and_plugin_apis_exist_in_lean_tensorrt() -> None:
    """Runtime and plugin APIs in the runtime-only TensorRT 11 bindings."""
    ok, bad, allowed = _check(scan_project(), "lean", "tensorrt_lean_bindings")
    for line in allowed:
        warnings.warn(line, stacklevel=1)
    assert not bad, "TensorRT APIs missing from the lean TensorRT bindings:\n  " + "\n  ".join(bad)
    assert ok


def test_builder_apis_exist_in_tensorrt_rtx() -> None:
    """Builder and parser APIs in TensorRT-RTX's bindings (shared with TensorRT's builder)."""
    ok, bad, allowed = _check(scan_project(), "rtx", "tensorrt_rtx_bindings")
    for line in allowed:
        warnings.warn(line, stacklevel=1)
    assert not bad, "TensorRT builder APIs missing from TensorRT-RTX:\n  " + "\n  ".join(bad)
    assert ok


def test_tensorrt10_only_apis_exist_in_the_stubs() -> None:
    """The TensorRT 10 weakly typed path (not in RTX nor TensorRT 11) in tensorrt-stubs 10.13."""
    members = stub_members()
    if members is None:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps "
                    "tensorrt-stubs==10.13.0.35.1; .ci/typecheck.sh does)")
    report = scan_project()
    keys = [k for k in report.apis() if target(k) == "stubs"]
    missing = [f"{k[0][0]}.{k[1]}" for k in keys if k[1] not in members.get(k[0][0], set())]
    assert not missing, f"not in tensorrt-stubs 10.13: {missing}"


def main() -> None:
    """Print every TensorRT API the layer uses, where it is used and where it was checked."""
    report = scan_project()
    for err in report.errors:
        print("UNTYPED", err)
    members = stub_members() or {}
    for where, module in (("lean", "tensorrt_lean_bindings"), ("rtx", "tensorrt_rtx_bindings")):
        ok, bad, allowed = _check(report, where, module)
        for line in ok:
            print(f"ok       {module:24} {line}")
        for line in allowed:
            print(f"guarded  {module:24} {line}")
        for line in bad:
            print(f"MISSING  {module:24} {line}")
    for key, uses in sorted(report.apis().items()):
        if target(key) == "stubs":
            at = ", ".join(sorted({f"{u.file}:{u.line}" for u in uses}))
            state = "ok      " if key[1] in members.get(key[0][0], set()) else "MISSING "
            print(f"{state} {'tensorrt-stubs 10.13':24} {key[0][0]}.{key[1]} ({at})")
    for at, what, guard in report.dynamic_uses():
        print(f"dynamic  {'(not checked)':24} {what} ({at}){' guarded' if guard else ''}")
    unused = sorted(set(OBJECT_TYPES) - report.used_mapping)
    if unused:
        print("OBJECT_TYPES entries not needed by today's code:", ", ".join(unused))


if __name__ == "__main__":
    sys.exit(main())
