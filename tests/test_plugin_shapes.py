"""The plugins' output shapes are the ONNX graph's, at every ``evad`` node of real exports.

TensorRT asks a plugin for its output shapes as dimension expressions (``getOutputShapes`` /
``get_output_shapes``); the ONNX export has its own, from strict shape inference over the nodes'
model-local functions. Both must agree, node by node, or an engine's tensors differ from the
graph the parity tests check. Here, on a CPU:

- the C++ plugins (libevad_plugins.so) get their inputs' expressions from an expression builder
  of our own (plugins/common/tests/outputShapesTest.cpp implements TensorRT's VExprBuilder and
  VDimensionExpr), with the batch size a symbol, and the returned expressions are evaluated at
  several batch sizes;
- the Python plugins' shape functions (``python_plugins.OPS[op].output_shapes``) get the same
  inputs from a duck-typed ``trt`` namespace and builder (the runtime-only TensorRT bindings
  construct no IDimensionExpr without a builder of TensorRT's own).

A dimension the ONNX graph has as a number must come back a constant expression of that value; a
symbolic one (``batch``, ``20*batch``) must come back a non-constant expression with the same
value at every batch size tried. Exports: tiny at 96 x 192, vit_b_ktp at 288 x 512 and at
384 x 640, where the first pruning block keeps K = 4416 tokens, past TensorRT's built-in TopK
limit of 3840 (the reason KeyframeTopKPrune is a plugin).
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
import operator
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import skip_or_fail

from evad.op_contracts import CONTRACTS
from evad.plugins import build, python_plugins

#: batch sizes every expression is evaluated at (the export takes 1..1024)
BATCHES = (1, 2, 7, 1024)
#: the symbol of the export's dynamic batch dimension
BATCH = "batch"
#: TensorRT's built-in TopK handles K up to this
TOPK_LIMIT = 3840

#: A shape as both sides are compared: one string per dimension, ``c<value>`` for a constant,
#: ``e<value at each of BATCHES>`` (comma-separated) for an expression of the batch size.
Shape = list[str]



# --- the ONNX side -------------------------------------------------------------------------------

_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv}


def _dim_at(dim: int | str, batch: int) -> int:
    """An ONNX dimension's value at a batch size: a number, or a dim_param such as ``batch`` or
    ``20*batch`` (integer arithmetic on the one symbol; any other symbol is an error)."""
    if isinstance(dim, int):
        return dim

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id == BATCH:
            return batch
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"ONNX dimension {dim!r}: only integer arithmetic on {BATCH!r}")

    return ev(ast.parse(dim, mode="eval"))


def _linear(dim: int | str) -> tuple[int, int]:
    """(a, b) with dim = a * batch + b (what the C++ harness reads); checked at every batch."""
    b = _dim_at(dim, 0)
    a = _dim_at(dim, 1) - b
    assert all(_dim_at(dim, n) == a * n + b for n in BATCHES), f"{dim!r} is not linear in batch"
    return a, b


def _described(dims: list[int | str]) -> Shape:
    """The ONNX shape in the compared form: a number stays a constant, a dim_param must be an
    expression (even where it happens not to depend on the batch size)."""
    return [f"c{d}" if isinstance(d, int) else "e" + ",".join(str(_dim_at(d, n)) for n in BATCHES)
            for d in dims]


@dataclass(frozen=True)
class PluginNode:
    """One ``evad`` node of an export: its attributes as (name, kind, value), kind ``i`` for an
    ONNX INT (a TensorRT INT32 field) and ``f`` for a FLOAT (FLOAT32); the ONNX shapes of its
    inputs and outputs, each dimension a number or a dim_param."""

    name: str
    op: str
    attrs: tuple[tuple[str, str, int | float], ...]
    inputs: tuple[tuple[int | str, ...], ...]
    outputs: tuple[tuple[int | str, ...], ...]

    def expected(self) -> list[Shape]:
        return [_described(list(o)) for o in self.outputs]


@functools.cache
def _plugin_nodes(path: str) -> tuple[PluginNode, ...]:
    """The ``evad`` nodes of an exported model, with the shapes strict shape inference wrote into
    its value_info when the export checked it (``evad.export.check_model``)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    g = model.graph
    shapes: dict[str, tuple[int | str, ...]] = {}
    for vi in (*g.value_info, *g.input, *g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = []
            for d in t.shape.dim:
                assert d.HasField("dim_value") or d.HasField("dim_param"), \
                    f"{vi.name}: a dimension ONNX does not know"
                dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param)
            shapes[vi.name] = tuple(dims)
    shapes.update({t.name: tuple(t.dims) for t in g.initializer})
    kinds = {onnx.AttributeProto.INT: "i", onnx.AttributeProto.FLOAT: "f"}
    nodes = []
    for i, n in enumerate(g.node):
        if n.domain != "evad":
            continue
        attrs = []
        for a in n.attribute:
            assert a.type in kinds, f"{n.name}: attribute {a.name} is neither INT nor FLOAT"
            attrs.append((a.name, kinds[a.type], onnx.helper.get_attribute_value(a)))
        missing = [x for x in (*n.input, *n.output) if x not in shapes]
        assert not missing, f"{n.name}: no ONNX shape for {missing}"
        nodes.append(PluginNode(f"n{i}", n.op_type, tuple(attrs),
                                tuple(shapes[x] for x in n.input),
                                tuple(shapes[x] for x in n.output)))
    return tuple(nodes)


#: the size of the session's tiny export (conftest.tiny_onnx)
TINY = ("tiny", 96, 192)
#: (preset, height, width) of each export -> K of its KeyframeTopKPrune nodes, in graph order
KEPT: dict[tuple[str, int, int], tuple[int, ...]] = {
    TINY: (332, 211, 127),
    ("vit_b_ktp", 288, 512): (2650, 1683, 1006),
    ("vit_b_ktp", 384, 640): (4416, 2804, 1675),
}
EXPORTS = [pytest.param(key, id=f"{key[0]}-{key[1]}x{key[2]}",
                        marks=() if key == TINY else pytest.mark.slow) for key in KEPT]


def _checked_nodes(path: Path, ks: tuple[int, ...]) -> tuple[PluginNode, ...]:
    """The plugin nodes of an export, after checking it is the one the shapes are about: its
    pruning blocks keep these K tokens, its RoI heads pool 7 x 7 bins of a fixed number of boxes
    per clip (R = boxes * batch)."""
    nodes = _plugin_nodes(str(path))
    assert [n.outputs[1][1] for n in nodes if n.op == "KeyframeTopKPrune"] == list(ks)
    rois = [n.outputs[0] for n in nodes if n.op == "RoIAlign3D"]
    assert rois and all(isinstance(r[0], str) and r[3:] == (7, 7) for r in rois)
    assert len({_linear(r[0]) for r in rois}) == 1 and _linear(rois[0][0])[1] == 0
    return nodes


@pytest.fixture(scope="module", params=EXPORTS)
def plugin_nodes(request, exported_onnx) -> tuple[PluginNode, ...]:
    """The ``evad`` nodes of one export; the tiny one is the session's ``tiny_onnx`` (the same
    seeded model at the same size), so a full run exports it once."""
    key: tuple[str, int, int] = request.param
    if key == TINY:
        return _checked_nodes(request.getfixturevalue("tiny_onnx"), KEPT[key])
    return _checked_nodes(exported_onnx(*key), KEPT[key])


@pytest.fixture(scope="module")
def tiny_nodes(tiny_onnx) -> tuple[PluginNode, ...]:
    """The tiny export's nodes, for the checks that the comparison sees a wrong shape."""
    return _checked_nodes(tiny_onnx, KEPT[TINY])


def test_the_first_block_of_vit_b_at_384x640_needs_a_plugin() -> None:
    """Why 384 x 640 is among the exports: its first K is past TensorRT's TopK limit."""
    assert KEPT["vit_b_ktp", 384, 640][0] > TOPK_LIMIT >= max(KEPT["vit_b_ktp", 288, 512])


def test_onnx_dimensions_are_read_exactly() -> None:
    """ONNX dim_params are integer arithmetic on the batch symbol, nothing else."""
    assert [_dim_at("20*batch", 3), _dim_at("batch", 5), _dim_at(576, 9)] == [60, 5, 576]
    assert _dim_at("2*(batch+1)-3", 4) == 7 and _linear("2*(batch+1)-3") == (2, -1)
    assert _described([3, "batch", "20*batch"]) == ["c3", "e1,2,7,1024", "e20,40,140,20480"]
    for bad in ("height", "batch**2", "batch/2", "2.5*batch"):
        with pytest.raises(ValueError, match="only integer arithmetic"):
            _dim_at(bad, 1)
    with pytest.raises(AssertionError, match="not linear"):
        _linear("batch*batch")


# --- the C++ plugins -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shape_harness(plugin_library, tmp_path_factory) -> Callable[[list[str]], dict]:
    """``(node lines) -> {"builder": [PASS/FAIL lines], "nodes": {id: {"rc", "outputs"}},
    "fails": [...], "returncode": int}``: plugins/common/tests/outputShapesTest.cpp, compiled
    with the host compiler against the TensorRT headers, run over libevad_plugins.so."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        skip_or_fail("no host C++ compiler (g++)")
    inc = build.find_tensorrt_include() or build.kernel_lens_headers(
        build.default_build_dir() / "deps")
    exe = tmp_path_factory.mktemp("shapes") / "outputShapesTest"
    src = build.common_dir() / "tests" / "outputShapesTest.cpp"
    proc = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
                           "-Wno-deprecated-declarations", "-isystem", str(inc), "-isystem",
                           str(build.cuda_include_dir()), str(src), "-ldl", "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def run(lines: list[str]) -> dict:
        done = subprocess.run([str(exe), plugin_library, *map(str, BATCHES)],
                              input="".join(x + "\n" for x in lines), capture_output=True,
                              text=True, timeout=60)
        out: dict = {"builder": [], "nodes": {}, "fails": [], "returncode": done.returncode,
                     "stderr": done.stderr}
        for line in done.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "PASS":
                out["builder"].append(line)
            elif word == "FAIL":
                out["fails"].append(rest)
            elif word == "NODE":
                name, _, rc, _, nb = rest.split()
                out["nodes"][name] = {"rc": int(rc), "outputs": [None] * int(nb)}
            elif word == "OUT":
                name, index, nb, *dims = rest.split()
                assert int(nb) == len(dims), line
                out["nodes"][name]["outputs"][int(index)] = dims
        return out

    return run


def _node_line(node: PluginNode) -> str:
    """The harness's stdin line for one node (see outputShapesTest.cpp)."""
    words = [node.name, node.op, str(len(node.attrs))]
    for name, kind, value in node.attrs:
        words += [name, kind, repr(value)]  # repr: the float32 value, exactly, as a double
    words.append(str(len(node.inputs)))
    for shape in node.inputs:
        words.append(str(len(shape)))
        for d in shape:
            words += map(str, _linear(d))
    return " ".join(words)


def _check_harness_run(got: dict) -> None:
    assert got["fails"] == [] and got["returncode"] == 0, got["stderr"]
    assert len(got["builder"]) == 33  # the builder's own arithmetic (checkBuilder)


def test_cpp_output_shapes_are_the_onnx_shapes(plugin_nodes, shape_harness) -> None:
    """getOutputShapes of every plugin node, evaluated at each batch size, is the node's ONNX
    output shapes: numbers as constants, the batch-dependent dimensions as expressions."""
    got = shape_harness([_node_line(n) for n in plugin_nodes])
    _check_harness_run(got)
    assert got["nodes"] == {n.name: {"rc": 0, "outputs": n.expected()} for n in plugin_nodes}


def test_cpp_harness_sees_a_wrong_shape(tiny_nodes, shape_harness) -> None:
    """The comparison has teeth: the same nodes with keep_num 8 (of 10) and output_height 5 give
    other shapes, and a KeyframeTopKPrune given q of rank 3 is refused (rc -1, one line)."""
    changed = [_changed(n) for n in tiny_nodes]
    got = shape_harness([_node_line(n) for n in changed])
    _check_harness_run(got)
    for n in tiny_nodes:
        want, have = n.expected(), got["nodes"][n.name]["outputs"]
        if n.op == "KeyframeTopKPrune":
            n_tokens, m = n.inputs[0][2], n.inputs[2][1]
            k8 = -(-8 * n_tokens // 10) - n_tokens + m  # ceil(0.8 N) - S
            assert have == [[want[0][0], f"c{k8}", want[0][2]], [want[1][0], f"c{k8}"]]
            assert have != want
        else:
            assert have == [want[0][:3] + ["c5", "c7"]] != want
    ktp = next(n for n in tiny_nodes if n.op == "KeyframeTopKPrune")
    bad = PluginNode("bad", ktp.op, ktp.attrs, (ktp.inputs[0][:3], *ktp.inputs[1:]), ktp.outputs)
    got = shape_harness([_node_line(bad)])
    assert got["nodes"]["bad"]["rc"] == -1
    assert got["stderr"] == ("[evad plugin] KeyframeTopKPrune::getOutputShapes: expects q, k "
                             "(B, H, N, d), x_nonkey (B, N - S, C), idx (B, N - S)\n")


def _changed(node: PluginNode) -> PluginNode:
    """``node`` with keep_num 8 and output_height 5 (where it has them)."""
    new = {"keep_num": 8, "output_height": 5}
    attrs = tuple((a, k, new.get(a, v)) for a, k, v in node.attrs)
    return PluginNode(node.name, node.op, attrs, node.inputs, node.outputs)


# --- the Python plugins --------------------------------------------------------------------------

class DimensionOperation(enum.Enum):
    """TensorRT's DimensionOperation names and values (checked against the bindings)."""

    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


_APPLY: dict[DimensionOperation, Callable[[int, int], int]] = {
    DimensionOperation.SUM: operator.add, DimensionOperation.PROD: operator.mul,
    DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: operator.sub,
    DimensionOperation.EQUAL: lambda x, y: int(x == y),
    DimensionOperation.LESS: lambda x, y: int(x < y),
    DimensionOperation.FLOOR_DIV: operator.floordiv,
    DimensionOperation.CEIL_DIV: lambda x, y: -(-x // y)}


class Expr:
    """A dimension expression of :class:`ExprBuilder`: a constant, or a function of the batch
    size (``at``)."""

    def __init__(self, at: Callable[[int], int], constant: int | None = None) -> None:
        self.at = at
        self.constant = constant

    def is_constant(self) -> bool:
        return self.constant is not None

    def get_constant_value(self) -> int:
        assert self.constant is not None, "get_constant_value of a non-constant expression"
        return self.constant


class ExprBuilder:
    """TensorRT's IExprBuilder as the shape functions use it: ``constant``, ``operation`` (an
    operation on two constants folds into a constant, as in TensorRT), no size tensors."""

    def constant(self, value: int) -> Expr:
        assert type(value) is int, f"constant({value!r}): dimensions are integers"
        return Expr(lambda batch: value, value)

    def operation(self, op: DimensionOperation, first: Expr, second: Expr) -> Expr:
        assert isinstance(op, DimensionOperation) and isinstance(first, Expr) \
            and isinstance(second, Expr), (op, first, second)
        fn = _APPLY[op]
        if first.is_constant() and second.is_constant():
            return self.constant(fn(first.get_constant_value(), second.get_constant_value()))
        return Expr(lambda batch: fn(first.at(batch), second.at(batch)))

    def declare_size_tensor(self, *args: object) -> Expr:
        raise AssertionError("declare_size_tensor: neither op has data-dependent shapes")

    def batch(self) -> Expr:
        return Expr(lambda batch: batch)


class DimsExprs(list):
    """``trt.DimsExprs(n)``: n dimensions, each to be set to an :class:`Expr`."""

    def __init__(self, n: int) -> None:
        super().__init__([None] * n)


#: the ``trt`` module the shape functions are given
FAKE_TRT = SimpleNamespace(DimsExprs=DimsExprs, DimensionOperation=DimensionOperation)


def _described_exprs(dims: object) -> Shape:
    assert isinstance(dims, DimsExprs) and all(isinstance(d, Expr) for d in dims), dims
    return [f"c{d.get_constant_value()}" if d.is_constant()
            else "e" + ",".join(str(d.at(n)) for n in BATCHES) for d in dims]


def _python_shapes(node: PluginNode) -> list[Shape]:
    """The Python plugin's output shapes for one node: fields read and validated as the Python
    creator does (``read_fields``, ``validate``), inputs as expressions of the batch symbol."""
    contract = CONTRACTS[node.op]
    fields = [SimpleNamespace(name=name, size=1, type=SimpleNamespace(
        name="INT32" if kind == "i" else "FLOAT32"),
        data=np.array([value], np.int32 if kind == "i" else np.float32))
        for name, kind, value in node.attrs]
    attrs = contract.validate(python_plugins.read_fields(contract, fields))
    exprs = ExprBuilder()
    batch = exprs.batch()
    inputs = []
    for shape in node.inputs:
        dims = DimsExprs(len(shape))
        for i, d in enumerate(shape):
            a, b = _linear(d)
            e = exprs.constant(b)
            if a:
                scaled = batch if a == 1 else exprs.operation(DimensionOperation.PROD,
                                                              exprs.constant(a), batch)
                e = exprs.operation(DimensionOperation.SUM, scaled, e)
            dims[i] = e
        inputs.append(dims)
    outs = python_plugins.OPS[node.op].output_shapes(FAKE_TRT, attrs, inputs, exprs)
    assert len(outs) == len(contract.outputs)
    return [_described_exprs(o) for o in outs]


def test_python_output_shapes_are_the_onnx_shapes(plugin_nodes) -> None:
    """The Python plugins' shape functions give every plugin node its ONNX output shapes."""
    assert {n.name: _python_shapes(n) for n in plugin_nodes} == \
        {n.name: n.expected() for n in plugin_nodes}


def test_python_shapes_see_a_wrong_attribute(tiny_nodes) -> None:
    """keep_num 8 and output_height 5 change every node's shapes, as in the C++ plugins."""
    for n in tiny_nodes:
        assert _python_shapes(_changed(n)) != n.expected()


def _cases() -> Iterator[tuple[DimensionOperation, int, int, int]]:
    """Hand-worked values, the same as checkBuilder's in outputShapesTest.cpp."""
    op = DimensionOperation
    yield from [(op.SUM, 7, 2, 9), (op.PROD, 7, 2, 14), (op.MAX, 7, 2, 7), (op.MIN, 7, 2, 2),
                (op.SUB, 2, 7, -5), (op.EQUAL, 7, 7, 1), (op.EQUAL, 7, 2, 0), (op.LESS, 2, 7, 1),
                (op.LESS, 7, 7, 0), (op.FLOOR_DIV, 7, 2, 3), (op.FLOOR_DIV, -7, 2, -4),
                (op.FLOOR_DIV, 6, 3, 2), (op.CEIL_DIV, 7, 2, 4), (op.CEIL_DIV, -7, 2, -3),
                (op.CEIL_DIV, 6, 3, 2), (op.CEIL_DIV, 32256, 10, 3226)]


def test_fake_builder_arithmetic() -> None:
    """The Python builder folds constants and evaluates expressions as TensorRT defines them."""
    exprs = ExprBuilder()
    for op, x, y, want in _cases():
        folded = exprs.operation(op, exprs.constant(x), exprs.constant(y))
        assert folded.is_constant() and folded.get_constant_value() == want, (op, x, y)
        symbolic = exprs.operation(op, exprs.batch(), exprs.constant(y))
        assert not symbolic.is_constant() and symbolic.at(x) == want, (op, x, y)


def test_fake_trt_matches_the_bindings() -> None:
    """The fake's DimensionOperation is the bindings' (names and values), so the shape functions
    use only operations TensorRT has."""
    try:
        trt = importlib.import_module("tensorrt_lean_bindings")
    except ImportError:
        skip_or_fail("the runtime-only TensorRT is not installed (pip install "
                      "tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings)")
    assert {k: int(v) for k, v in trt.DimensionOperation.__members__.items()} == \
        {m.name: m.value for m in DimensionOperation}
    assert len(trt.DimsExprs(3)) == len(DimsExprs(3)) == 3

