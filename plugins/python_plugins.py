"""Python TensorRT plugins of the ``evad`` ops: IPluginV3 subclasses (core, build and runtime
capabilities) with ``IPluginCreatorV3One`` creators, computing on TensorRT's stream with the
Triton kernels of :mod:`evad.plugins.triton_kernels`, an implementation independent of the CUDA
kernels, so the two plugin sets can be compared engine against engine.

The op contracts (:mod:`evad.op_contracts`) give the names, version, namespace and fields. The
creators read each field by its declared kind (:func:`read_fields`) and validate the values with
:meth:`~evad.op_contracts.OpContract.validate`, as the C++ creators do with the generated header
(``common/evadOpContract.h``, ``readContractFields`` in ``common/pluginCommon.h``): the same
collections are refused with the same one-line message on stderr, and the creator returns None.

The pieces:

- :func:`read_fields`, :func:`field_collection`: a PluginFieldCollection to contract values and
  back;
- :data:`OPS`: per op, what its plugin adds to the contract (output types and shapes, which
  tensors are int64, its Triton kernel);
- :func:`make_classes`: the plugin and creator classes over one TensorRT module's own bases
  (the full ``tensorrt`` and the runtime-only bindings each have theirs, so the classes are
  built per module): :func:`plugin_base`, then one subclass per op and its creator;
- :func:`register`.

Device memory is wrapped with ``__cuda_array_interface__`` (no pycuda). Unlike the C++ plugins
these allocate temporaries from torch's caching allocator. Triton is required: without it
:func:`register` raises :class:`~evad.lazy.MissingDependency` (``pip install triton``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from evad.errors import EvadError
from evad.lazy import MissingDependency, available, lazy_import
from evad.op_contracts import KEYFRAME_TOPK_PRUNE, ROI_ALIGN_3D, Field, OpContract

if TYPE_CHECKING:
    import torch
    import triton

    from evad.plugins import triton_kernels
else:
    torch = lazy_import("torch", "pip install torch")
    triton = lazy_import("triton", "pip install triton")
    # imports Triton: loaded on first use, after `triton` is known to be there (kernels())
    triton_kernels = lazy_import("evad.plugins.triton_kernels", "pip install triton")

__all__ = ["OPS", "OpPlugin", "Unreadable", "field_collection", "kernels", "make_classes",
           "read_field", "read_fields", "register"]

_INT_FIELD_TYPES = ("INT8", "INT16", "INT32", "INT64")
_FLOAT_FIELD_TYPES = ("FLOAT32", "FLOAT64")


# --- fields ---------------------------------------------------------------------------------------

class Unreadable:
    """A field the creators cannot read as its contract kind. Its repr completes the contract's
    sentence (``spatial_scale must be a number, not a field of type INT32``), in the words of
    the C++ creators (``readField`` in ``common/pluginCommon.h``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def read_field(field: Field, pf: Any) -> int | float | Unreadable:
    """One PluginField read by the contract kind of ``field``, as the C++ creators read it.

    Int fields accept INT8/16/32/64 data (a Python int); a FLOAT32/64 value is returned as a
    float, which the contract refuses (``must be an integer, not 7.0``). Float fields accept
    FLOAT32/64 data, rounded to float32 (what the plugins store). Anything else, and a field
    that does not hold exactly one value, is :class:`Unreadable`.
    """
    if pf.size != 1:
        return Unreadable(f"{pf.size} values")
    type_name = pf.type.name
    if type_name not in _INT_FIELD_TYPES + _FLOAT_FIELD_TYPES:
        return Unreadable(f"a field of type {type_name}")
    value = np.asarray(pf.data).reshape(-1)[0]
    int_data = type_name in _INT_FIELD_TYPES
    if field.kind == "int":
        return int(value) if int_data else float(value)
    if int_data:
        return Unreadable(f"a field of type {type_name}")
    with np.errstate(over="ignore"):  # past float32's range: inf, which the contract refuses
        return float(np.float32(value))


def read_fields(contract: OpContract, fc: Iterable[Any]) -> dict[str, int | float | Unreadable]:
    """The contract's fields found in a PluginFieldCollection, each read by its kind
    (:func:`read_field`), for :meth:`OpContract.validate`. Names outside the contract are
    ignored (the ONNX parser passes ``plugin_version`` and ``plugin_namespace`` along); of a
    repeated name the first counts, as in the C++ ``findField``."""
    values: dict[str, int | float | Unreadable] = {}
    for pf in fc:
        if pf.name in contract.field_names and pf.name not in values:
            values[pf.name] = read_field(contract.field(pf.name), pf)
    return values


def field_collection(trt: Any, contract: OpContract, values: dict[str, int | float] | None,
                     keep: list[np.ndarray]) -> Any:
    """The contract's fields as a PluginFieldCollection, in order, int fields INT32 and float
    fields FLOAT32, holding ``values`` (None: names and types only, a creator's
    ``field_names``). PluginField does not own its numpy buffer: ``keep`` receives the buffers
    and must live as long as the collection."""
    fields = []
    for f in contract.fields:
        dtype, ftype = ((np.int32, trt.PluginFieldType.INT32) if f.kind == "int"
                        else (np.float32, trt.PluginFieldType.FLOAT32))
        data = np.array([] if values is None else [values[f.name]], dtype=dtype)
        keep.append(data)
        fields.append(trt.PluginField(f.name, data, ftype))
    return trt.PluginFieldCollection(fields)


# --- the ops --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpPlugin:
    """What the Python plugin of one op adds to its contract.

    int64_positions: the index tensors among inputs + outputs (int64; the others share input
        0's float type).
    output_types: ``(trt, input types) -> output types``.
    output_shapes: ``(trt, attrs, input DimsExprs, expression builder) -> output DimsExprs``.
    kernel: the host function of :mod:`evad.plugins.triton_kernels`, called with the input
        tensors and the contract's fields by name.
    """

    contract: OpContract
    int64_positions: tuple[int, ...]
    output_types: Callable[[Any, list[Any]], list[Any]]
    output_shapes: Callable[[Any, dict[str, Any], list[Any], Any], list[Any]]
    kernel: str


def _roi_align_3d_types(trt: Any, input_types: list[Any]) -> list[Any]:
    return [input_types[0]]


def _roi_align_3d_shapes(trt: Any, attrs: dict[str, Any], inputs: list[Any],
                         exprs: Any) -> list[Any]:
    """(R, C, T, output_height, output_width) from features (B, C, T, H, W) and rois (R, 5)."""
    features, rois = inputs
    out = trt.DimsExprs(5)
    out[0], out[1], out[2] = rois[0], features[1], features[2]
    out[3] = exprs.constant(attrs["output_height"])
    out[4] = exprs.constant(attrs["output_width"])
    return [out]


def _keyframe_topk_prune_types(trt: Any, input_types: list[Any]) -> list[Any]:
    return [input_types[2], trt.DataType.INT64]


def _keyframe_topk_prune_shapes(trt: Any, attrs: dict[str, Any], inputs: list[Any],
                                exprs: Any) -> list[Any]:
    """x_kept (B, K, C), idx_kept (B, K) with K = CEIL_DIV(N * keep_num, keep_den) - N + M
    (= ceil(keep_num N / keep_den) - S, S = N - M), from q (B, H, N, d), x_nonkey (B, M, C)."""
    q, _, x, idx = inputs
    op = trt.DimensionOperation
    n, m = q[2], x[1]
    kept = exprs.operation(op.CEIL_DIV,
                           exprs.operation(op.PROD, n, exprs.constant(attrs["keep_num"])),
                           exprs.constant(attrs["keep_den"]))
    kk = exprs.operation(op.SUM, exprs.operation(op.SUB, kept, n), m)
    x_kept, idx_kept = trt.DimsExprs(3), trt.DimsExprs(2)
    x_kept[0], x_kept[1], x_kept[2] = x[0], kk, x[2]
    idx_kept[0], idx_kept[1] = idx[0], kk
    return [x_kept, idx_kept]


#: op name -> its Python plugin (plugins/<op>/README.md describe them)
OPS: dict[str, OpPlugin] = {op.contract.name: op for op in (
    OpPlugin(ROI_ALIGN_3D, (), _roi_align_3d_types, _roi_align_3d_shapes,
             "roi_align_3d_triton"),
    # importance in fp32 whatever the input type, two passes, no N x N buffer
    OpPlugin(KEYFRAME_TOPK_PRUNE, (3, 5), _keyframe_topk_prune_types,
             _keyframe_topk_prune_shapes, "keyframe_topk_prune_triton"),
)}

_KERNELS: dict[str, Callable[..., Any]] = {}


def kernels() -> dict[str, Callable[..., Any]]:
    """The Triton kernel of each op, by op name; resolved once (imports Triton and torch).

    Raises:
        MissingDependency: Triton is not installed (``pip install triton``).
    """
    if not _KERNELS:
        if not available(triton):
            raise MissingDependency("triton", "pip install triton",
                                    "the Python TensorRT plugins run Triton kernels")
        _KERNELS.update({name: getattr(triton_kernels, op.kernel) for name, op in OPS.items()})
    return _KERNELS


# --- the classes ----------------------------------------------------------------------------------

def _tensor(trt: Any, ptr: int, desc: Any) -> Any:
    """A torch CUDA tensor over a TensorRT binding (fp32, fp16, bf16, int64), without a copy."""
    shape = tuple(int(d) for d in desc.dims)
    if desc.type == trt.DataType.BF16:  # no typestr for bf16: view its bits
        return torch.as_tensor(_DevicePointer(ptr, shape, "<i2"), device="cuda").view(
            torch.bfloat16)
    typestr = {trt.DataType.FLOAT: "<f4", trt.DataType.HALF: "<f2",
               trt.DataType.INT64: "<i8"}[desc.type]
    return torch.as_tensor(_DevicePointer(ptr, shape, typestr), device="cuda")


class _DevicePointer:
    """A (shape, dtype) view of a raw device pointer, for ``torch.as_tensor``."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (int(ptr), False), "version": 3}


def plugin_base(trt: Any) -> type:
    """The IPluginV3 base class of the evad plugins over ``trt``'s own bases: everything but
    the per-op parts, which subclasses take from their ``op`` (:class:`OpPlugin`)."""
    float_types = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16)
    bases = (trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
             trt.IPluginV3OneRuntime)

    class EvadPlugin(*bases):
        """An evad op's IPluginV3 (core, build and runtime capabilities in one object) with
        validated attributes ``attrs`` (the contract's fields) and its Triton kernel, resolved
        here once for the plugin's life."""

        op: ClassVar[OpPlugin]

        def __init__(self, attrs: dict[str, int | float]) -> None:
            for base in bases:
                base.__init__(self)
            c = self.op.contract
            self.plugin_name, self.plugin_version, self.plugin_namespace = (
                c.name, c.plugin_version, c.domain)
            self.num_outputs = len(c.outputs)
            self.attrs = dict(attrs)
            self.kernel = kernels()[c.name]
            self._field_data: list[np.ndarray] = []

        def get_capability_interface(self, type):  # noqa: A002 (TensorRT's name)
            return self

        def clone(self):
            return type(self)(self.attrs)

        def get_fields_to_serialize(self):
            self._field_data = []
            return field_collection(trt, self.op.contract, self.attrs, self._field_data)

        def get_output_data_types(self, input_types):
            return self.op.output_types(trt, input_types)

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return self.op.output_shapes(trt, self.attrs, inputs, expr_builder)

        def supports_format_combination(self, pos, in_out, num_inputs) -> bool:
            """Linear layout; input 0 any float type, index tensors int64, the rest as input 0."""
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:
                return desc.type in float_types
            if pos in self.op.int64_positions:
                return desc.type == trt.DataType.INT64
            return desc.type == in_out[0].desc.type

        def configure_plugin(self, inp, out) -> None:
            pass

        def on_shape_change(self, inp, out) -> None:
            pass

        def attach_to_context(self, context):
            return self.clone()

        def set_tactic(self, tactic) -> None:
            pass

        def get_workspace_size(self, inp, out) -> int:
            return 0

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream) -> None:
            ins = [_tensor(trt, p, d) for p, d in zip(inputs, input_desc, strict=True)]
            outs = [_tensor(trt, p, d) for p, d in zip(outputs, output_desc, strict=True)]
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)), torch.no_grad():
                results = self.kernel(*ins, **self.attrs)
                if not isinstance(results, tuple):
                    results = (results,)
                for o, r in zip(outs, results, strict=True):
                    o.copy_(r)

    return EvadPlugin


def plugin_class(base: type, op: OpPlugin) -> type:
    """The plugin class of one op: ``base`` (:func:`plugin_base`) bound to ``op``."""
    c = op.contract
    return type(f"{c.name}Plugin", (base,), {
        "op": op, "__doc__": f"{c.domain}::{c.name} v{c.plugin_version}, Triton kernels."})


def create_plugin(plugin_cls: Any, fc: Iterable[Any]) -> Any:
    """A plugin from a field collection, or None and one stderr line when the fields break the
    contract (as the C++ creators): never an exception into TensorRT."""
    contract = plugin_cls.op.contract
    try:
        return plugin_cls(contract.validate(read_fields(contract, fc)))
    except Exception as e:  # noqa: BLE001 (TensorRT must get None, not an exception)
        print(f"[evad plugin] {contract.name}::createPlugin: {e}", file=sys.stderr)
        return None


def creator_class(trt: Any, plugin_cls: Any) -> type:
    """The IPluginCreatorV3One of one plugin class: the contract's name, version, namespace
    and fields; ``create_plugin`` validates (:func:`create_plugin`)."""
    c = plugin_cls.op.contract

    class Creator(trt.IPluginCreatorV3One):
        __doc__ = f"Creator of {c.domain}::{c.name} v{c.plugin_version} (Python)."

        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_version, self.plugin_namespace = (
                c.name, c.plugin_version, c.domain)
            self._field_data: list[np.ndarray] = []
            self.field_names = field_collection(trt, c, None, self._field_data)

        def create_plugin(self, name, fc, phase):
            return create_plugin(plugin_cls, fc)

    Creator.__name__ = Creator.__qualname__ = f"{c.name}PluginCreator"
    return Creator


_CLASSES: dict[int, dict[str, tuple[type, type]]] = {}


def make_classes(trt: Any) -> dict[str, tuple[type, type]]:
    """``{"RoIAlign3D": (plugin class, creator class), ...}`` for the TensorRT module ``trt``
    (built once per module)."""
    if id(trt) not in _CLASSES:
        base = plugin_base(trt)
        plugins = {name: plugin_class(base, op) for name, op in OPS.items()}
        _CLASSES[id(trt)] = {name: (cls, creator_class(trt, cls)) for name, cls in plugins.items()}
    return _CLASSES[id(trt)]


def register(trt: Any) -> list[Any]:
    """Register the Python creators in ``trt``'s plugin registry; returns the creators (keep
    them alive: the registry does not own Python objects).

    Raises:
        MissingDependency: Triton is not installed (``pip install triton``); nothing registered.
        EvadError: TensorRT refused a creator.
    """
    kernels()
    registry = trt.get_plugin_registry()
    creators = []
    for name, (_, creator_cls) in make_classes(trt).items():
        creator = creator_cls()
        if not registry.register_creator(creator, OPS[name].contract.domain):
            raise EvadError(f"TensorRT refused the Python creator {name}")
        creators.append(creator)
    return creators
