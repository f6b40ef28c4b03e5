"""The copy of an evad export that OpenVINO reads, rewritten in memory: the fused attention
decomposed, each ``KeyframeTopKPrune`` unrolled over its static row chunks, the patch
embedding's convolution written as a matrix product, the action pooler's ``RoIAlign3D`` written
as two products with its bilinear weights, the other local functions (the other RoIAlign3D
nodes among them) inlined and, optionally, every MatMul weight stored as int8.

Why a rewrite at all: OpenVINO binds no model-local function of a custom domain and runs an ONNX
``Loop`` as an opaque node without its bf16 kernels; the runner
(``evad.export.openvino_runner``) compiles what this module returns and never changes the file.
Graph surgery only: torch-free and onnx-only (no OpenVINO).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from evad.errors import ConfigError
from evad.fused_attention import decompose_fused_attention
from evad.op_contracts import ROI_ALIGN_3D

__all__ = ["ROW_CHUNK", "int8_matmul_weights", "is_clip_pooling_layer", "is_pruning_layer",
           "is_pruning_logits", "openvino_graph", "patchify_convolutions",
           "separable_clip_pooling", "tensor_dims", "unroll_pruning"]

#: the prefix of every tensor :func:`unroll_pruning` writes (``_prune<i>_``, ``i`` the node's
#: position); OpenVINO names each layer after its output
_PRUNE_PREFIX = "_prune"
#: the prefix of every tensor :func:`separable_clip_pooling` writes (``_clippool<i>_``)
_CLIP_POOL_PREFIX = "_clippool"


#: query rows per unrolled importance chunk. Smaller than the op contract's 1024
#: (``evad.op_contracts.IMPORTANCE_ROW_CHUNK``): each chunk's (B, heads, rows, N) logits and
#: probabilities are materialized (that smaller slabs stay in cache is a guess, not measured);
#: under the bf16 hint each chunk's row sums leave their product in bf16 and are added in f32.
#: A vit_b_ktp clip's three importances on the 2-core AMX Xeon, bf16 (OpenVINO's layer counters,
#: one profiled run each): 128 rows 224 ms, 256 rows 214 ms, 512 rows 246 ms; one importance at
#: N = 4608 is 0.29 % of its mean off an f32 importance at 256 rows, 0.36 % at 512
#: (``benchmarks/results/openvino_row_sum_ab.json``).
ROW_CHUNK = 256


def openvino_graph(model: onnx.ModelProto, int8_weights: bool = False) -> onnx.ModelProto:
    """The copy of an export that OpenVINO reads: attention decomposed, each KeyframeTopKPrune
    unrolled over its static row chunks (:func:`unroll_pruning`), the patch embedding's
    convolution written as a matrix product (:func:`patchify_convolutions`), the RoIAlign3D
    that pools a clip written as two products with its bilinear weights
    (:func:`separable_clip_pooling`), the other local functions inlined (the other
    RoIAlign3D nodes become its standard-op body); with ``int8_weights`` every MatMul weight
    stored as int8 (:func:`int8_matmul_weights`)."""
    from onnx import inliner

    graph = separable_clip_pooling(
        patchify_convolutions(unroll_pruning(decompose_fused_attention(model))))
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


def _constants(out: onnx.ModelProto, prefix: str) -> Callable[[str, np.ndarray], str]:
    """A function ``const(name, value)`` that adds ``value`` to ``out``'s initializers as
    ``prefix + name`` the first time the name is asked for, and returns that name."""
    made: set[str] = set()

    def const(name: str, value: np.ndarray) -> str:
        if name not in made:  # one initializer per name, however often it is used
            made.add(name)
            out.graph.initializer.append(onnx.numpy_helper.from_array(value, prefix + name))
        return prefix + name

    return const


def patchify_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with each convolution whose kernel is its stride (no padding, dilation or groups)
    over a graph input with static spatial dims written as the matrix product it is: the input
    cut into patches (Reshape, Transpose), one MatMul with the weight as (C_in * kernel, C_out),
    the bias added, and the result put back in the convolution's (B, C_out, *spatial) layout.

    Why: the patch embedding (kernel = stride = (2, 16, 16) over the clip, 5.4 GMACs for
    vit_b_ktp at 288x512) took 40 ms as OpenVINO 2026.4's AMX convolution in bf16 on the AMX
    Xeon, 15 ms as this product. The same terms, summed in another order. Only a convolution
    of a graph input is rewritten: the calibrated INT8 export keeps its patch embedding float
    (``evad.export.int8``), so its Conv of the clip is rewritten too; a graph that quantizes the
    clip first convolves a computed tensor and keeps its Conv.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = {vi.name for vi in out.graph.input}
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(out.graph.node):
        plan = _patch_plan(out, node) if node.op_type == "Conv" and node.input[0] in inputs \
            else None
        if plan is None:
            nodes.append(node)
            continue
        nodes += _patch_product(out, node, *plan, prefix=f"_patch{i}_")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _patch_plan(model: onnx.ModelProto,
                node: onnx.NodeProto) -> tuple[list[int], list[int]] | None:
    """(input channels and spatial dims, kernel) of a convolution that is a patch product,
    else None."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    dims = tensor_dims(model, node.input[0])
    kernel = list(a.get("kernel_shape", []))
    spatial = dims[2:]
    if (len(node.input) < 2 or not kernel or list(a.get("strides", [])) != kernel
            or any(a.get("pads", [0])) or any(d != 1 for d in a.get("dilations", [1]))
            or a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") != b"NOTSET"
            or len(spatial) != len(kernel) or dims[1] is None
            or any(d is None or d % k for d, k in zip(spatial, kernel, strict=True))):
        return None
    return [dims[1], *spatial], kernel  # type: ignore[list-item]


def _patch_product(out: onnx.ModelProto, node: onnx.NodeProto, dims: list[int],
                   kernel: list[int], prefix: str) -> list[onnx.NodeProto]:
    """The nodes that compute Conv ``node`` as patches times its weight: input
    (B, C_in, *spatial) -> output (B, C_out, *spatial // kernel), under the Conv's output name.
    ``dims`` is (C_in, *spatial); the shape constants go into ``out``'s initializers, named
    with ``prefix``."""
    c_in, spatial = dims[0], dims[1:]
    grid = [d // k for d, k in zip(spatial, kernel, strict=True)]
    r = len(kernel)
    # (B, C, g0, k0, g1, k1, ...) -> (B, g0, g1, ..., C, k0, k1, ...): each patch's
    # C * prod(k) values in the weight's (C_in, k0, k1, ...) order
    split = [0, c_in] + [x for g, k in zip(grid, kernel, strict=True) for x in (g, k)]
    perm = [0, *range(2, 2 + 2 * r, 2), 1, *range(3, 3 + 2 * r, 2)]
    patch = c_in * int(np.prod(kernel))
    tokens = int(np.prod(grid))

    const = _constants(out, prefix)

    def shape(name: str, dims: list[int]) -> str:
        return const(name, np.array(dims, np.int64))

    x, w = node.input[0], node.input[1]
    nodes = [
        helper.make_node("Reshape", [x, shape("split_shape", split)], [prefix + "cut"]),
        helper.make_node("Transpose", [prefix + "cut"], [prefix + "patches"], perm=perm),
        helper.make_node("Reshape", [prefix + "patches", shape("rows_shape", [0, tokens, patch])],
                         [prefix + "rows"]),
        # the weight (C_out, C_in, *k) as (C_out, C_in * prod(k)), transposed for the
        # product: OpenVINO folds both into its FullyConnected weight
        helper.make_node("Reshape", [w, shape("w2_shape", [0, patch])], [prefix + "w2"]),
        helper.make_node("Transpose", [prefix + "w2"], [prefix + "wt"], perm=[1, 0]),
        helper.make_node("MatMul", [prefix + "rows", prefix + "wt"], [prefix + "product"]),
    ]
    product = prefix + "product"
    if len(node.input) > 2 and node.input[2]:
        nodes.append(helper.make_node("Add", [product, node.input[2]], [prefix + "biased"]))
        product = prefix + "biased"
    nodes += [
        helper.make_node("Transpose", [product], [prefix + "channels"], perm=[0, 2, 1]),
        helper.make_node("Reshape", [prefix + "channels", shape("grid_shape", [0, 0, *grid])],
                         [node.output[0]]),
    ]
    return nodes


def separable_clip_pooling(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with each ``evad`` RoIAlign3D node that pools a clip (T > 1: the action pooler)
    written as the two products the torch reference computes (``evad.models.roi_align_3d``):
    out[r, :, t] = Wy[r] @ F[b_r, :, t] @ Wx[r]^T, Wy (R, oh, H) and Wx (R, ow, W) each RoI's
    averaged bilinear weights along one axis. Nodes with T = 1 (the actor localization's
    pyramid levels: larger maps, where the products would cost far more than the samples) and
    nodes whose map size is not static are left to RoIAlign3D's body, as is the legacy
    alignment (``aligned`` 0, which the exporter refuses).

    Why: OpenVINO 2026.4's ROIAlign took 128 ms of a vit_b_ktp clip for the action pooler (100
    RoIs over a (1, 3072, 18, 32) map, f32, 2-core AMD EPYC), the two products 38 ms
    (docs/design.md, "The CPU paths", has the clip times and memory). The weights come from
    OpenVINO's own ROIAlign over two small constant maps whose channels are the map's rows (or
    columns) as one-hot planes, so its f32 sampling places the samples: written in standard ops,
    the box arithmetic ran in bf16 under the bf16 hint (9 % off at x ~ 370 px). The batch is
    part of the second contraction (a RoI of element b weighs only element b's rows), so one
    pair of products serves every batch element, at B times the work of one (the runner runs one
    clip at a time); W is contracted first, the longer side of a landscape clip, so the
    intermediate (T, R * ow, B * H * C) is the smaller one. The contract's batch-index rule
    (``evad.op_contracts.ROI_ALIGN_3D``) as RoIAlign3D's body has it: a RoI whose index is
    invalid pools from element 0 with a box that samples nothing, so its output is zeros. One
    difference from RoiAlign, on a broken model only: a NaN or an infinity anywhere in the map
    reaches every RoI's output, the invalid ones' too (0 times it is NaN), not only those that
    sample it.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(out.graph.node):
        plan = _clip_pooling_plan(out, node)
        if plan is None:
            nodes.append(node)
        else:
            nodes += _separable_pooling(out, node, *plan, f"{_CLIP_POOL_PREFIX}{i}_")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _clip_pooling_plan(model: onnx.ModelProto, node: onnx.NodeProto
                       ) -> tuple[list[int], dict[str, Any]] | None:
    """((C, T, H, W), attributes) of a RoIAlign3D node :func:`separable_clip_pooling`
    rewrites, else None."""
    if node.domain != "evad" or node.op_type != "RoIAlign3D":
        return None
    a = {**ROI_ALIGN_3D.defaults,
         **{x.name: helper.get_attribute_value(x) for x in node.attribute}}
    dims = tensor_dims(model, node.input[0])[1:]
    if len(dims) != 4 or None in dims or a["aligned"] != 1:
        return None
    static = [d for d in dims if d is not None]
    return (static, a) if static[1] > 1 else None


def _separable_pooling(out: onnx.ModelProto, node: onnx.NodeProto, dims: list[int],
                       a: dict[str, Any], p: str) -> list[onnx.NodeProto]:
    """The nodes of :func:`separable_clip_pooling` for one RoIAlign3D node: features
    (B, C, T, H, W), rois (R, 5) -> (R, C, T, oh, ow) under the node's output name; the
    constants go into ``out``'s initializers, named with the prefix ``p``."""
    c, t, h, w = dims
    oh, ow, scale = a["output_height"], a["output_width"], float(a["spatial_scale"])
    features, rois = node.input
    const = _constants(out, p)

    def ints(name: str, value: list[int] | int) -> str:
        return const(name, np.array(value, np.int64))

    def floats(name: str, value: float) -> str:
        return const(name, np.array(value, np.float32))

    sample = dict(mode="avg", sampling_ratio=a["sampling_ratio"], spatial_scale=scale,
                  coordinate_transformation_mode="half_pixel")
    # a box this far up and left samples nothing (every sample below -1 feature pixel; the
    # clamp keeps it finite, and still far enough, for any spatial_scale above 1e-37)
    far = max(-(max(h, w) + 2) / scale, -1e38)
    return [
        # the contract's batch-index rule, as RoIAlign3D's body writes it
        helper.make_node("Shape", [features], [p + "b"], start=0, end=1),
        helper.make_node("Cast", [p + "b"], [p + "bf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Slice", [rois, ints("s0", [0]), ints("s1", [1]), ints("ax1", [1])],
                         [p + "index"]),
        helper.make_node("GreaterOrEqual", [p + "index", floats("zero_f", 0.0)], [p + "ge0"]),
        helper.make_node("Less", [p + "index", p + "bf"], [p + "ltb"]),
        helper.make_node("Floor", [p + "index"], [p + "floor"]),
        helper.make_node("Equal", [p + "floor", p + "index"], [p + "whole"]),
        helper.make_node("And", [p + "ge0", p + "ltb"], [p + "inside"]),
        helper.make_node("And", [p + "inside", p + "whole"], [p + "valid"]),  # (R, 1)
        helper.make_node("Where", [p + "valid", p + "index", floats("zero_f", 0.0)],
                         [p + "safe"]),
        helper.make_node("Cast", [p + "safe"], [p + "bi"], to=onnx.TensorProto.INT64),
        helper.make_node("Reshape", [p + "bi", ints("flat", [-1])], [p + "batch"]),
        # an invalid RoI samples nothing, so its output is zeros
        helper.make_node("Slice", [rois, ints("s1", [1]), ints("s5", [5]), ints("ax1", [1])],
                         [p + "raw"]),
        helper.make_node("Where", [p + "valid", p + "raw", floats("far", far)], [p + "boxes"]),
        helper.make_node("Split", [p + "boxes", ints("ones4", [1, 1, 1, 1])],
                         [p + "x1", p + "y1", p + "x2", p + "y2"], axis=1),
        helper.make_node("Shape", [p + "index"], [p + "ishape"]),
        helper.make_node("ConstantOfShape", [p + "ishape"], [p + "zcol"],
                         value=onnx.numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Concat", [p + "zcol", p + "y1", p + "zcol", p + "y2"],
                         [p + "yrois"], axis=1),
        helper.make_node("Concat", [p + "x1", p + "zcol", p + "x2", p + "zcol"],
                         [p + "xrois"], axis=1),
        helper.make_node("Shape", [p + "index"], [p + "r"], start=0, end=1),
        helper.make_node("ConstantOfShape", [p + "r"], [p + "batch0"],
                         value=onnx.numpy_helper.from_array(np.zeros(1, np.int64))),
        # The row map (B, B * H, H, 1): in batch element b, channel (b, y) is row y (ones),
        # the channels of the other elements are zeros. A RoI (0, y1, 0, y2) of element b
        # samples column 0 only, so RoiAlign gives its bins' weights of each (element, row):
        # (R, B * H, oh, 1). The column map (1, W, 1, W): channel x is column x.
        helper.make_node("Squeeze", [p + "b"], [p + "bs"]),
        helper.make_node("Range", [ints("zero", 0), p + "bs", ints("one", 1)], [p + "range"]),
        helper.make_node("Unsqueeze", [p + "range", ints("ax1", [1])], [p + "bcol"]),
        helper.make_node("Unsqueeze", [p + "range", ints("ax0", [0])], [p + "brow"]),
        helper.make_node("Equal", [p + "bcol", p + "brow"], [p + "eye_b"]),
        helper.make_node("Cast", [p + "eye_b"], [p + "eye_bf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Reshape", [p + "eye_bf", ints("eye5_shape", [0, 0, 1, 1, 1])],
                         [p + "eye5"]),
        helper.make_node("Mul", [p + "eye5", const("rows", np.eye(h, dtype=np.float32)
                                                   .reshape(1, 1, h, h, 1))], [p + "rows5"]),
        helper.make_node("Mul", [p + "b", ints("h", [h])], [p + "bh"]),
        helper.make_node("Concat", [p + "b", p + "bh", ints("h1", [h, 1])],
                         [p + "rowmap_shape"], axis=0),
        helper.make_node("Reshape", [p + "rows5", p + "rowmap_shape"], [p + "rowmap"]),
        helper.make_node("RoiAlign", [p + "rowmap", p + "yrois", p + "batch"], [p + "wy4"],
                         output_height=oh, output_width=1, **sample),
        helper.make_node("RoiAlign", [const("colmap", np.eye(w, dtype=np.float32)
                                            .reshape(1, w, 1, w)), p + "xrois", p + "batch0"],
                         [p + "wx4"], output_height=1, output_width=ow, **sample),
        # weights (R, B * H, oh, 1) -> (1, R, 1, oh, B * H): the batch is part of the
        # contraction, so one product serves every batch element; (R, W, 1, ow) -> (1, R * ow, W)
        helper.make_node("Concat", [p + "r", p + "bh", ints("oh", [oh])], [p + "wy3_shape"],
                         axis=0),  # R itself, not -1 (R may be 0), read as is (allowzero)
        helper.make_node("Reshape", [p + "wy4", p + "wy3_shape"], [p + "wy3"], allowzero=1),
        helper.make_node("Transpose", [p + "wy3"], [p + "wyt"], perm=[0, 2, 1]),
        helper.make_node("Concat", [ints("one1", [1]), p + "r", ints("one_oh", [1, oh]),
                                    p + "bh"], [p + "wy_shape"], axis=0),
        helper.make_node("Reshape", [p + "wyt", p + "wy_shape"], [p + "wy"], allowzero=1),
        helper.make_node("Reshape", [p + "wx4", ints("wx3_shape", [0, w, ow])], [p + "wx3"]),
        helper.make_node("Transpose", [p + "wx3"], [p + "wxt"], perm=[0, 2, 1]),
        helper.make_node("Mul", [p + "r", ints("ow", [ow])], [p + "rw"]),
        helper.make_node("Concat", [ints("one1", [1]), p + "rw", ints("w", [w])],
                         [p + "wx_shape"], axis=0),
        helper.make_node("Reshape", [p + "wxt", p + "wx_shape"], [p + "wx"], allowzero=1),
        # x first (the longer axis of a landscape clip, so the intermediate is the smaller):
        # the map as (T, W, B * H * C), then (T, R * ow, B * H * C) -> (T, R, ow, B * H, C)
        # and the rows: (T, R, ow, oh, C)
        helper.make_node("Transpose", [features], [p + "twbhc"], perm=[2, 4, 0, 3, 1]),
        helper.make_node("Reshape", [p + "twbhc", ints("fmap_shape", [t, w, -1])],
                         [p + "fmap"]),
        helper.make_node("MatMul", [p + "wx", p + "fmap"], [p + "xbins"]),
        helper.make_node("Concat", [ints("t", [t]), p + "r", ints("ow", [ow]), p + "bh",
                                    ints("c", [c])], [p + "x5_shape"], axis=0),
        helper.make_node("Reshape", [p + "xbins", p + "x5_shape"], [p + "x5"], allowzero=1),
        helper.make_node("MatMul", [p + "wy", p + "x5"], [p + "pooled"]),
        helper.make_node("Transpose", [p + "pooled"], [node.output[0]], perm=[1, 4, 0, 3, 2]),
    ]


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
    4.3 s vit_b_ktp clip); unrolled, each chunk's logits MatMul, Softmax and row sum are
    ordinary layers with OpenVINO's AMX / AVX-512 kernels. The row sum is a product of the
    transposed probabilities with a ones column computed at run time: OpenVINO turns a product
    with a constant into a FullyConnected (1.58 s a clip against 1.35 s), and with the ones as a
    row in front (``MatMul(ones, probs)``) it fuses logits, Softmax and sum into one kernel that
    is slower than the three layers (1.44 s against 1.38 s a clip; alternated, bf16, the AMX
    Xeon: ``benchmarks/results/openvino_row_sum_ab.json``). The maths is the op's contract
    (``evad.models.keyframe_topk_prune.importance``); the chunks are also cut where the keyframe
    rows end, and each chunk's rows are summed over every key before the non-keyframe columns
    are taken (the same terms, added in another order).
    Under OpenVINO's bf16 hint the Casts to fp32 do not hold: the importance products and the
    Softmax run in bf16 too, and each chunk's row sums leave their product in bf16, which the
    reduced-precision parity measures (``evad-parity --backend openvino --precision bf16``).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(out.graph.node):
        if node.domain != "evad" or node.op_type != "KeyframeTopKPrune":
            nodes.append(node)
        else:
            nodes += _unrolled_prune(out, node, f"{_PRUNE_PREFIX}{i}_")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def is_pruning_layer(name: str) -> bool:
    """Whether ``name`` (an OpenVINO layer's) is one of an unrolled KeyframeTopKPrune's
    (:func:`unroll_pruning`): its importance, TopK and gathers."""
    return re.search(rf"{_PRUNE_PREFIX}\d+_", name) is not None


def is_clip_pooling_layer(name: str) -> bool:
    """Whether ``name`` (an OpenVINO layer's) is one that :func:`separable_clip_pooling`
    wrote for a RoIAlign3D: the RoiAligns that find its weights, their reshapes and the two
    products. Not its last Transpose, which keeps the node's output name (OpenVINO folds it
    into the reduction after it)."""
    return re.search(rf"{_CLIP_POOL_PREFIX}\d+_", name) is not None


def is_pruning_logits(name: str) -> bool:
    """Whether ``name`` (an OpenVINO layer's) is the logits product of a chunk of an unrolled
    KeyframeTopKPrune's importance (:func:`unroll_pruning`): q k^T for its rows."""
    return re.search(rf"{_PRUNE_PREFIX}\d+_c\d+_logits$", name) is not None


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
    const = _constants(out, p)
    ones_columns: set[str] = set()

    nodes += [helper.make_node("Cast", [q], [p + "qf"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Cast", [k], [p + "kf"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Transpose", [p + "kf"], [p + "kt"], perm=[0, 1, 3, 2]),
              # A zero computed from q, not a constant: the row sums below are products with
              # a ones column, which OpenVINO makes a FullyConnected (slow with one output
              # column) where the column is a constant. q * 0 is 0 wherever the importance is
              # finite (where q is not, the softmax is NaN anyway).
              helper.make_node("Slice", [p + "qf", const("zero_i", np.array([0, 0], np.int64)),
                                         const("one_i", np.array([1, 1], np.int64)),
                                         const("axes23", np.array([2, 3], np.int64))],
                               [p + "q00"]),
              helper.make_node("Mul", [p + "q00", const("zero_f", np.array(0.0, np.float32))],
                               [p + "zero"])]
    # Chunks of ROW_CHUNK rows, split where the keyframe rows end, so each chunk has one
    # row weight: sum its softmax rows over every key (B, H, N) as the transposed probabilities
    # (B, H, N, rows) times a ones column (rows, 1) (ones are exact in bf16; the keyframe weight
    # is applied after, in f32), take the non-keyframe columns once at the end (no (rows, N)
    # slice or product per chunk).
    cuts = sorted({*range(0, n, ROW_CHUNK), s if 0 < s < n else 0, n})
    total = None
    for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True):
        tag = f"{p}c{r0}_"
        weight = float(a["keyframe_weight"]) if r0 < s else 1.0
        ones = f"ones{r1 - r0}"
        if ones not in ones_columns:  # one runtime ones column per chunk height
            ones_columns.add(ones)
            nodes.append(helper.make_node(
                "Add", [p + "zero", const(ones, np.ones((1, 1, r1 - r0, 1), np.float32))],
                [p + ones + "_rt"]))
        nodes += [
            helper.make_node("Slice", [p + "qf", const(f"r0_{r0}", np.array([r0], np.int64)),
                                       const(f"r1_{r0}", np.array([r1], np.int64)),
                                       const("axis2", np.array([2], np.int64))], [tag + "q"]),
            helper.make_node("MatMul", [tag + "q", p + "kt"], [tag + "logits"]),
            helper.make_node("Softmax", [tag + "logits"], [tag + "probs"], axis=-1),
            helper.make_node("Transpose", [tag + "probs"], [tag + "probs_t"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [tag + "probs_t", p + ones + "_rt"], [tag + "sum4"]),
            helper.make_node("Squeeze", [tag + "sum4", const("axis3", np.array([3], np.int64))],
                             [tag + "sum"]),
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
