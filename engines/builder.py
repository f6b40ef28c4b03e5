"""ONNX -> TensorRT engine, in small steps that each do one job and report errors where they
arise: prepare the ONNX (``onnx_prep``) -> parse -> check the plugins bound -> configure
(precision, profile, timing cache) -> build -> write the engine and its sidecar (``metadata``).

Precision: the ONNX is fp32. TensorRT 11 builds strongly typed networks only (its FP16/BF16
builder flags are gone), so there ``fp16`` / ``bf16`` convert the parser's graph to a
mixed-precision ONNX first (:func:`evad.engines.mixed_precision.to_mixed_precision`). TensorRT
10.x keeps the weakly typed path: the FP16/BF16 builder flag with the layers of
:data:`evad.engines.mixed_precision.FP32_OPS` pinned to fp32 by precision constraints.

Every graph handed to a parser first passes strict type inference and the TopK limit
(:func:`evad.engines.onnx_prep.check_types`, :func:`~evad.engines.onnx_prep.check_topk`):
a graph TensorRT would refuse is refused here in one line, before TensorRT sees it.

:func:`build_plan` is the TensorRT part (graph -> parse -> configure -> serialized plan) on
whichever TensorRT-family module it is given; the CPU tests drive it with TensorRT-RTX, whose
parser and builder run without a GPU. :func:`build` adds what a real engine needs around it
(TensorRT, a GPU, the plugins, the files).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from evad.atomic import write_bytes_atomic
from evad.engines.environment import missing_for_engine_build, running_environment
from evad.engines.metadata import engine_metadata, sidecar_path
from evad.engines.mixed_precision import fp32_layer_types, to_mixed_precision
from evad.engines.onnx_prep import check_topk, check_types, evad_nodes, for_parser
from evad.errors import ConfigError, EvadError
from evad.hashing import onnx_sha256
from evad.metadata import read_metadata
from evad.plugins import library_path
from evad.plugins import load as load_plugins
from evad.runner import ENGINE_PRECISIONS, INPUT_CLIP, INPUT_IMAGE_SIZE

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["Plan", "build", "build_plan", "check_batch_profile", "parser_graph",
           "set_math_modes", "strongly_typed"]

# An engine's precision is one of ENGINE_PRECISIONS (the backend table's trt row, evad.runner):
# ``fp32`` is true fp32 (TF32 off); ``tf32`` lets TensorRT round MatMul and Conv inputs to TF32
# (a 10-bit mantissa, ~1e-3 relative: judged by the reduced-precision bars).


def check_batch_profile(batch: tuple[int, int, int],
                        name: str | None = None) -> tuple[int, int, int]:
    """``(min, opt, max)`` clips per run; ConfigError unless 1 <= min <= opt <= max. ``name``:
    how the user wrote it (``--engine-batch '2,1,8'``), for the message."""
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"{name or f'batch profile {tuple(batch)}'}: need 1 <= MIN <= OPT "
                          "<= MAX")
    return lo, opt, hi


def strongly_typed(trt: Any) -> bool:
    """True for a TensorRT that builds strongly typed networks only (11.x, TensorRT-RTX: no FP16
    builder flag); 10.x keeps weak typing so its FP16/BF16 builder flags apply."""
    return not hasattr(trt.BuilderFlag, "FP16")


def parser_graph(model: onnx.ModelProto, precision: str, typed: bool,
                 input_size: tuple[int, int],
                 log: Callable[[str], None] = print) -> onnx.ModelProto:
    """The graph a TensorRT parser gets from an evad export: :func:`for_parser`; on a strongly
    typed TensorRT (``typed``) at fp16/bf16 its mixed-precision copy; then checked (strict
    types, TopK's K against TensorRT's limit at ``input_size`` (H, W)).

    Raises:
        ConfigError: the graph is not type-consistent, or a TopK keeps too many.
    """
    graph = for_parser(model)
    if typed and precision in ("fp16", "bf16"):
        graph = to_mixed_precision(graph, precision)
        log(f"converted to a mixed-precision {precision} ONNX (strongly typed TensorRT; "
            "LayerNorm, softmax, reductions, TopK and the evad plugins stay fp32)")
    label = f"the {precision} graph" if typed else "the graph"
    check_topk(check_types(graph, label), input_size)
    return graph


def _parse(trt: Any, logger: trt.ILogger, model: onnx.ModelProto,
           workdir: Path) -> tuple[trt.Builder, trt.INetworkDefinition, trt.OnnxParser]:
    """Network from the parser's graph; parser errors listed node by node."""
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and strongly_typed(trt):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # Written in the original's folder so that its external data file, if any, is found.
    stripped = workdir / f".evad-parser-{os.getpid()}.onnx"
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


def _mark_outputs(network: trt.INetworkDefinition, names: Sequence[str],
                  log: Callable[[str], None]) -> list[str]:
    """Mark the network tensors named ``names`` (ONNX tensor names: the parser keeps them) as
    outputs, for a layer-by-layer comparison; returns those marked, in order. Tensors the
    parser did not keep under their name (folded into a fused layer) are skipped and counted."""
    tensors = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for o in range(layer.num_outputs):
            tensors[layer.get_output(o).name] = layer.get_output(o)
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    marked = [n for n in dict.fromkeys(names) if n in tensors]
    for name in marked:
        if name not in outputs:
            network.mark_output(tensors[name])
    if len(marked) < len(set(names)):
        log(f"{len(set(names)) - len(marked)} of {len(set(names))} tensors to mark are not in "
            "the network under their ONNX name (folded by the parser); compared without them")
    return marked


def _check_plugins_bound(trt: Any, network: trt.INetworkDefinition, expected: int) -> None:
    """Every ``evad`` node must have become one of our plugin layers."""
    plugin_v3 = getattr(trt.LayerType, "PLUGIN_V3", None)
    bound = sum(1 for i in range(network.num_layers)
                if network.get_layer(i).type == plugin_v3)
    if bound != expected:
        raise EvadError(f"{expected} evad nodes but {bound} plugin layers: a node fell back to "
                        "something else (function body or another plugin); is the evad plugin "
                        "library registered (evad.plugins.load)?")


def _pin_fp32(trt: Any, network: trt.INetworkDefinition) -> int:
    """Keep the layers of ``FP32_OPS`` in fp32 under fp16/bf16 (their float outputs; an index
    output such as TopK's stays int32, and a layer with no float output, an integer reduction,
    is left alone: a precision constraint would make TensorRT cast or reject it); returns the
    number of layers pinned."""
    kinds = {getattr(trt.LayerType, n) for n in fp32_layer_types() if hasattr(trt.LayerType, n)}
    floats = {trt.float32, trt.float16, trt.bfloat16}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        float_outputs = [o for o in range(layer.num_outputs)
                         if layer.get_output(o).dtype in floats] if layer.type in kinds else []
        if float_outputs:
            layer.precision = trt.float32
            for o in float_outputs:
                layer.set_output_type(o, trt.float32)
            pinned += 1
    return pinned


def set_math_modes(trt: Any, config: trt.IBuilderConfig, network: trt.INetworkDefinition,
                   precision: str, log: Callable[[str], None]) -> dict[str, bool]:
    """Set the builder flags of ``precision`` and return which math modes are on.

    TensorRT enables TF32 by default (``BuilderFlag.TF32``, "Enabled by default" in NvInfer.h,
    10.x and 11.x): left alone, every MatMul/Conv of an "fp32" engine on Ampere and newer rounds
    its inputs to a 10-bit mantissa, far outside the fp32 parity bars. So TF32 is cleared unless
    ``tf32`` is asked for. On TensorRT 10 fp16/bf16 set their flag and pin ``FP32_OPS`` layers to
    fp32; TensorRT 11 has no such flags (the ONNX was converted to mixed precision instead).

    Returns:
        ``{"tf32": ..., "fp16": ..., "bf16": ...}``: the modes the engine may use, for its
        sidecar.
    """
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        if precision == "tf32":
            config.set_flag(tf32)
        else:
            config.clear_flag(tf32)
    reduced = precision in ("fp16", "bf16")
    flag = getattr(trt.BuilderFlag, precision.upper(), None) if reduced else None
    if flag is not None:
        config.set_flag(flag)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"{_pin_fp32(trt, network)} LayerNorm/softmax/reduce/top-k/plugin layers kept in "
            "fp32")
    return {"tf32": precision == "tf32" and tf32 is not None, "fp16": precision == "fp16",
            "bf16": precision == "bf16"}


def _configure(trt: Any, builder: trt.Builder, network: trt.INetworkDefinition, precision: str,
               meta: dict[str, Any], batch: tuple[int, int, int], workspace_gib: float,
               cache_bytes: bytes,
               log: Callable[[str], None]) -> tuple[trt.IBuilderConfig, dict[str, bool]]:
    """Builder config: workspace, math modes (:func:`set_math_modes`), the batch profile over the
    export's fixed input size, the timing cache; and the math modes that are on."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    modes = set_math_modes(trt, config, network, precision, log)
    lo, opt, hi = batch
    h, w = meta["input_size"]
    t = meta["num_frames"]
    profile = builder.create_optimization_profile()
    # Dims spelled out: set_shape is typed Dims, and the stubs do not model the implicit
    # tuple -> Dims conversion TensorRT applies itself (the same shapes either way).
    profile.set_shape(INPUT_CLIP, trt.Dims([lo, 3, t, h, w]), trt.Dims([opt, 3, t, h, w]),
                      trt.Dims([hi, 3, t, h, w]))
    profile.set_shape(INPUT_IMAGE_SIZE, trt.Dims([lo, 2]), trt.Dims([opt, 2]), trt.Dims([hi, 2]))
    config.add_optimization_profile(profile)
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes),
                                   ignore_mismatch=False):
        # a cache from another GPU or TensorRT version does not attach: build without it and
        # write a fresh one, rather than fail after the build
        log("the timing cache does not match this GPU/TensorRT: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return config, modes


@dataclass
class Plan:
    """A serialized TensorRT plan and what it was built with.

    serialized: the plan bytes. modes: the math modes allowed (:func:`set_math_modes`).
    timing_cache: the builder's timing cache after the build, or None. layers: per network
    layer, (layer type, name, output data types), for logs and tests. marked: the tensors
    marked as extra outputs.
    """

    serialized: bytes
    modes: dict[str, bool]
    timing_cache: bytes | None
    layers: list[tuple[str, str, tuple[str, ...]]]
    marked: list[str]


def _layers(network: trt.INetworkDefinition) -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        dtypes = tuple(str(layer.get_output(o).dtype).rsplit(".", 1)[-1]
                       for o in range(layer.num_outputs))
        out.append((str(layer.type).rsplit(".", 1)[-1], layer.name, dtypes))
    return out


def build_plan(trt: Any, model: onnx.ModelProto, meta: dict[str, Any], precision: str = "fp32",
               batch: tuple[int, int, int] = (1, 1, 8), *, workdir: str | os.PathLike = ".",
               workspace_gib: float = 4.0, cache_bytes: bytes = b"",
               mark_outputs: Sequence[str] = (),
               log: Callable[[str], None] = print) -> Plan:
    """An evad export -> a serialized plan, with the TensorRT-family module ``trt``: the
    parser's graph (:func:`parser_graph`), parse, every ``evad`` node bound to a plugin layer,
    ``mark_outputs`` marked, configure (math modes, batch profile, timing cache), build.

    Args:
        model: the export as loaded (``evad`` local functions and fused attention included).
        meta: its ``evad.*`` metadata (``input_size``, ``num_frames``).
        workdir: where the parser's copy is written for the parser (the export's folder, so an
            external data file is found).

    Raises:
        ConfigError: a precision, batch or graph TensorRT would refuse.
        EvadError: the parse or the build failed.
    """
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"precision {precision!r}: use one of {', '.join(ENGINE_PRECISIONS)}")
    lo, opt, hi = check_batch_profile(batch)
    expected = len(evad_nodes(model))
    h, w = meta["input_size"]
    graph = parser_graph(model, precision, strongly_typed(trt), (h, w), log)
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse(trt, logger, graph, Path(workdir))
    del graph
    _check_plugins_bound(trt, network, expected)
    marked = _mark_outputs(network, mark_outputs, log) if mark_outputs else []
    config, modes = _configure(trt, builder, network, precision, meta, (lo, opt, hi),
                               workspace_gib, cache_bytes, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EvadError("TensorRT failed to build the engine (see its log above)")
    cache = config.get_timing_cache()
    return Plan(bytes(serialized), modes, bytes(cache.serialize()) if cache is not None else None,
                _layers(network), marked)


def build(onnx_path: str | os.PathLike, precision: str = "fp32",
          batch: tuple[int, int, int] = (1, 1, 8), timing_cache: str | os.PathLike | None = None,
          plugins: str | None = None, out: str | os.PathLike | None = None,
          workspace_gib: float = 4.0, mark_outputs: Sequence[str] = (),
          log: Callable[[str], None] = print) -> Path:
    """Build ``<name>.engine`` + ``<name>.engine.json`` from an exported EVAD ONNX file.

    Args:
        onnx_path: the evad-export output (with its ``evad.*`` metadata).
        precision: ``fp32`` (TF32 off), ``tf32``, ``fp16`` or ``bf16``.
        batch: (min, opt, max) clips per run of the optimisation profile.
        timing_cache: file read before and written after the build (reused across builds).
        plugins: ``cpp`` or ``python``; default cpp, python when the .so is missing.
        out: engine path (default: the ONNX path with ``.engine``).
        workspace_gib: builder workspace limit, GiB.
        mark_outputs: ONNX tensor names to make extra engine outputs (layer-by-layer debugging).
        log: one-line logger.

    Returns:
        The engine path.

    Raises:
        EvadError: missing TensorRT/GPU/plugins, a graph TensorRT would refuse, parse or build
            failure, a node not bound.
    """
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"precision {precision!r}: use one of {', '.join(ENGINE_PRECISIONS)}")
    lo, opt, hi = check_batch_profile(batch)
    missing = [m for m in missing_for_engine_build() if not m.optional]
    if missing:
        raise EvadError("cannot build a TensorRT engine here; missing: "
                        + "; ".join(map(str, missing)))
    onnx_path = Path(onnx_path)
    meta = read_metadata(onnx_path)
    plugins = plugins or ("cpp" if library_path().is_file() else "python")
    trt = load_plugins(plugins)
    t0 = time.perf_counter()
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(
        timing_cache).is_file() else b""
    plan = build_plan(trt, onnx.load(str(onnx_path)), meta, precision, (lo, opt, hi),
                      workdir=onnx_path.parent, workspace_gib=workspace_gib,
                      cache_bytes=cache_bytes, mark_outputs=mark_outputs, log=log)
    engine_path = Path(out) if out else onnx_path.with_suffix(".engine")
    sidecar = engine_metadata(running_environment(trt), precision, meta, onnx_sha256(onnx_path),
                              plugins, (lo, opt, hi), plan.modes)
    if plan.marked:
        sidecar["marked_outputs"] = plan.marked
    # The old engine goes first, then the sidecar, then the engine: an engine file never stands
    # beside a sidecar that describes another build (a failed write leaves no engine at all).
    engine_path.unlink(missing_ok=True)
    write_bytes_atomic(sidecar_path(engine_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    write_bytes_atomic(engine_path, plan.serialized)
    if timing_cache and plan.timing_cache is not None:
        write_bytes_atomic(Path(timing_cache), plan.timing_cache)
    log(f"wrote {engine_path} ({precision}, batch {lo}/{opt}/{hi}, {plugins} plugins) in "
        f"{time.perf_counter() - t0:.1f} s")
    return engine_path
