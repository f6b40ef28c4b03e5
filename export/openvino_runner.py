"""OpenVINO as a :class:`evad.runner.Runner`: an exported EVAD graph on the CPU in fp32 or bf16.

Why OpenVINO for the fast CPU path: on CPUs with AVX512-BF16 its bf16 kernels run the matrix
products at the bf16 rate and its fused attention (the MatMul + Softmax + MatMul pattern becomes
one SDPA node) holds no (B, heads, N, N) scores; ONNX Runtime has no bf16 CPU kernels and torch's
CPU attention does not speed up in bf16 (``README.md``, "Speed on a CPU", has the figures).

What OpenVINO is given: the export with its ``evad`` local functions inlined (OpenVINO binds
no model-local function of a custom domain) and the fused ``com.microsoft`` attention
decomposed (``evad.fused_attention``), built in memory from the file; the file is not changed.
Torch-free.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from evad.command import check_input_file, one_line
from evad.errors import BackendError, ConfigError
from evad.fused_attention import decompose_fused_attention
from evad.hashing import file_sha256
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.op_contracts import IMPORTANCE_ROW_CHUNK
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, ModelSpec

if TYPE_CHECKING:
    import openvino as ov
else:
    ov = lazy_import("openvino", "pip install 'evad-deploy[openvino]' (or: pip install openvino)")

__all__ = ["OPENVINO_PRECISIONS", "OpenVinoRunner", "cache_dir", "cpu_has_bf16",
           "int8_matmul_weights",
           "openvino_graph", "unroll_pruning"]

#: precision name -> (OpenVINO's INFERENCE_PRECISION_HINT, MatMul weights stored as int8)
OPENVINO_PRECISIONS = {"fp32": ("f32", False), "bf16": ("bf16", False),
                       "bf16-int8w": ("bf16", True)}


def cache_dir() -> str:
    """Where compiled models are kept (OpenVINO's model cache: compiling vit_b_ktp takes about
    2 minutes on 2 cores, loading it from the cache seconds): ``$EVAD_OPENVINO_CACHE``, else
    ``~/.cache/evad/openvino``; an empty ``EVAD_OPENVINO_CACHE`` turns the cache off."""
    return os.environ.get("EVAD_OPENVINO_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "evad", "openvino"))


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


def _dims(model: onnx.ModelProto, name: str) -> list[int | None]:
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else None
                    for d in vi.type.tensor_type.shape.dim]
    raise ConfigError(f"no shape for {name!r}: re-export the model with evad-export")


def unroll_pruning(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with each ``evad`` KeyframeTopKPrune node written out in standard ops, its
    ``IMPORTANCE_ROW_CHUNK`` query-row chunks unrolled (N is static in an export).

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
    n, m, c = _dims(out, q)[2], _dims(out, x)[1], _dims(out, x)[2]
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
    cuts = sorted({*range(0, n, IMPORTANCE_ROW_CHUNK), s if 0 < s < n else 0, n})
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


def cpu_has_bf16(core: ov.Core | None = None) -> bool:
    """Whether OpenVINO sees native bf16 on this CPU (AVX512-BF16 or AMX)."""
    core = core or ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _usable_cache() -> bool:
    """Whether the cache folder exists or can be made (an unwritable home compiles uncached)."""
    if not cache_dir():
        return False
    try:
        os.makedirs(cache_dir(), exist_ok=True)
    except OSError:
        return False
    return os.access(cache_dir(), os.W_OK)


class OpenVinoRunner:
    """An exported model compiled by OpenVINO for the CPU.

    Args:
        path: the ``.onnx`` from evad-export.
        precision: ``"fp32"``, ``"bf16"`` or ``"bf16-int8w"`` (bf16 with every MatMul weight
            stored as int8, :func:`int8_matmul_weights`); bf16 needs a CPU with native bf16
            (AVX512-BF16 or AMX).
        threads: inference threads (0 = OpenVINO's default, one per core).

    Raises:
        EvadError: the file is missing or not an evad export; MissingDependency: no openvino;
        ConfigError: an unknown precision, or bf16 on a CPU without it; BackendError: OpenVINO
        cannot read or compile the graph.
    """

    def __init__(self, path: str | os.PathLike, precision: str = "bf16",
                 threads: int = 0) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"OpenVINO precision {precision!r}: use one of "
                              f"{', '.join(OPENVINO_PRECISIONS)}")
        self.path = check_input_file(path, "ONNX model")
        self.metadata = read_metadata(self.path)
        self.spec = ModelSpec.from_metadata(self.metadata, f"ONNX model {self.path}",
                                            file_sha256(self.path, f"{self.path}.data"))
        self.precision = precision
        core = ov.Core()
        hint, int8_weights = OPENVINO_PRECISIONS[precision]
        if hint == "bf16" and not cpu_has_bf16(core):
            raise ConfigError("this CPU has no native bf16 (AVX512-BF16 or AMX); use "
                              "--precision fp32")
        try:
            graph = openvino_graph(onnx.load(str(self.path)), int8_weights)
            model = core.read_model(graph.SerializeToString(), ov.Tensor(np.empty(0, np.uint8)))
            del graph
            config: dict = {"INFERENCE_PRECISION_HINT": hint}
            if _usable_cache():
                # one folder per precision: OpenVINO's cache key does not include the
                # inference precision hint, and a blob compiled at fp32 loaded for bf16 gave
                # wrong outputs (96x192) or a crash (288x512)
                config["CACHE_DIR"] = os.path.join(cache_dir(), precision)
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with pages of text: one line
            raise BackendError(f"OpenVINO cannot compile {self.path}: {one_line(e)}") from e
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.name = f"openvino (CPU, {precision})"
        self.on_gpu = False

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w) -> outputs by name."""
        feeds = {INPUT_CLIP: np.ascontiguousarray(clip, dtype=np.float32),
                 INPUT_IMAGE_SIZE: np.ascontiguousarray(image_size, dtype=np.int64)}
        result = self.request.infer(feeds)
        return {name: np.array(result[out]) for name, out in
                zip(self.output_names, self.compiled.outputs, strict=True)}
