"""Python TensorRT plugins of the ``evad`` ops: IPluginV3 subclasses (core, build and runtime
capabilities) with ``IPluginCreatorV3One`` creators, computing on TensorRT's stream. Same
names, version, namespace and fields as the C++ plugins (:data:`evad.plugins.PLUGIN_FIELDS`),
implemented independently of the CUDA kernels, so the two can be compared engine against engine.

Kernels: the Triton kernels of :mod:`evad.plugins.triton_kernels` where Triton is installed
(``EVAD_PYTHON_PLUGIN_BACKEND=torch`` forces the torch reference), else the torch reference.

The classes derive from the TensorRT module's own bases, which differ between the full
``tensorrt`` and the runtime-only builds; :func:`make_classes` builds them for a given module.
Device memory is wrapped with ``__cuda_array_interface__`` (no pycuda). Unlike the C++ plugins
these allocate temporaries from torch's caching allocator.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

from evad.plugins import NAMESPACE, PLUGIN_FIELDS, VERSION

__all__ = ["make_classes", "register"]

_CLASSES: dict[int, dict[str, Any]] = {}


class _DevicePointer:
    """A (shape, dtype) view of a raw device pointer, for ``torch.as_tensor``."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (int(ptr), False), "version": 3}


def _tensor(trt: ModuleType, ptr: int, desc: Any):
    """Torch CUDA tensor over a TensorRT binding (fp32, fp16, bf16, int64)."""
    import torch

    shape = tuple(int(d) for d in desc.dims)
    t = desc.type
    if t == trt.DataType.BF16:  # no typestr for bf16: view its bits
        return torch.as_tensor(_DevicePointer(ptr, shape, "<i2"), device="cuda").view(
            torch.bfloat16)
    typestr = {trt.DataType.FLOAT: "<f4", trt.DataType.HALF: "<f2",
               trt.DataType.INT64: "<i8"}[t]
    return torch.as_tensor(_DevicePointer(ptr, shape, typestr), device="cuda")


def _ops() -> tuple[Any, Any]:
    """(roi_align_3d, keyframe_topk_prune) implementations: Triton when available (and not
    disabled by ``EVAD_PYTHON_PLUGIN_BACKEND=torch``), else the torch reference."""
    import os

    if os.environ.get("EVAD_PYTHON_PLUGIN_BACKEND", "triton") == "triton":
        try:
            from evad.plugins.triton_kernels import (
                keyframe_topk_prune_triton,
                roi_align_3d_triton,
            )

            return roi_align_3d_triton, keyframe_topk_prune_triton
        except ImportError:
            pass
    from evad.models.keyframe_topk_prune import keyframe_topk_prune
    from evad.models.roi_align_3d import roi_align_3d

    return roi_align_3d, keyframe_topk_prune


def _read_fields(name: str, fc: Any) -> dict[str, float | int]:
    """The op's attributes from a PluginFieldCollection; every one is required."""
    got = {f.name: np.asarray(f.data).reshape(-1) for f in fc}
    out: dict[str, float | int] = {}
    for field, kind in PLUGIN_FIELDS[name]:
        if field not in got or got[field].size != 1:
            raise ValueError(f"{NAMESPACE}::{name}: missing field {field}")
        out[field] = int(got[field][0]) if kind == "int" else float(got[field][0])
    return out


def make_classes(trt: ModuleType) -> dict[str, Any]:
    """``{"RoIAlign3D": (plugin class, creator class), ...}`` for the TensorRT module ``trt``."""
    if id(trt) in _CLASSES:
        return _CLASSES[id(trt)]
    float_types = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16)

    def field_collection(name: str, values: dict[str, float | int] | None, keep: list):
        # PluginField does not own its numpy buffer: the caller keeps `keep` alive with it.
        fields = []
        for field, kind in PLUGIN_FIELDS[name]:
            dtype = np.int32 if kind == "int" else np.float32
            ftype = trt.PluginFieldType.INT32 if kind == "int" else trt.PluginFieldType.FLOAT32
            data = np.array([values[field]] if values else [], dtype=dtype)
            keep.append(data)
            fields.append(trt.PluginField(field, data, ftype))
        return trt.PluginFieldCollection(fields)

    class _Base(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                trt.IPluginV3OneRuntime):
        op_name = ""
        outputs = 1
        int64_positions: tuple[int, ...] = ()  # index tensors among inputs + outputs

        def supports_format_combination(self, pos, in_out, num_inputs) -> bool:
            """Linear layout; input 0 any float type, index tensors int64, the rest as input 0."""
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:
                return desc.type in float_types
            if pos in self.int64_positions:
                return desc.type == trt.DataType.INT64
            return desc.type == in_out[0].desc.type

        def __init__(self, attrs: dict[str, float | int]) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = self.op_name
            self.plugin_version = VERSION
            self.plugin_namespace = NAMESPACE
            self.num_outputs = self.outputs
            self.attrs = dict(attrs)
            self._field_data: list[np.ndarray] = []

        def get_capability_interface(self, type):  # noqa: A002 (TensorRT's name)
            return self

        def clone(self):
            return type(self)(self.attrs)

        def get_fields_to_serialize(self):
            self._field_data = []
            return field_collection(self.op_name, self.attrs, self._field_data)

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

        def _run(self, fn, input_desc, output_desc, inputs, outputs, stream) -> None:
            import torch

            ins = [_tensor(trt, p, d) for p, d in zip(inputs, input_desc, strict=True)]
            outs = [_tensor(trt, p, d) for p, d in zip(outputs, output_desc, strict=True)]
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)), torch.no_grad():
                results = fn(*ins)
                for o, r in zip(outs, results if isinstance(results, tuple) else (results,),
                                strict=True):
                    o.copy_(r)

    class RoIAlign3DPlugin(_Base):
        """evad::RoIAlign3D v1, Triton or torch (plugins/roi_align_3d/README.md)."""

        op_name = "RoIAlign3D"
        outputs = 1

        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            f, r = inputs
            out = trt.DimsExprs(5)
            out[0], out[1], out[2] = r[0], f[1], f[2]
            out[3] = expr_builder.constant(self.attrs["output_height"])
            out[4] = expr_builder.constant(self.attrs["output_width"])
            return [out]

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream) -> None:
            roi_align_3d, _ = _ops()
            a = self.attrs
            self._run(lambda f, r: roi_align_3d(
                f, r, a["output_height"], a["output_width"], a["spatial_scale"],
                a["sampling_ratio"], bool(a["aligned"])), input_desc, output_desc, inputs,
                outputs, stream)

    class KeyframeTopKPrunePlugin(_Base):
        """evad::KeyframeTopKPrune v1, Triton importance (two passes, no N x N) or torch
        (plugins/keyframe_topk_prune/README.md); importance in fp32 whatever the input type."""

        op_name = "KeyframeTopKPrune"
        outputs = 2

        def get_output_data_types(self, input_types):
            return [input_types[2], trt.DataType.INT64]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            q, _, x, idx = inputs
            op = trt.DimensionOperation
            n, m = q[2], x[1]
            kept = expr_builder.operation(
                op.CEIL_DIV, expr_builder.operation(op.PROD, n, expr_builder.constant(
                    self.attrs["keep_num"])), expr_builder.constant(self.attrs["keep_den"]))
            kk = expr_builder.operation(op.SUM, expr_builder.operation(op.SUB, kept, n), m)
            xo, io = trt.DimsExprs(3), trt.DimsExprs(2)
            xo[0], xo[1], xo[2] = x[0], kk, x[2]
            io[0], io[1] = idx[0], kk
            return [xo, io]

        int64_positions = (3, 5)  # idx and idx_kept

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream) -> None:
            _, keyframe_topk_prune = _ops()
            a = self.attrs
            self._run(lambda q, k, x, idx: keyframe_topk_prune(
                q, k, x, idx, a["keep_num"], a["keep_den"], a["keyframe_weight"]),
                input_desc, output_desc, inputs, outputs, stream)

    def creator_for(plugin_cls):
        class Creator(trt.IPluginCreatorV3One):
            __doc__ = f"Creator of {NAMESPACE}::{plugin_cls.op_name} v{VERSION} (Python)."

            def __init__(self) -> None:
                trt.IPluginCreatorV3One.__init__(self)
                self.name = plugin_cls.op_name
                self.plugin_version = VERSION
                self.plugin_namespace = NAMESPACE
                self._field_data: list[np.ndarray] = []
                self.field_names = field_collection(plugin_cls.op_name, None, self._field_data)

            def create_plugin(self, name, fc, phase):
                # As the C++ creators: a bad field collection gives None and one stderr line,
                # never an exception into TensorRT.
                try:
                    return plugin_cls(_read_fields(plugin_cls.op_name, fc))
                except ValueError as e:
                    print(f"[evad plugin] {plugin_cls.op_name}::createPlugin: {e}",
                          file=sys.stderr)
                    return None

        Creator.__name__ = Creator.__qualname__ = plugin_cls.__name__ + "Creator"
        return Creator

    classes = {cls.op_name: (cls, creator_for(cls))
               for cls in (RoIAlign3DPlugin, KeyframeTopKPrunePlugin)}
    _CLASSES[id(trt)] = classes
    return classes


def register(trt: ModuleType) -> list[Any]:
    """Register both Python creators in ``trt``'s plugin registry; returns the creators (keep
    them alive: the registry does not own Python objects)."""
    registry = trt.get_plugin_registry()
    creators = []
    for _, creator_cls in make_classes(trt).values():
        creator = creator_cls()
        if not registry.register_creator(creator, NAMESPACE):
            raise RuntimeError(f"TensorRT refused the Python creator {creator.name}")
        creators.append(creator)
    return creators
