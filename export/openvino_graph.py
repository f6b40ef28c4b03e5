"""The copy of an evad export that OpenVINO reads, rewritten in memory: the fused attention
decomposed, each ``KeyframeTopKPrune`` unrolled over its static row chunks, the other local
functions inlined and, optionally, every MatMul weight stored as int8.

Why a rewrite at all: OpenVINO binds no model-local function of a custom domain and runs an ONNX
``Loop`` as an opaque node without its bf16 kernels; the runner
(``evad.export.openvino_runner``) compiles what this module returns and never changes the file.
Graph surgery only: torch-free and onnx-only (no OpenVINO).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from evad.errors import ConfigError
from evad.fused_attention import decompose_fused_attention

__all__ = ["ROW_CHUNK", "int8_matmul_weights", "openvino_graph", "tensor_dims",
           "unroll_pruning"]

#: query rows per unrolled importance chunk. Smaller than the op contract's 1024
#: (``evad.op_contracts.IMPORTANCE_ROW_CHUNK``), because OpenVINO runs each chunk's MatMul,
#: bf16 -> f32 Reorder, Softmax and ReduceSum as separate passes over a (1, 12, rows, N) slab:
#: at 256 rows (57 MB in f32 for vit_b at 288x512, against 226 MB) more of it is still in cache
#: for the next pass. Measured on vit_b_ktp bf16, 2-core Xeon (AMX), one clip: those four
#: layers 484 ms -> 335 ms, the clip 1.74 s -> 1.62 s; 128 rows gave no more (1.62 s). Only
#: where the partial sums are cut changes.
ROW_CHUNK = 256


def openvino_graph(model: onnx.ModelProto, int8_weights: bool = False) -> onnx.ModelProto:
    """The copy of an export that OpenVINO reads: attention decomposed, each KeyframeTopKPrune
    unrolled over its static row chunks (:func:`unroll_pruning`), the other local functions
    inlined (RoIAlign3D becomes its standard-op body); with ``int8_weights`` every MatMul weight
    stored as int8 (:func:`int8_matmul_weights`)."""
    from onnx import inliner

    graph = unroll_pruning(decompose_fused_attention(model))
    if int8_weights:
        graph = int8_matmul_weights(graph)
    return inliner.inline_local_functions(graph)


def int8_matmul_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with each MatMul's constant 2-D weight W (in, out) stored as symmetric int8 per
    output column: ``DequantizeLinear(round(W / s), s, axis=1)``, s = max|W[:, j]| / 127.

    Why: OpenVINO turns that pattern into a compressed FullyConnected (int8 weights expanded in
    registers, bf16 products), which reads a quarter of the bytes. Each weight moves by at most
    s / 2; activations are not quantized.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    users: dict[str, int] = {}
    for node in out.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 \
            else None
        if w is None or len(w.dims) != 2 or users[w.name] != 1 or \
                w.data_type != onnx.TensorProto.FLOAT:
            nodes.append(node)
            continue
        value = onnx.numpy_helper.to_array(w).astype(np.float32)
        scale = np.maximum(np.abs(value).max(axis=0), 1e-30) / 127.0
        q = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
        w.CopyFrom(onnx.numpy_helper.from_array(q, w.name))
        out.graph.initializer.append(onnx.numpy_helper.from_array(
            scale.astype(np.float32), w.name + "/scale"))
        nodes.append(helper.make_node("DequantizeLinear", [w.name, w.name + "/scale"],
                                      [w.name + "/fp32"], axis=1, name=w.name + "/dequantize"))
        node.input[1] = w.name + "/fp32"
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def tensor_dims(model: onnx.ModelProto, name: str) -> list[int | None]:
    """The declared shape of tensor ``name`` (a graph input, output or value_info): each
    dimension's size, None where it is symbolic (the batch).

    Raises:
        ConfigError: the graph declares no shape for ``name`` (an export without shape
            inference).
    """
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else None
                    for d in vi.type.tensor_type.shape.dim]
    raise ConfigError(f"no shape for {name!r}: re-export the model with evad-export")


def unroll_pruning(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with each ``evad`` KeyframeTopKPrune node written out in standard ops, its
    :data:`ROW_CHUNK` query-row chunks unrolled (N is static in an export).

    Why: OpenVINO runs an ONNX Loop as an opaque node without its bf16 kernels (0.9 s of a
    4.3 s vit_b_ktp clip); unrolled, each chunk's MatMul and Softmax are ordinary nodes. The maths
    is the op's contract (``evad.models.keyframe_topk_prune.importance``); the chunks are also
    cut where the keyframe rows end, and each chunk's rows are summed over every key before the
    non-keyframe columns are taken (the same terms, added in another order). Under OpenVINO's
    bf16 hint the Casts to fp32 do not hold: the importance products run in bf16 too, which
    the reduced-precision parity measures (kept-token Jaccard >= 0.988 on vit_b_ktp).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(out.graph.node):
        if node.domain != "evad" or node.op_type != "KeyframeTopKPrune":
            nodes.append(node)
        else:
            nodes += _unrolled_prune(out, node, f"_prune{i}_")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _unrolled_prune(out: onnx.ModelProto, node: onnx.NodeProto,
                    p: str) -> list[onnx.NodeProto]:
    """One KeyframeTopKPrune node in standard ops; its constants go into ``out``'s
    initializers, named with the prefix ``p``."""
    nodes: list[onnx.NodeProto] = []
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    q, k, x, idx = node.input
    n, m, c = tensor_dims(out, q)[2], tensor_dims(out, x)[1], tensor_dims(out, x)[2]
    if n is None or m is None or c is None:
        raise ConfigError(f"{node.name}: token count not static; re-export with evad-export")
    s = n - m
    kk = (a["keep_num"] * n + a["keep_den"] - 1) // a["keep_den"] - s
    made: set[str] = set()

    def const(name: str, value: np.ndarray) -> str:
        if name not in made:  # one initializer per name, however often it is used
            made.add(name)
            out.graph.initializer.append(onnx.numpy_helper.from_array(value, p + name))
        return p + name

    nodes += [helper.make_node("Cast", [q], [p + "qf"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Cast", [k], [p + "kf"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Transpose", [p + "kf"], [p + "kt"], perm=[0, 1, 3, 2])]
    # Chunks of ROW_CHUNK rows, split where the keyframe rows end, so each chunk has one
    # row weight: sum its softmax rows over every key (B, H, N), weight that sum, and take
    # the non-keyframe columns once at the end (no (rows, N) slice or product per chunk).
    cuts = sorted({*range(0, n, ROW_CHUNK), s if 0 < s < n else 0, n})
    total = None
    for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True):
        tag = f"{p}c{r0}_"
        weight = float(a["keyframe_weight"]) if r0 < s else 1.0
        nodes += [
            helper.make_node("Slice", [p + "qf", const(f"r0_{r0}", np.array([r0], np.int64)),
                                       const(f"r1_{r0}", np.array([r1], np.int64)),
                                       const("axis2", np.array([2], np.int64))], [tag + "q"]),
            helper.make_node("MatMul", [tag + "q", p + "kt"], [tag + "logits"]),
            helper.make_node("Softmax", [tag + "logits"], [tag + "probs"], axis=-1),
            helper.make_node("ReduceSum", [tag + "probs", const("axis2", np.array([2], np.int64))],
                             [tag + "sum"], keepdims=0),
        ]
        part = tag + "sum"
        if weight != 1.0:
            nodes.append(helper.make_node(
                "Mul", [part, const(f"w_{r0}", np.array(weight, np.float32))],
                [tag + "weighted"]))
            part = tag + "weighted"
        if total is None:
            total = part
        else:
            nodes.append(helper.make_node("Add", [total, part], [tag + "total"]))
            total = tag + "total"
    nodes.append(helper.make_node(
        "Slice", [total, const("s", np.array([s], np.int64)), const("n", np.array([n], np.int64)),
                  const("axis2", np.array([2], np.int64))], [p + "cols"]))
    total = p + "cols"
    nodes += [
        helper.make_node("Div", [total, const("nf", np.array(float(n), np.float32))],
                         [p + "mean_rows"]),
        helper.make_node("ReduceMean", [p + "mean_rows", const("axis1", np.array([1], np.int64))],
                         [p + "score"], keepdims=0),
        helper.make_node("TopK", [p + "score", const("k", np.array([kk], np.int64))],
                         [p + "top", p + "pos"], axis=1, largest=1, sorted=1),
        helper.make_node("GatherElements", [idx, p + "pos"], [node.output[1]], axis=1),
        helper.make_node("Unsqueeze", [p + "pos", const("axis2", np.array([2], np.int64))],
                         [p + "pos3"]),
        helper.make_node("Expand", [p + "pos3", const("xshape", np.array([1, 1, c], np.int64))],
                         [p + "posx"]),
        helper.make_node("GatherElements", [x, p + "posx"], [node.output[0]], axis=1),
    ]
    return nodes
