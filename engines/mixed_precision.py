"""A reduced-precision (fp16 or bf16) copy of the ONNX graph the TensorRT parser sees, typed
consistently for strongly typed TensorRT (11.x builds strongly typed networks only: every tensor's
type is the one the graph declares, and an elementwise layer refuses mixed Half/Float inputs).

How: the fp32 graph's types are inferred once (strict); then, node by node in graph order, each
type variable of the node's schema that binds a float tensor gets the node's precision (the
reduced one, or fp32 for :data:`FP32_OPS` and where the schema does not allow the reduced type),
inputs are cast where their current type differs (float initializers are converted once
instead), outputs take the variable's new type, and the attributes that fix an output type
(``Cast.to``, ``Constant`` / ``ConstantOfShape`` values) are rewritten with it, so no declared
type can disagree with what a node computes. Graph inputs and outputs keep their types. The
result passes ``infer_shapes(check_type=True, strict_mode=True)``
(:func:`evad.engines.onnx_prep.check_types`).

Why our own pass and not onnxconverter-common or ModelOpt AutoCast: onnxconverter-common's
``convert_float_to_float16`` leaves ``Cast(to=FLOAT)`` nodes whose outputs it declares fp16 (the
strongly typed parser refuses the graph) and has no bf16; ModelOpt's AutoCast does both, but its
``[onnx]`` extra pins onnx ~= 1.21 and onnxruntime-gpu ~= 1.24 (a second environment for one
graph pass). Driven by the op schemas, this pass needs no table of ops beyond what stays fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from evad.engines.onnx_prep import check_types
from evad.errors import ConfigError

__all__ = ["FP32_OPS", "REDUCED", "fp32_layer_types", "to_mixed_precision"]

#: reduced precision -> its ONNX element type
REDUCED: dict[str, int] = {"fp16": int(TensorProto.FLOAT16), "bf16": int(TensorProto.BFLOAT16)}

#: ops that stay fp32 under fp16/bf16: ONNX op type -> the TensorRT layer type it becomes. This
#: pass (TensorRT 11) and the precision constraints of the weakly typed builder (TensorRT 10)
#: both read this table. Why each: LayerNorm's variance, softmax's exponent sum and the
#: reductions lose most to a 10- or 7-bit mantissa; TopK on near-equal scores flips order; the
#: pruning plugin's importance decides which tokens survive; RoIAlign3D takes box coordinates in
#: pixels (fp16 resolution is 0.25 px at 512).
FP32_OPS: dict[str, str] = {
    "LayerNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
    "ReduceMean": "REDUCE",
    "ReduceSum": "REDUCE",
    "ReduceMax": "REDUCE",
    "TopK": "TOPK",
    "KeyframeTopKPrune": "PLUGIN_V3",
    "RoIAlign3D": "PLUGIN_V3",
}

_FLOAT = int(TensorProto.FLOAT)
_TYPE_STR: dict[int, str] = {_FLOAT: "tensor(float)", int(TensorProto.FLOAT16): "tensor(float16)",
                             int(TensorProto.BFLOAT16): "tensor(bfloat16)"}
_TAG: dict[int, str] = {_FLOAT: "fp32", int(TensorProto.FLOAT16): "fp16",
                        int(TensorProto.BFLOAT16): "bf16"}


def fp32_layer_types() -> tuple[str, ...]:
    """The TensorRT ``LayerType`` names that :data:`FP32_OPS` become, each once."""
    return tuple(dict.fromkeys(FP32_OPS.values()))


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph, from strict inference."""
    g = check_types(model, "the fp32 graph").graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {o.domain or "": o.version for o in model.opset_import}


def _formal(params: list, i: int):
    """The formal parameter of position ``i`` (the last one repeats when it is variadic)."""
    if i < len(params):
        return params[i]
    last = params[-1]
    return last if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


class _Converter:
    """One pass over a graph; see the module docstring."""

    def __init__(self, model: onnx.ModelProto, reduced: int) -> None:
        self.model = model
        self.reduced = reduced
        self.types = _elem_types(model)  # fp32 graph's types
        self.opsets = _opsets(model)
        self.current: dict[str, int] = {}  # tensor -> its type in the new graph
        self.casts: dict[tuple[str, int], str] = {}  # (tensor, type) -> the cast copy's name
        self.inits = {t.name: t for t in model.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.activations: set[str] = set()  # see precision_of

    def type_of(self, name: str) -> int:
        return self.current.get(name, self.types.get(name, TensorProto.UNDEFINED))

    def as_type(self, name: str, elem: int) -> str:
        """``name`` in element type ``elem``: itself, a converted initializer or a Cast."""
        if not name or self.type_of(name) == elem:
            return name
        key = (name, elem)
        if key not in self.casts:
            new = f"{name}__{_TAG[elem]}"
            init = self.inits.get(name)
            if init is not None and init.data_type in (*REDUCED.values(), _FLOAT):
                self.new_inits.append(_convert_initializer(init, elem, new))
            else:
                self.nodes.append(helper.make_node("Cast", [name], [new], to=elem,
                                                   name=f"{new}__cast"))
            self.current[new] = elem
            self.casts[key] = new
        return self.casts[key]

    def precision_of(self, node: onnx.NodeProto) -> int:
        """The reduced type for a node that computes on activations; fp32 for :data:`FP32_OPS`,
        nodes holding subgraphs (left as they are) and nodes with no activation input.

        An activation is a float tensor computed from a float graph input (the clip) through
        float tensors. What is not one (positions, grids, scales, box limits from
        ``image_size``, index arithmetic after a Cast from integers) is computed from shapes and
        constants, which TensorRT folds at build time: fp32 costs nothing there, and fp16 would
        round integers above 2048.
        """
        if node.op_type in FP32_OPS or any(a.type in (onnx.AttributeProto.GRAPH,
                                                      onnx.AttributeProto.GRAPHS)
                                           for a in node.attribute):
            return _FLOAT
        return self.reduced if any(i in self.activations for i in node.input) else _FLOAT

    def convert(self, node: onnx.NodeProto) -> None:
        schema = onnx.defs.get_schema(node.op_type, self.opsets.get(node.domain or "", 1),
                                      node.domain or "")
        want = self.precision_of(node)
        if any(i in self.activations for i in node.input):
            self.activations.update(o for o in node.output if self.types.get(o) == _FLOAT)
        if node.op_type == "Cast":  # any input type: cast it once, from what it is now
            new = onnx.NodeProto()
            new.CopyFrom(node)
            self.current[node.output[0]] = self._fixed_output_type(new, want) or next(
                a.i for a in new.attribute if a.name == "to")
            self.nodes.append(new)
            return
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        # type variables that bind a float tensor in the fp32 graph
        bound: dict[str, int] = {}
        for names, params in ((node.input, schema.inputs), (node.output, schema.outputs)):
            for i, name in enumerate(names):
                p = _formal(list(params), i)
                if name and p is not None and p.type_str in allowed and \
                        self.types.get(name) == _FLOAT:
                    ok = _TYPE_STR[want] in allowed[p.type_str]
                    bound[p.type_str] = want if ok else _FLOAT
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(node.input):
            p = _formal(list(schema.inputs), i)
            if not name or p is None:
                continue
            if p.type_str in bound:
                new.input[i] = self.as_type(name, bound[p.type_str])
            elif self.types.get(name) == _FLOAT:  # a fixed tensor(float) input (Resize scales)
                new.input[i] = self.as_type(name, _FLOAT)
        out_type = self._fixed_output_type(new, want)
        for i, name in enumerate(node.output):
            p = _formal(list(schema.outputs), i)
            if not name:
                continue
            if out_type is not None and i == 0:
                self.current[name] = out_type
            elif p is not None and p.type_str in bound:
                self.current[name] = bound[p.type_str]
        self.nodes.append(new)

    def _fixed_output_type(self, node: onnx.NodeProto, want: int) -> int | None:
        """Rewrite the attribute that fixes a float output's type (``Cast.to``, a ``Constant``
        or ``ConstantOfShape`` value) to ``want``; the output's new type, or None."""
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == _FLOAT:
                    a.i = want
                    return want
        if node.op_type in ("Constant", "ConstantOfShape"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == _FLOAT:
                    a.t.CopyFrom(_convert_initializer(a.t, want, a.t.name))
                    return want
        return None

    def run(self) -> onnx.ModelProto:
        g = self.model.graph
        for i in g.input:
            self.current[i.name] = i.type.tensor_type.elem_type
            if i.type.tensor_type.elem_type == _FLOAT:
                self.activations.add(i.name)
        for node in g.node:
            self.convert(node)
        # graph outputs keep their fp32 type: the producer writes a copy, cast back
        outputs = {o.name: o.type.tensor_type.elem_type for o in g.output}
        renames = {name: f"{name}__{_TAG[self.reduced]}" for name, elem in outputs.items()
                   if self.type_of(name) != elem}
        for node in self.nodes:
            node.input[:] = [renames.get(x, x) for x in node.input]
            node.output[:] = [renames.get(x, x) for x in node.output]
        for name, inner in renames.items():
            self.nodes.append(helper.make_node("Cast", [inner], [name], to=outputs[name],
                                               name=f"{name}__to_output_type"))
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        del out.graph.node[:]
        out.graph.node.extend(self.nodes)
        out.graph.initializer.extend(self.new_inits)
        used = {x for n in out.graph.node for x in n.input}
        kept = [t for t in out.graph.initializer if t.name in used]
        del out.graph.initializer[:]
        out.graph.initializer.extend(kept)
        # the fp32 graph's value_info would contradict the new types: inference redoes it
        del out.graph.value_info[:]
        return out


def _convert_initializer(t: onnx.TensorProto, elem: int, name: str) -> onnx.TensorProto:
    """A copy of float tensor ``t`` in element type ``elem``, named ``name`` (fp16 saturates at
    +-65504 rather than becoming inf: a weight that large is a bug either way)."""
    x = numpy_helper.to_array(t).astype(np.float32)
    if elem == TensorProto.FLOAT16:
        return numpy_helper.from_array(np.clip(x, -65504, 65504).astype(np.float16), name)
    if elem == TensorProto.BFLOAT16:
        out = helper.make_tensor(name, TensorProto.BFLOAT16, x.shape,
                                 _bf16_bits(x).tobytes(), raw=True)
        return out
    return numpy_helper.from_array(x, name)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even, NaN kept NaN."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return np.where(np.isnan(x), 0x7FC0, rounded).astype(np.uint16)


def to_mixed_precision(model: onnx.ModelProto, precision: str = "fp16") -> onnx.ModelProto:
    """A ``precision`` (``fp16`` / ``bf16``) copy of a parser-ready fp32 graph
    (:func:`evad.engines.onnx_prep.for_parser`): float weights and activations in the reduced
    type, :data:`FP32_OPS` and the graph's inputs and outputs in fp32, Casts at every boundary.

    Raises:
        ConfigError: an unknown precision, or the fp32 graph is itself not type-consistent.
    """
    if precision not in REDUCED:
        raise ConfigError(f"precision {precision!r}: a mixed-precision graph is one of "
                          f"{', '.join(REDUCED)}")
    return _Converter(model, REDUCED[precision]).run()
