"""ONNX -> TensorRT engine, in small composable steps (strip functions -> parse -> config ->
build -> write engine + metadata), each reporting errors where they arise.

Why strip: the ONNX parser may prefer a model-local function's body to a plugin, so the builder
removes the ``evad`` functions from a copy of the model; the ``evad`` nodes then bind the
registered plugins by name/version/namespace (shared/docs/design.md, "TensorRT binding"), and a
node that became anything else fails the build loudly.

Precision: the ONNX is fp32. TensorRT 11 builds strongly typed networks only (the FP16/BF16
builder flags are gone), so there ``fp16`` converts the stripped model to a mixed-precision ONNX
first (:func:`to_mixed_precision`: onnxconverter-common, IO kept fp32, LayerNorm, softmax and
reductions kept fp32). TensorRT 10.x keeps the weakly typed path: the FP16/BF16 builder flag with
those layers pinned to fp32 by precision constraints. The importance reduction of
KeyframeTopKPrune is fp32 inside both plugins whatever the input type (the op's contract).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import onnx

from evad.errors import EvadError

__all__ = ["FP32_OPS", "EngineMismatchError", "build", "check_engine_metadata", "engine_metadata",
           "missing_for_engine_build", "read_engine_metadata", "running_environment",
           "strip_evad_functions", "to_mixed_precision"]

DOMAIN = "evad"
PRECISIONS = ("fp32", "fp16", "bf16")
METADATA_FORMAT = 1


class EngineMismatchError(EvadError):
    """The engine was built for another GPU, TensorRT version or model."""


def strip_evad_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its ``evad`` model-local functions, so the parser binds the
    ``evad`` nodes to plugins instead of inlining the function bodies.

    The ONNX parser's plugin fallback looks a node up by its op_type and by the string
    attributes ``plugin_version`` (default "1") and ``plugin_namespace`` (default ""), not by the
    node's domain; each ``evad`` node is tagged with ``plugin_namespace = "evad"`` and
    ``plugin_version = "1"`` so the lookup finds our creators (which ignore these two fields).
    """
    from evad.plugins import NAMESPACE, VERSION

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    for node in out.graph.node:
        if node.domain == DOMAIN:
            tags = {"plugin_namespace": NAMESPACE, "plugin_version": VERSION}
            kept = [a for a in node.attribute if a.name not in tags]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in tags.items())
    return out


#: ops kept in fp32 under fp16 (besides onnxconverter-common's default block list)
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "TopK")


def to_mixed_precision(model: onnx.ModelProto, precision: str = "fp16") -> onnx.ModelProto:
    """An fp16 copy of a (function-stripped) model for strongly typed TensorRT: float weights
    and activations in fp16, graph inputs/outputs and :data:`FP32_OPS` in fp32 (Casts around
    them), ``evad`` plugin nodes fed fp16 (both plugins accumulate in fp32).

    Raises:
        EvadError: bf16 requested (no converter here) or onnxconverter-common missing.
    """
    if precision != "fp16":
        raise EvadError(f"{precision} on a strongly typed TensorRT (11.x) needs a {precision} "
                        "ONNX (e.g. ModelOpt AutoCast); use --fp16, or TensorRT 10.x")
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise EvadError("fp16 engines on TensorRT 11 need onnxconverter-common: pip install "
                        "onnxconverter-common") from e
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight below fp16's range
        out = float16.convert_float_to_float16(
            model, keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS))
    _restore_fp32_outputs(model, out)
    return out


def _restore_fp32_outputs(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """keep_io_types misses some outputs (seen: ``boxes``): Cast any fp32 output that came back
    fp16 to fp32 again, so the engine's IO types equal the ONNX export's."""
    want = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    for o in converted.graph.output:
        if want.get(o.name) == onnx.TensorProto.FLOAT and \
                o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            inner = o.name + "__fp16"
            for n in converted.graph.node:
                n.output[:] = [inner if x == o.name else x for x in n.output]
                n.input[:] = [inner if x == o.name else x for x in n.input]
            converted.graph.node.append(onnx.helper.make_node(
                "Cast", [inner], [o.name], to=onnx.TensorProto.FLOAT, name=o.name + "__to_fp32"))
            o.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def evad_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``evad`` custom nodes of the main graph."""
    return [n for n in model.graph.node if n.domain == DOMAIN]


def onnx_sha256(path: str | os.PathLike) -> str:
    """sha256 of the .onnx file (and its external data file when present)."""
    h = hashlib.sha256()
    for p in (Path(path), Path(str(path) + ".data")):
        if p.is_file():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def missing_for_engine_build() -> list[str]:
    """What this machine lacks to build an engine, one actionable phrase each; empty when
    nothing is missing."""
    missing = []
    try:
        import tensorrt as trt

        if not hasattr(trt, "Builder") or not hasattr(trt, "OnnxParser"):
            raise ImportError
    except ImportError:
        missing.append("TensorRT with its builder and ONNX parser (pip install tensorrt; the "
                       "runtime-only tensorrt-lean/-dispatch wheels cannot build)")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("a CUDA GPU visible to torch (torch.cuda.is_available() is False)")
    except ImportError:
        missing.append("torch (pip install torch) for device buffers")
    from evad.plugins import library_path

    if not library_path().is_file():
        missing.append(f"the C++ plugin library {library_path()} (run evad-build-plugins; "
                       "--plugins python works without it)")
    return missing


def running_environment(trt: Any) -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this process (current device)."""
    import torch

    if not torch.cuda.is_available():
        raise EvadError("no CUDA GPU: TensorRT engines need one")
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return {"tensorrt_version": trt.__version__, "gpu_name": torch.cuda.get_device_name(dev),
            "compute_capability": f"{major}.{minor}"}


def engine_metadata(env: dict[str, Any], precision: str, onnx_meta: dict[str, Any],
                    onnx_hash: str, plugins: str, batch: tuple[int, int, int]) -> dict[str, Any]:
    """The ``<name>.engine.json`` sidecar: what the engine was built from and for."""
    return {"format_version": METADATA_FORMAT, **env, "precision": precision,
            "input_size": onnx_meta.get("input_size"), "num_frames": onnx_meta.get("num_frames"),
            "batch_profile": list(batch), "plugins": plugins, "onnx_sha256": onnx_hash,
            "onnx_metadata": onnx_meta}


def check_engine_metadata(meta: dict[str, Any], env: dict[str, Any]) -> None:
    """Refuse an engine built for another GPU or TensorRT version.

    Raises:
        EngineMismatchError: naming what differs and what to do.
    """
    diffs = [f"{key} {meta.get(key)!r} (this machine: {env[key]!r})"
             for key in ("tensorrt_version", "gpu_name", "compute_capability")
             if meta.get(key) != env[key]]
    if diffs:
        raise EngineMismatchError("engine built for another setup: " + "; ".join(diffs)
                                  + ". Rebuild it here with evad-export (TensorRT engines are "
                                  "tied to one GPU model and TensorRT version)")


def read_engine_metadata(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar ``<engine>.json`` of an engine file.

    Raises:
        EvadError: the engine or its sidecar is missing or unreadable.
    """
    path = Path(str(engine) + ".json")
    if not Path(engine).is_file():
        raise EvadError(f"engine {engine} does not exist")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvadError(f"engine metadata {path} is missing or unreadable ({e}): rebuild the "
                        "engine with evad-export") from e
    if meta.get("format_version", 0) > METADATA_FORMAT:
        raise EvadError(f"{path} has metadata format {meta['format_version']}: upgrade "
                        "evad-deploy")
    return meta


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _parse(trt: Any, logger: Any, model: onnx.ModelProto, onnx_path: Path):
    """Network from the stripped model; parser errors listed node by node."""
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and not hasattr(
            trt.BuilderFlag, "FP16"):
        # TensorRT 11: always strongly typed (the flag is accepted); 10.x keeps weak typing so
        # the FP16/BF16 builder flags apply.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # Written next to the original so that its external data file, if any, is found.
    stripped = onnx_path.parent / f".{onnx_path.stem}.stripped.onnx"
    big = model.ByteSize() >= 2 * 1024**3  # protobuf's limit: weights to a side file
    onnx.save_model(model, str(stripped), save_as_external_data=big,
                    location=stripped.name + ".data")
    try:
        ok = parser.parse_from_file(str(stripped))
    finally:
        stripped.unlink(missing_ok=True)
        Path(str(stripped) + ".data").unlink(missing_ok=True)
    if not ok:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EvadError("the TensorRT ONNX parser failed:\n  " + "\n  ".join(errs))
    return builder, network, parser


def _check_plugins_bound(trt: Any, network: Any, expected: int) -> None:
    """Every ``evad`` node must have become one of our plugin layers."""
    bound = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == getattr(trt.LayerType, "PLUGIN_V3", None):
            bound += 1
    if bound != expected:
        raise EvadError(f"{expected} evad nodes but {bound} plugin layers: a node fell back to "
                        "something else (function body or another plugin); is the evad plugin "
                        "library registered (evad.plugins.load)?")


def _pin_fp32(trt: Any, network: Any) -> int:
    """LayerNorm, softmax and reductions stay fp32 under fp16/bf16; returns layers pinned."""
    kinds = {getattr(trt.LayerType, n) for n in ("NORMALIZATION", "SOFTMAX", "REDUCE")
             if hasattr(trt.LayerType, n)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for o in range(layer.num_outputs):
                layer.set_output_type(o, trt.float32)
            pinned += 1
    return pinned


def build(onnx_path: str | os.PathLike, precision: str = "fp32",
          batch: tuple[int, int, int] = (1, 1, 8), timing_cache: str | os.PathLike | None = None,
          plugins: str | None = None, out: str | os.PathLike | None = None,
          workspace_gib: float = 4.0, log=print) -> Path:
    """Build ``<name>.engine`` + ``<name>.engine.json`` from an exported EVAD ONNX file.

    Args:
        onnx_path: the evad-export output (with its ``evad.*`` metadata).
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch: (min, opt, max) clips per run of the optimisation profile.
        timing_cache: file read before and written after the build (reused across builds).
        plugins: ``cpp`` or ``python``; default cpp, python when the .so is missing.
        out: engine path (default: the ONNX path with ``.engine``).
        workspace_gib: builder workspace limit, GiB.
        log: one-line logger.

    Returns:
        The engine path.

    Raises:
        EvadError: missing TensorRT/GPU/plugins, parse or build failure, a node not bound.
    """
    from evad.export.metadata import read_metadata
    from evad.plugins import library_path
    from evad.plugins import load as load_plugins

    if precision not in PRECISIONS:
        raise EvadError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise EvadError(f"batch profile {batch}: need 1 <= min <= opt <= max")
    missing = [m for m in missing_for_engine_build() if "plugin library" not in m]
    if missing:
        raise EvadError("cannot build a TensorRT engine here; missing: " + "; ".join(missing))
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    meta = read_metadata(onnx_path)
    plugins = plugins or ("cpp" if library_path().is_file() else "python")
    load_plugins(plugins)
    t0 = time.perf_counter()
    model = onnx.load(str(onnx_path))
    expected = len(evad_nodes(model))
    model = strip_evad_functions(model)
    flag = getattr(trt.BuilderFlag, precision.upper(), None) if precision != "fp32" else None
    strongly_typed = precision != "fp32" and flag is None  # TensorRT 11: no precision flags
    if strongly_typed:
        model = to_mixed_precision(model, precision)
        log(f"engine: converted to a mixed-precision {precision} ONNX (TensorRT "
            f"{trt.__version__} is strongly typed; LayerNorm/softmax/reductions stay fp32)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse(trt, logger, model, onnx_path)
    _check_plugins_bound(trt, network, expected)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if flag is not None:
        config.set_flag(flag)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"engine: {_pin_fp32(trt, network)} LayerNorm/softmax/reduce layers kept in fp32")
    h, w = meta["input_size"]
    t = meta["num_frames"]
    profile = builder.create_optimization_profile()
    profile.set_shape("clip", (lo, 3, t, h, w), (opt, 3, t, h, w), (hi, 3, t, h, w))
    profile.set_shape("image_size", (lo, 2), (opt, 2), (hi, 2))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(
        timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EvadError("TensorRT failed to build the engine (see its log above)")
    engine_path = Path(out) if out else onnx_path.with_suffix(".engine")
    _atomic_write(engine_path, bytes(serialized))
    if timing_cache:
        _atomic_write(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    sidecar = engine_metadata(running_environment(trt), precision, meta, onnx_sha256(onnx_path),
                              plugins, batch)
    _atomic_write(Path(str(engine_path) + ".json"),
                  (json.dumps(sidecar, indent=2) + "\n").encode())
    log(f"engine: wrote {engine_path} ({precision}, batch {lo}/{opt}/{hi}, {plugins} plugins) "
        f"in {time.perf_counter() - t0:.1f} s")
    return engine_path
