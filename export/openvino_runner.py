"""OpenVINO as a :class:`evad.runner.Runner`: an exported EVAD graph on the CPU in fp32 or bf16.

Why OpenVINO for the fast CPU path: on CPUs with AVX512-BF16 its bf16 kernels run the matrix
products at the bf16 rate and its fused attention (the MatMul + Softmax + MatMul pattern becomes
one SDPA node) holds no (B, heads, N, N) scores; ONNX Runtime has no bf16 CPU kernels and torch's
CPU attention does not speed up in bf16 (``README.md``, "Speed on a CPU", has the figures).

What OpenVINO is given: the export with its ``evad`` local functions inlined (OpenVINO binds
no model-local function of a custom domain), the fused ``com.microsoft`` attention
decomposed, the pruning importance unrolled into row chunks, the patch embedding
written as a matrix product and the action pooler as two products with its bilinear weights,
built in memory from the file by ``evad.export.openvino_graph``;
the file is not changed. This module compiles that graph for one clip, through an IR file in
the model cache (:func:`_compile`), and runs it. Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evad.command import check_input_file, one_line
from evad.errors import BackendError, ConfigError, EvadError
from evad.export.openvino_cache import (
    blobs_since,
    cache_keep,
    ir_path,
    openvino_cache_dir,
    precision_folder,
    prune_cache,
    record_use,
    tmp_ir,
    usable_cache,
)
from evad.export.openvino_graph import (
    is_clip_pooling_layer,
    is_pruning_layer,
    is_pruning_logits,
    openvino_graph,
    tensor_dims,
)
from evad.export.ort_runner import file_precision
from evad.hashing import onnx_sha256
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, ModelSpec, RunnerBase

if TYPE_CHECKING:
    import openvino as ov
else:
    ov = lazy_import("openvino", "pip install 'evad-deploy[openvino]' (or: pip install openvino)")

__all__ = ["OPENVINO_PRECISIONS", "OpenVinoRunner", "cpu_has_bf16", "precision_hint"]

#: precision name -> (OpenVINO's INFERENCE_PRECISION_HINT, MatMul weights stored as int8). The
#: calibrated INT8 export ("int8") runs its Q/DQ products in int8 and its float rest at the hint:
#: bf16 where the CPU has it natively, but its pruning importance's row sums at f32
#: (:func:`_f32_layers`); f32 on a CPU without bf16 or when fp32 is asked (:func:`precision_hint`)
OPENVINO_PRECISIONS = {"fp32": ("f32", False), "bf16": ("bf16", False),
                       "bf16-int8w": ("bf16", True), "int8": ("bf16", False)}


def cpu_has_bf16(core: ov.Core | None = None) -> bool:
    """Whether OpenVINO sees native bf16 on this CPU (AVX512-BF16 or AMX)."""
    core = core or ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precision_hint(precision: str, int8_file: bool, core: ov.Core | None = None) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for a run at ``precision`` (a key of
    :data:`OPENVINO_PRECISIONS`): the table's; for the calibrated INT8 export (``int8_file``)
    the hint of its float rest, bf16 only when ``int8`` is asked on a CPU with native bf16 and
    f32 otherwise (``fp32`` asked: the conservative run of the same file)."""
    if int8_file:
        return "bf16" if precision == "int8" and cpu_has_bf16(core) else "f32"
    return OPENVINO_PRECISIONS[precision][0]


#: initializers at least this large leave the ONNX proto before the graph rewrite
_WEIGHT_BYTES = 1 << 16


def _weights_to_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Move each large initializer of ``model`` (in place) to a graph input of its name, type
    and shape; return their values by name (:func:`_inputs_to_constants` puts them back).

    Why: :func:`evad.export.openvino_graph.openvino_graph` copies the proto at each rewrite,
    and the inliner serializes it: with vit_b_ktp's 722 MB of weights inside, that peaked at
    4.65 GB; without them the copies are a few MB.
    """
    weights = {}
    inits = model.graph.initializer
    for i in reversed(range(len(inits))):
        t = inits[i]
        if t.ByteSize() >= _WEIGHT_BYTES and t.data_location != onnx.TensorProto.EXTERNAL:
            weights[t.name] = onnx.numpy_helper.to_array(t)
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                t.name, t.data_type, list(t.dims)))
            del inits[i]
    return weights


def _inputs_to_constants(model: ov.Model, weights: dict[str, np.ndarray]) -> None:
    """Replace each of ``model``'s Parameters named in ``weights`` by a Constant of that value,
    as OpenVINO's ONNX reader makes of an initializer. The Constant copies the array: a shared
    one would leave the array's lifetime to the caller (OpenVINO's rule), and whether the
    compiled model still reads it is OpenVINO's business; the copy is made one weight at a
    time, before the first clip's buffers, so it does not raise the peak."""
    for param in list(model.get_parameters()):
        value = weights.pop(param.get_friendly_name(), None)  # the copy is OpenVINO's
        if value is None:
            continue
        const = ov.op.Constant(value, shared_memory=False)
        const.set_friendly_name(param.get_friendly_name())
        const.output(0).set_names(param.output(0).get_names())
        param.output(0).replace(const.output(0))
        model.remove_parameter(param)
    model.validate_nodes_and_infer_types()


#: bumped when the graph OpenVINO is given changes in a way its structure does not show
_IR_FORMAT = 2
#: in the key of an int8 model's IR: its pruning layers but the logits are marked f32
#: (:func:`_f32_layers`), which an IR cached before did not have (none, or the logits too); the
#: other precisions' IRs are unchanged
_INT8_MARKS = "pruning-sums-f32"

#: OpenVINO's runtime attribute that keeps a layer at f32 under a lower precision hint, as an
#: IR file spells it: ``<attribute name="precise" version="0"/>`` in the layer's ``rt_info``
_KEEP_F32 = ("precise", "0")


def _is_quantized(model: ov.Model) -> bool:
    """Whether ``model`` is the calibrated Q/DQ export (its QuantizeLinear read as FakeQuantize)."""
    return any(node.get_type_name() == "FakeQuantize" for node in model.get_ops())


def _f32_layers(model: ov.Model) -> list[str]:
    """The layers that run at f32 whatever the precision hint (:func:`_keep_at_f32`): the action
    pooler's (``evad.export.openvino_graph.separable_clip_pooling``: the RoIAligns that find
    its bilinear weights and its two products), so it pools at f32 as the ROIAlign it replaces
    did (vit_b_ktp's outputs bit for bit the same in int8; its products in bf16 moved action
    probabilities by up to 0.02 on one clip), while the actor localization's 24 small
    RoIAligns stay bf16 (at f32 each ran 5x slower); and, in the calibrated Q/DQ
    export, every layer of the unrolled pruning but its logits products (the row sums, their
    sums, TopK and gathers), for accuracy (OpenVINO 2026.4 honours the mark on the row-sum
    products; it keeps the Softmax, and the slices of the bf16 q, in bf16).

    Why the importance of the INT8 export stays f32, but for its logits: its quantized blocks
    use up the pruning's margin (vit_b_ktp, calmed random weights, seed 0: block 9's kept-token
    Jaccard 0.9725 in ONNX Runtime int8, the bar 0.97), and a bf16 importance on top of them
    moved it to 0.9629 (OpenVINO, float rest bf16; 0.9725 again with the importance at f32).
    What the f32 buys is each chunk's row sums: a bf16 product leaves them rounded to 2^-9 of
    their size. Not the logits: their inputs are the bf16 q and k and the Softmax reads them in
    bf16, so an f32 product rounds the same products to bf16 one layer later (with it in bf16
    the clip took 2.88 s against 3.04, 2-core AMD EPYC, and the parity checks passed as before:
    docs/design.md, "Calibrated INT8"). The bf16 export's importance stays bf16: alone, bf16
    keeps 0.9881 there."""
    quantized = _is_quantized(model)
    return [name for name in (node.get_friendly_name() for node in model.get_ops())
            if is_clip_pooling_layer(name)
            or (quantized and is_pruning_layer(name) and not is_pruning_logits(name))]


def _keep_at_f32(ir: Path, layers: list[str]) -> None:
    """Mark ``layers`` (names of top-level layers, each marked only where the name is unique)
    in the IR file ``ir`` to run at f32 whatever the precision hint.

    Why marks at all: :func:`_f32_layers` says which layers and why (the action pooler's
    products and an INT8 model's pruning, for accuracy). The mark goes into the file
    because only a deserialized IR carries it as the typed attribute the CPU plugin reads (set
    from Python, it is a plain string the plugin ignores).

    Raises:
        OSError, xml.etree.ElementTree.ParseError: the file cannot be read or written.
    """
    if not layers:
        return
    tree = ET.parse(ir)
    wanted = set(layers)
    found = [x for x in tree.getroot().findall("./layers/layer") if x.get("name") in wanted]
    names = [x.get("name") for x in found]
    for layer in found:
        if names.count(layer.get("name")) != 1:
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.SubElement(layer, "rt_info")
        ET.SubElement(rt_info, "attribute", name=_KEEP_F32[0], version=_KEEP_F32[1])
    tree.write(ir, encoding="utf-8", xml_declaration=True)


def _compile(core: ov.Core, exports: list[onnx.ModelProto], path: Path, precision: str,
             clip_shape: tuple, export_sha256: str, config: dict) -> ov.CompiledModel:
    """The export in ``exports`` (taken out of it: once rewritten, its memory is freed before
    OpenVINO compiles; a protobuf message frees its memory only when no reference is left)
    rewritten for OpenVINO (:func:`evad.export.openvino_graph.openvino_graph`), its shapes
    fixed at one clip ``(1, *clip_shape)``, compiled for the CPU with ``config``. ``path`` is
    the export's file, read again only for an int8 graph OpenVINO refuses for one clip.

    Why one static clip: with every shape static OpenVINO plans its buffers once; with the
    export's symbolic batch it kept about 1.6 GB more for a vit_b_ktp clip (peak 3.64 vs
    2.06 GB, ``benchmarks/results/openvino_memory.json``). Why an IR file in the cache: a
    model compiled from a file path is found in OpenVINO's model cache without being built
    (a model built in memory is, only after its weights are copied in: 0.4 GB more at the
    peak). The file is named by the export's SHA-256 and the rewritten graph's, so a changed
    export or rewrite is a new file. Where the cache is off or unwritable nothing is kept: the
    IR is compiled from a temporary folder (:func:`_build`). Each load marks its model used and
    the folder then keeps the most recently used ones (``evad.export.openvino_cache``).
    """
    int8_weights = OPENVINO_PRECISIONS[precision][1]
    graph, weights = _rewritten(exports.pop(), int8_weights)
    folder = precision_folder(precision) if usable_cache() else ""
    keep = cache_keep() if folder else 0
    marks = f"{_INT8_MARKS}/" if precision == "int8" else ""
    key = hashlib.sha256(f"{export_sha256}/{_IR_FORMAT}/{ov.__version__}/{marks}".encode()
                         + graph)
    if folder:
        config = {**config, "CACHE_DIR": folder}
    static, batched = (ir_path(folder, key.hexdigest()[:24], batch) if folder else None
                       for batch in (False, True))
    found = next((ir for ir in ((batched, static) if precision == "int8" else (static,))
                  if ir is not None and ir.is_file() and ir.with_suffix(".bin").is_file()), None)
    started = time.time()
    try:
        if found is None:
            if folder:  # room for the new model first (a full disk keeps no IR)
                _upkeep(lambda: prune_cache(Path(folder), keep - 1))
            compiled, used = _build(core, graph, weights, static, clip_shape, config), static
        else:
            _upkeep(lambda: record_use(found))  # before compiling: later prunes keep it
            weights.clear()  # OpenVINO reads them from the IR
            _trim_heap()
            compiled, used = core.compile_model(str(found), "CPU", config), found
    except RuntimeError:
        # the IR found was removed before OpenVINO read it (a prune in another process that
        # listed the folder before this one marked its use): build it again
        vanished = found if found is not None and not found.is_file() else None
        if precision != "int8" and vanished is None:
            raise
        # OpenVINO 2026.4's CPU plugin refuses some Q/DQ graphs compiled for one clip (the
        # demo model's: "DequantizationMultiply contains empty child edge"); such a graph
        # compiles with the export's symbolic batch, its weights read again (the failed
        # build's Constants took them)
        if vanished is None and static is not None:
            for leftover in (static, static.with_suffix(".bin")):
                leftover.unlink(missing_ok=True)
        weights.clear()
        graph, weights = _rewritten(onnx.load(str(path)), int8_weights)
        used = vanished or batched
        one_clip = vanished is not None and vanished == static
        compiled = _build(core, graph, weights, used, clip_shape if one_clip else None, config)
    if folder:  # also where a full disk compiled in memory: the prune is what frees it
        if used is not None and used.is_file():
            _upkeep(lambda: record_use(used, blobs_since(Path(folder), started)))
        _upkeep(lambda: prune_cache(Path(folder), keep, protect=used))
    return compiled


def _upkeep(step: Callable[[], object]) -> None:
    """Run one step of the cache's upkeep (``evad.export.openvino_cache``); a filesystem failure
    (a read-only or full cache folder, a ``.use`` path that is a folder) skips it: upkeep never
    fails a run that can compile."""
    try:
        step()
    except (OSError, EvadError):
        pass


def _rewritten(export: onnx.ModelProto,
               int8_weights: bool) -> tuple[bytes, dict[str, np.ndarray]]:
    """The export rewritten for OpenVINO, serialized, and its weights set aside (by name).

    Why aside: each rewrite copies the proto; with the weights inside, vit_b_ktp (bf16)
    peaked at 4.65 GB, and its Q/DQ export, whose float localization holds 337 MB of
    weights, at 2.71 GB against 1.35 GB aside (outputs bit-identical either way). The
    ``int8_weights`` rewrite reads the weights, so they stay in for it."""
    weights = _weights_to_inputs(export) if not int8_weights else {}
    return openvino_graph(export, int8_weights).SerializeToString(), weights


def _build(core: ov.Core, graph: bytes, weights: dict[str, np.ndarray], ir: Path | None,
           clip_shape: tuple | None, config: dict) -> ov.CompiledModel:
    """The rewritten ``graph`` with its ``weights`` as Constants, its shapes fixed at one clip
    when ``clip_shape`` is given, saved as the IR file ``ir`` with :func:`_keep_at_f32`'s marks
    and compiled from it. ``ir`` None (the cache off): the IR goes to a temporary folder,
    removed once compiled, so the marks hold there too; where it cannot be written (a full
    disk) the model is compiled in memory, unmarked: the action pooler's products run at the
    precision hint, and an INT8 model (whose pruning must not run bf16) at f32 throughout."""
    model = core.read_model(graph, ov.Tensor(np.empty(0, np.uint8)))
    _inputs_to_constants(model, weights)
    if clip_shape is not None:
        model.reshape({INPUT_CLIP: [1, *clip_shape], INPUT_IMAGE_SIZE: [1, 2]})
    with contextlib.ExitStack() as scratch:
        target = ir if ir is not None else Path(
            scratch.enter_context(tempfile.TemporaryDirectory(
                prefix="evad-openvino-", ignore_cleanup_errors=True)),  # a mapped .bin (Windows)
            "evad.xml")
        tmp = tmp_ir(target)
        try:  # the .bin first: an .xml is only ever seen beside its whole .bin
            ov.save_model(model, str(tmp), compress_to_fp16=False)
            _keep_at_f32(tmp, _f32_layers(model))
            os.replace(tmp.with_suffix(".bin"), target.with_suffix(".bin"))
            os.replace(tmp, target)
        except (OSError, ET.ParseError):  # a full disk: compile what is in memory, uncached
            for leftover in (tmp, tmp.with_suffix(".bin")):
                leftover.unlink(missing_ok=True)
            unmarked = {k: v for k, v in config.items() if k != "CACHE_DIR"}
            if _is_quantized(model):  # no marks: its pruning importance must not go bf16
                unmarked["INFERENCE_PRECISION_HINT"] = "f32"
            return core.compile_model(model, "CPU", unmarked)
        del model
        _trim_heap()
        return core.compile_model(str(target), "CPU", config)


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). Why: the parsed ONNX proto is freed in pieces of a few MB that glibc keeps on
    its heap; vit_b_ktp left 0.55 GB resident under the compiled model and its clips (a
    runner peak of 2.70 GB instead of 1.91)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        pass


class OpenVinoRunner(RunnerBase):
    """An exported model compiled by OpenVINO for the CPU; ``close()`` (or the end of a
    ``with`` block) releases the compiled model and its infer request.

    Args:
        path: the ``.onnx`` from evad-export.
        precision: ``"fp32"``, ``"bf16"`` or ``"bf16-int8w"`` (bf16 with every MatMul weight
            stored as int8: ``evad.export.openvino_graph.int8_matmul_weights``); bf16 needs a
            CPU with native bf16 (AVX512-BF16 or AMX); ``"int8"``: the calibrated Q/DQ export
            (``evad-export --int8``): its Q/DQ products in int8, its float rest in bf16 where
            the CPU has it (the pruning importance's row sums at f32), else f32; asked
            ``"fp32"``, the same file runs with its float rest at f32.
        threads: inference threads (0 = OpenVINO's default, one per core).
        perf_count: keep OpenVINO's per-layer performance counters
            (``self.request.get_profiling_info()``; ``benchmarks/op_profile.py``).

    Raises:
        EvadError: the file is missing or not an evad export; MissingDependency: no openvino;
        ConfigError: an unknown precision, or bf16 on a CPU without it; BackendError: OpenVINO
        cannot read or compile the graph.
    """

    def __init__(self, path: str | os.PathLike, precision: str = "bf16",
                 threads: int = 0, perf_count: bool = False) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"OpenVINO precision {precision!r}: use one of "
                              f"{', '.join(OPENVINO_PRECISIONS)}")
        self.path = check_input_file(path, "ONNX model")
        if openvino_cache_dir():  # a bad EVAD_OPENVINO_CACHE_KEEP is refused before any work
            cache_keep()
        self.backend = "openvino"
        try:  # read once: the metadata, the signature and the graph come from one parse
            export = onnx.load(str(self.path))
        except Exception as e:
            raise EvadError(f"{self.path} is not a readable ONNX file ({one_line(e)})") from e
        self.metadata = read_metadata(export)
        self.spec = ModelSpec.from_metadata(self.metadata, f"ONNX model {self.path}",
                                            onnx_sha256(self.path))
        # the calibrated Q/DQ export (evad-export --int8) is int8 whatever is asked: OpenVINO
        # runs its Q/DQ pairs in int8, the float rest at bf16 where the CPU has it (the pruning
        # importance's row sums at f32: _f32_layers), at f32 when fp32 is asked
        is_int8 = file_precision(self.metadata) == "int8"
        if precision == "int8" and not is_int8:
            raise ConfigError(f"{self.path} is an fp32 export; --precision int8 runs the INT8 "
                              "export (evad-export --int8 --calib DATA)")
        if is_int8 and precision not in ("fp32", "int8"):
            raise ConfigError(f"{self.path} is the INT8 export: run it with --precision int8")
        core = ov.Core()
        hint = precision_hint(precision, is_int8, core)
        precision = "int8" if is_int8 else precision
        self.precision = precision
        if hint == "bf16" and not cpu_has_bf16(core):
            raise ConfigError("this CPU has no native bf16 (AVX512-BF16 or AMX); use "
                              "--precision fp32")
        try:
            # the export's own signature (a symbolic batch: any size), as ONNX Runtime reads it
            self.clip_shape = tuple(tensor_dims(export, INPUT_CLIP)[1:])
            config: dict = {"INFERENCE_PRECISION_HINT": hint}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            if perf_count:
                config["PERF_COUNT"] = True
            exports = [export]
            del export
            self.compiled = _compile(core, exports, self.path, precision, self.clip_shape,
                                     self.spec.sha256 or "", config)
        except Exception as e:  # OpenVINO raises RuntimeError with pages of text: one line
            raise BackendError(f"OpenVINO cannot compile {self.path}: {one_line(e)}") from e
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        # the hint compiled, not the one asked: an INT8 model compiled without its marks (no IR
        # could be written) ran at f32 (_build)
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.name = f"openvino (CPU, {precision}{' + bf16' if is_int8 and ran == 'bf16' else ''})"
        self.on_gpu = False

    def _infer(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w), checked -> outputs by
        name. The model is compiled for one clip (:func:`_compile`): a batch runs clip by clip
        and every output (batch-first) is stacked back."""
        per_clip = []
        for i in range(clip.shape[0]):
            result = self.request.infer({INPUT_CLIP: clip[i:i + 1],
                                         INPUT_IMAGE_SIZE: image_size[i:i + 1]})
            per_clip.append([np.array(result[out]) for out in self.compiled.outputs])
        return {name: np.concatenate([c[j] for c in per_clip]) if len(per_clip) > 1
                else per_clip[0][j] for j, name in enumerate(self.output_names)}

    def _release(self) -> None:
        # the request first: it holds the compiled model's buffers
        self.__dict__.pop("request", None)
        self.__dict__.pop("compiled", None)
