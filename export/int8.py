"""Calibrated INT8: an fp32 export -> an explicit Q/DQ ONNX (``QuantizeLinear`` /
``DequantizeLinear`` around the matrix products), calibrated on clips of the user's data.

Why NNCF's ``nncf.quantize`` (docs/design.md, "Calibrated INT8"): on vit_b_ktp the file it
calibrated kept block 9's pruning within the 0.97 rule on every measured seed in ONNX Runtime
and OpenVINO (min 0.980 and 0.976), where the files of ONNX Runtime's ``quantize_static`` (the
quantizer before it) passed or failed by which file a calibration happened to write
(0.963-0.984). What it does that ``quantize_static`` did not: Q/DQ on the products' inputs only,
SmoothQuant (each quantized MatMul's input channels' ranges moved into its weight, so one
per-tensor activation scale fits every channel; measured apart: +0.004 at block 9's minimum),
mean-of-clips ranges and a bias correction of the weights' rounding (their shares not measured
apart). It writes standard ONNX Q/DQ that ONNX Runtime, OpenVINO and TensorRT's explicit
quantization all read, and keeps the ``evad`` custom nodes and their model-local functions (with
one fix, :func:`_nncf_quietly`). NVIDIA ModelOpt's ONNX PTQ pins onnx ~= 1.21 and
onnxruntime-gpu ~= 1.24 and cannot share this environment.

The settings are those TensorRT's explicit quantization needs (and ONNX Runtime's CPU kernels
take): Q/DQ on the products' inputs, int8 activations and weights, both symmetric (zero point
0; activations forced signed), weights per output channel, biases left float; each activation's
range the mean over the clips of each clip's extreme (NNCF's MEAN_MINMAX for per-tensor
activations; a weight's range its own extreme). NNCF reads the clips in two statistics passes
(SmoothQuant's, then the ranges'), each decoding them anew: no clip is held in memory; it reads
the fp32 weights from a working copy on disk beside the result, so its copies of the model are
copies of the graph and of the weights SmoothQuant rewrote (:func:`_weights_on_disk`).

What stays float, and why: only ``MatMul``, ``Gemm`` and ``Conv`` are quantized, so the ``evad``
ops (``KeyframeTopKPrune``, ``RoIAlign3D``), attention's softmax, LayerNorm and every other op
run in float; the linear layers whose outputs feed a pruning block's importance (the qkv
projection before each ``KeyframeTopKPrune``) stay float too, so int8 rounding cannot move which
tokens survive, and so does the actor localization (FPN and Sparse R-CNN stages), whose person
score meets a threshold (:func:`float_nodes`). The list goes into the metadata. NNCF 3.4's
SmoothQuant takes no ignored scope and scales the float products' inputs too; that is undone
(:func:`_unsmooth_float_nodes`), so each float product reads what it reads in the fp32 export.

:func:`plan_calibration` checks the data and picks the keyframes without torch or a model (bad
input is refused before any work); :func:`quantize` runs the calibration on the clips a
:data:`ClipSource` makes of the plan and writes the file. The clips are the runtime's own
(``evad.runtime.calibration.calibration_clips``, on its ``ClipProducer``): the clips
``evad-trt-run`` feeds the model, through the one clip path.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.ava_csv import read_rows
from evad.command import check_input_dir, one_line
from evad.errors import ConfigError, EvadError
from evad.export.external_data import initializers, save_with_weights_file
from evad.hashing import file_sha256
from evad.lazy import MissingDependency, available, lazy_import
from evad.metadata import read_metadata
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, ModelSpec
from evad.sampling import expected_keyframes
from evad.video import VIDEO_EXTENSIONS, open_video, sniff_container

#: how to install the quantizer (the ``int8`` extra pins the NNCF :func:`_nncf_quietly` fixes)
INSTALL_QUANTIZER = "pip install 'evad-deploy[int8]'"

if TYPE_CHECKING:
    import nncf
    import onnx
else:
    nncf = lazy_import("nncf", INSTALL_QUANTIZER)
    onnx = lazy_import("onnx", "pip install onnx")

__all__ = ["CALIBRATION_STRIDE_S", "DEFAULT_CLIPS", "INT8_SUFFIX", "LOCALIZATION_SCOPES",
           "MIN_CLIPS", "QUANTIZED_OPS", "SMOOTH_QUANT_ALPHA",
           "INSTALL_QUANTIZER", "require_quantizer",
           "Calibration", "CalibrationPlan", "ClipSource", "float_nodes", "name_scopes",
           "plan_calibration", "quantize", "quantized_model"]

#: the fewest calibration clips taken: a handful of clips sets ranges that fit those scenes
#: only (and one clip is what the bar refuses);
#: eight at 1 s spacing span several scenes even from one short video (measured on the tiny
#: model in docs/design.md, "Calibrated INT8")
MIN_CLIPS = 8
#: clips taken by default (at most; spread evenly over the data)
DEFAULT_CLIPS = 32
#: SmoothQuant's migration strength on the MatMuls (NNCF's for transformers): each input
#: channel's range is moved into the weight by s_j = max|x_j|^a / max|w_j|^(1-a), so one
#: per-tensor activation scale fits every channel
SMOOTH_QUANT_ALPHA = 0.95
#: the INT8 file's suffix: ``<name>.int8.onnx`` beside ``<name>.onnx``
INT8_SUFFIX = ".int8.onnx"
#: the op types quantized; everything else runs in float
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: the actor localization's module scopes in an export (torch's exporter writes each node's
#: scopes into its ``pkg.torch.onnx.name_scopes`` metadata): the FPN and the Sparse R-CNN
#: stages, which give the boxes and the person scores
LOCALIZATION_SCOPES = ("model.fpn_", "model.det_head.s0_headseries.")
#: seconds between calibration keyframes: AVA's one annotation per second, as the runtime's
#: default
CALIBRATION_STRIDE_S = 1.0


@dataclass(frozen=True)
class CalibrationPlan:
    """The calibration data, checked, and the keyframes chosen from it.

    data: the folder given. kind: ``AVA-format dataset`` or ``folder of videos``.
    picks: (video, keyframe indices at 1 s spacing) per video used, in file-name order.
    sha256: SHA-256 over each used file's name and bytes (and the annotations of a dataset)
    and the chosen keyframes: what the metadata records as the data's hash.
    """

    data: Path
    kind: str
    picks: tuple[tuple[Path, tuple[int, ...]], ...]
    sha256: str

    @property
    def clips(self) -> int:
        """How many clips calibration takes."""
        return sum(len(k) for _, k in self.picks)


#: makes a plan's clips for a model: (clip (1, 3, T, H, W) float32, image_size (1, 2) int64)
#: per chosen keyframe, in plan order (``evad.runtime.calibration.calibration_clips``)
ClipSource = Callable[[CalibrationPlan, ModelSpec], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Calibration:
    """What an INT8 export calibrates on: the checked ``plan`` and the ``clips`` source that
    makes its clips (the runtime's, handed in by the command: this stage cannot import it)."""

    plan: CalibrationPlan
    clips: ClipSource


def _videos(folder: Path) -> list[Path]:
    """The files of ``folder`` whose first bytes start a container this project reads."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.stat().st_size > 0:
            try:
                if sniff_container(p).container:
                    out.append(p)
            except OSError:
                continue
    return out


def plan_calibration(data: str | os.PathLike, clips: int = DEFAULT_CLIPS) -> CalibrationPlan:
    """Check calibration data and choose ``clips`` keyframes from it, spread evenly; no model
    and no torch needed, so a command refuses bad data before any work.

    ``data`` is an AVA-format dataset (``annotations.csv`` + ``videos/<id>.mp4``: its annotated
    keyframes) or a folder of videos (a keyframe every second of each).

    Raises:
        ConfigError: ``clips`` below :data:`MIN_CLIPS`; EvadError: the folder is missing, holds
            no video, or fewer keyframes than :data:`MIN_CLIPS`, or a video cannot be opened
            (one line naming it and saying what to give instead).
    """
    if clips < MIN_CLIPS:
        raise ConfigError(f"--calib-clips {clips}: calibration takes at least {MIN_CLIPS} clips "
                          "(ranges from fewer fit those scenes only)")
    root = check_input_dir(data, "--calib folder")
    ann = root / "annotations.csv"
    available: list[tuple[Path, int]] = []
    hashed: list[Path] = []
    if ann.is_file():
        kind = "AVA-format dataset"
        seen: dict[str, set[int]] = {}
        for video, ts, *_ in read_rows(ann, False, f"annotations of --calib {root}"):
            seen.setdefault(video, set()).add(round(ts / CALIBRATION_STRIDE_S))
        for video in sorted(seen):
            path = root / "videos" / f"{video}.mp4"
            open_video(path)  # one line when missing or not a video
            available += [(path, k) for k in sorted(seen[video])]
        hashed.append(ann)
    else:
        kind = "folder of videos"
        videos = _videos(root)
        if not videos:
            others = sum(1 for p in root.iterdir() if p.is_file())
            what = f"none of its {others} files is a video" if others else "it is empty"
            raise EvadError(f"--calib {root} has no videos ({what}): give a folder of videos "
                            f"({', '.join(VIDEO_EXTENSIONS[:4])}, ...) or an AVA-format dataset")
        for path in videos:
            info = open_video(path)
            # the last frame's time, not the duration: a keyframe past it has no frame of its own
            last_s = max(info.frame_count - 1, 0) / info.fps
            count = expected_keyframes(last_s, CALIBRATION_STRIDE_S)
            available += [(path, k) for k in range(count)]
    if len(available) < MIN_CLIPS:
        raise EvadError(f"--calib {root} gives {len(available)} clip(s) (one a second of video"
                        f"{', annotated' if kind.startswith('AVA') else ''}); calibration takes "
                        f"at least {MIN_CLIPS}: add videos")
    chosen = sorted({int(i) for i in np.linspace(0, len(available) - 1,
                                                  min(clips, len(available)))})
    by_video: dict[Path, list[int]] = {}
    for i in chosen:
        by_video.setdefault(available[i][0], []).append(available[i][1])
    picks = tuple((p, tuple(ks)) for p, ks in by_video.items())
    h = hashlib.sha256()
    for p in [*hashed, *(p for p, _ in picks)]:
        h.update(f"{p.relative_to(root)}\0{file_sha256(p)}\0".encode())
    h.update(repr([(str(p.relative_to(root)), ks) for p, ks in picks]).encode())
    return CalibrationPlan(root, kind, picks, h.hexdigest())


def float_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """The quantizable nodes (:data:`QUANTIZED_OPS`) kept in float, by name, with why:

    - the patch embedding (the one that takes the clip itself: a clip's range is its own, and a
      quantized input clipped at the calibration's range moved block 3's kept tokens most:
      Jaccard 0.976 against 0.994 float, tiny model, 4 seeded clips);
    - the linear layers the importance of a pruning block is computed from (walking back from
      each ``KeyframeTopKPrune``'s query and key inputs to the first matrix product);
    - the actor localization (:data:`LOCALIZATION_SCOPES`): its person score is compared with
      a threshold, so its error decides detections; quantized, it moved vit_b_ktp's person
      scores by up to 0.18 and lost a detection of 46 (``evad-parity --seed 2``), float 0.05
      and none of 48.

    Raises:
        ConfigError: the graph names no module scopes (not an evad export of torch's exporter):
            the localization cannot be found.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    inputs = {i.name for i in model.graph.input}
    out: dict[str, str] = {n.name: "the patch embedding: takes the clip itself"
                           for n in model.graph.node
                           if n.op_type in QUANTIZED_OPS and inputs & set(n.input)}
    for node in model.graph.node:
        if node.domain != "evad" or node.op_type != "KeyframeTopKPrune":
            continue
        todo, seen = list(node.input[:2]), set()
        while todo:
            name = todo.pop()
            n = producer.get(name)
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type in QUANTIZED_OPS:
                out[n.name] = f"feeds the pruning importance of {node.name}"
            else:
                todo += list(n.input)
    scoped = 0
    for n in model.graph.node:
        scopes = name_scopes(n)
        scoped += bool(scopes)
        if n.op_type in QUANTIZED_OPS and n.name not in out and \
                any(s.startswith(LOCALIZATION_SCOPES) for s in scopes):
            out[n.name] = "the actor localization: its person score meets a threshold"
    if not scoped:
        raise ConfigError("the ONNX graph names no module scopes (pkg.torch.onnx.name_scopes), "
                          "so its actor localization cannot be kept float: quantize an export "
                          "written by evad-export")
    return out


def name_scopes(node: onnx.NodeProto) -> list[str]:
    """The module scopes torch's exporter recorded for ``node`` (outermost first), or []."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes if isinstance(s, str)]
    return []


def require_quantizer() -> None:
    """Refuse an INT8 export before any work when its quantizer (NNCF) is not installed.

    Raises:
        MissingDependency: one line naming the extra to install.
    """
    if not available(nncf):
        raise MissingDependency("nncf", INSTALL_QUANTIZER, "the INT8 export's quantizer")


class _Clips:
    """The calibration clips as NNCF's ``Dataset`` wants them: re-iterable (its statistics
    passes each read the data again, and each pass decodes the videos anew, so no clip is held),
    one feed per clip; the clips each pass read are counted (``passes``)."""

    def __init__(self, calibration: Calibration, spec: ModelSpec) -> None:
        self.calibration, self.spec = calibration, spec
        #: clips read by each pass so far, in order
        self.passes: list[int] = []

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.passes.append(0)
        for clip, size in self.calibration.clips(self.calibration.plan, self.spec):
            self.passes[-1] += 1
            yield {INPUT_CLIP: clip, INPUT_IMAGE_SIZE: size}


@contextlib.contextmanager
def _nncf_quietly(progress: bool) -> Iterator[None]:
    """NNCF as a step of a command: its progress bars (rich, drawn on stdout) go to stderr, or
    nowhere without ``progress``, so stdout stays the command's; its per-node INFO lines are
    dropped and its warnings go where the bars go; its telemetry (a Google Analytics event per
    ``nncf.quantize``, sent through openvino_telemetry unless the user opted out) is answered
    here, so nothing leaves the machine. NNCF 3.4's output insertion
    (``ONNXModelTransformer._insert_outputs``, used by every statistics pass) rebuilds the model
    without its model-local functions, so ONNX Runtime then refuses the ``evad`` nodes
    ("evad:KeyframeTopKPrune(-1) is not a registered function/op"); they are put back
    (openvinotoolkit/nncf pull request 3260 carries the same fix upstream)."""
    from nncf.common.logging.logger import nncf_logger
    from nncf.onnx.graph.model_transformer import ONNXModelTransformer
    from nncf.telemetry import decorator

    insert_outputs = ONNXModelTransformer.__dict__["_insert_outputs"]

    def keep_functions(model: onnx.ModelProto, outputs: Any) -> onnx.ModelProto:
        new = insert_outputs.__func__(model, outputs)
        if not new.functions:
            new.functions.extend(model.functions)
        return new

    def nothing(*_: Any, **__: Any) -> None:
        return None

    level, telemetry = nncf_logger.level, decorator.telemetry
    nncf_logger.setLevel(logging.WARNING)
    # NNCF's log handler took sys.stdout when NNCF was imported: its warnings ("Dataset
    # contains only N samples") follow the bars
    streams = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)]
    decorator.telemetry = SimpleNamespace(start_session=nothing, send_event=nothing,
                                          end_session=nothing)
    ONNXModelTransformer._insert_outputs = staticmethod(keep_functions)  # type: ignore[method-assign]
    try:
        with open(os.devnull, "w") if not progress else contextlib.nullcontext(sys.stderr) as out, \
                contextlib.redirect_stdout(out):
            before = [h.stream for h in streams]
            for h in streams:
                h.setStream(out)
            try:
                yield
            finally:
                for h, stream in zip(streams, before, strict=True):
                    h.setStream(stream)
    finally:
        ONNXModelTransformer._insert_outputs = insert_outputs  # type: ignore[method-assign]
        decorator.telemetry = telemetry
        nncf_logger.setLevel(level)


def _signed_activations(model: onnx.ModelProto) -> int:
    """Re-express, in place, each uint8 activation pair NNCF wrote as int8; return how many.

    NNCF quantizes a tensor it saw non-negative (a ReLU's output) as uint8 with zero point 0,
    range [0, 255 s]; TensorRT's explicit quantization takes signed int8 only, and NNCF's
    ``signedness_to_force`` for activations conflicts with every hardware config it has. Signed
    with the same top, its range is [-128 s', 127 s'] with s' = 255 s / 127: what NNCF computes
    for a signed tensor of the same statistics (``fake_quantize.symmetric_range``).

    Raises:
        EvadError: a uint8 pair with a non-zero zero point, or sharing its scale with another
            node (not what NNCF 3.4 writes).
    """
    init = {t.name: t for t in model.graph.initializer}
    users: dict[str, set[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, set()).add(n.name)
    pairs: dict[tuple[str, str], set[str]] = {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) == 3 \
                and n.input[2] in init and init[n.input[2]].data_type == onnx.TensorProto.UINT8:
            pairs.setdefault((n.input[1], n.input[2]), set()).add(n.name)
    for (scale, zero), nodes in pairs.items():
        zp = onnx.numpy_helper.to_array(init[zero])
        if zp.any() or users[scale] != nodes or users[zero] != nodes or scale not in init:
            raise EvadError(f"NNCF wrote a uint8 quantizer ({sorted(nodes)}) this export cannot "
                            "make int8 for TensorRT: pin nncf 3.4 (pip install "
                            "'evad-deploy[int8]')")
        s = onnx.numpy_helper.to_array(init[scale])
        init[scale].CopyFrom(onnx.numpy_helper.from_array(
            (s.astype(np.float64) * 255 / 127).astype(s.dtype), scale))
        init[zero].CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(zp, np.int8), zero))
    # the recorded types of the quantized tensors and zero points follow (ONNX Runtime and
    # strict type inference check them)
    converted = set().union(*pairs.values())
    retyped = {o for n in model.graph.node if n.op_type == "QuantizeLinear"
               and n.name in converted for o in n.output}
    retyped |= {zero for _, zero in pairs}
    for v in model.graph.value_info:
        if v.name in retyped:
            v.type.tensor_type.elem_type = onnx.TensorProto.INT8
    return len(pairs)


def _unsmooth_float_nodes(model: onnx.ModelProto, source: onnx.ModelProto,
                          exclude: dict[str, str]) -> int:
    """Undo, in place, NNCF's SmoothQuant on the nodes kept float; return how many of its
    ``Mul`` nodes went.

    NNCF 3.4's SmoothQuant takes no ignored scope: it also puts a ``Mul`` (x / s per input
    channel) before the float products and scales their weights by s, the same product in
    float with its input and weight rounded once more, on exactly the nodes kept float for
    their precision (the pruning importance, the localization). Their consumers read the
    ``Mul``'s input again and their initializers are the fp32 export's (``source``, by name);
    a ``Mul`` that feeds no other node (nor the graph's outputs) goes with its scale. Then
    every float node must read what it reads in ``source`` (:func:`_check_float_nodes`).

    Raises:
        EvadError: a float product's initializer is also read by a node not kept float
            (copying it back would change that node; NNCF 3.4 does not smooth such a
            product), or :func:`_check_float_nodes` refused.
    """
    init = {t.name: t for t in model.graph.initializer}
    source_init = {t.name: t for t in source.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    gone = []
    for mul in model.graph.node:
        if mul.op_type != "Mul" or not mul.name.endswith("/nncf_smooth_quant"):
            continue
        consumers = users.get(mul.output[0], [])
        floats = [c for c in consumers if c.name in exclude]
        x = [i for i in mul.input if i not in init]
        if not floats or len(x) != 1:
            continue
        for c in floats:
            for w in (i for i in c.input if i in init):
                others = sorted(u.name for u in users[w] if u.name not in exclude)
                if others:
                    raise _unsmooth_refused(f"{c.name}, kept float, shares {w} with "
                                            f"{', '.join(others)}, not kept float")
                if w in source_init:
                    init[w].CopyFrom(source_init[w])
            c.input[:] = [x[0] if i == mul.output[0] else i for i in c.input]
        if len(floats) == len(consumers) and mul.output[0] not in graph_outputs:
            gone.append(mul)
    for mul in gone:
        model.graph.node.remove(mul)
    outputs = {o for mul in gone for o in mul.output}
    still = {i for n in model.graph.node for i in n.input}
    unused = {i for mul in gone for i in mul.input if i in init and i not in still}
    for name in unused:
        model.graph.initializer.remove(init[name])
    for v in [v for v in model.graph.value_info if v.name in outputs]:
        model.graph.value_info.remove(v)
    _check_float_nodes(model, source, exclude)
    return len(gone)


def _unsmooth_refused(what: str) -> EvadError:
    """The one-line refusal of an INT8 file whose float products cannot be made the fp32
    export's again."""
    fix = ("report it with the model: this export is not one the INT8 step handles"
           if nncf.__version__.startswith("3.4.") else
           f"this export handles NNCF 3.4's output: {INSTALL_QUANTIZER}")
    return EvadError(f"cannot undo NNCF {nncf.__version__}'s SmoothQuant on the products kept "
                     f"float: {what}; {fix}")


def _check_float_nodes(model: onnx.ModelProto, source: onnx.ModelProto,
                       exclude: dict[str, str]) -> None:
    """Raise unless each node of ``exclude`` reads in ``model`` what it reads in ``source``:
    the same tensors (or, where NNCF removed a ``Cast`` to the type it already had, the
    ``Cast``'s input), each initializer byte for byte and each ``Constant``'s value.

    Raises:
        EvadError: the node and the first input that differs (one line).
    """
    def fixed(m: onnx.ModelProto) -> dict[str, bytes]:
        """Each constant tensor by name, as bytes: an initializer whole; a ``Constant`` by
        its attributes (NNCF names unnamed nodes, so the node itself may differ)."""
        out = {t.name: t.SerializeToString() for t in m.graph.initializer
               if t.name in wanted}
        out |= {n.output[0]: b"".join(a.SerializeToString() for a in n.attribute)
                for n in m.graph.node if n.op_type == "Constant" and n.output[0] in wanted}
        return out

    nodes = {n.name: n for n in model.graph.node}
    source_nodes = {n.name: n for n in source.graph.node}
    source_producer = {o: n for n in source.graph.node for o in n.output}
    names = [n for n in exclude if n in source_nodes]
    wanted = {i for n in names for i in source_nodes[n].input} | \
        {i for n in names if n in nodes for i in nodes[n].input}
    have, want = fixed(model), fixed(source)
    for name in names:
        if name not in nodes:
            raise _unsmooth_refused(f"{name}, kept float, is missing from NNCF's output")
        got, expected = list(nodes[name].input), list(source_nodes[name].input)
        if len(got) != len(expected):
            raise _unsmooth_refused(f"{name}, kept float, has {len(got)} inputs where the "
                                    f"fp32 export has {len(expected)}")
        for g, e in zip(got, expected, strict=True):
            cast = source_producer.get(e)
            if g != e and not (cast is not None and cast.op_type == "Cast" and
                               cast.input[0] == g):
                raise _unsmooth_refused(f"{name}, kept float, reads {g} where the fp32 "
                                        f"export reads {e}")
            if e in want and have.get(g) != want[e]:
                raise _unsmooth_refused(f"{name}, kept float, reads a {e} that differs from "
                                        "the fp32 export's")


def quantize(src: str | os.PathLike, dst: str | os.PathLike, calibration: Calibration, *,
             exclude: dict[str, str] | None = None, progress: bool = False) -> dict[str, Any]:
    """:func:`quantized_model`, written to ``dst`` (write it into a staging folder: an
    interrupted calibration then leaves nothing); returns its ``quantization`` record."""
    model, record = quantized_model(src, calibration, workdir=Path(dst).parent,
                                    exclude=exclude, progress=progress)
    onnx.save_model(model, str(dst))
    return record


@contextlib.contextmanager
def _weights_on_disk(src: Path, workdir: Path) -> Iterator[tuple[onnx.ModelProto, str]]:
    """``src`` re-saved into a temporary folder in ``workdir`` with its initializers in one
    external data file, and loaded without them: (the graph, the folder's absolute path). NNCF
    copies the model at each step (its pre-processing, each statistics pass, SmoothQuant); until
    SmoothQuant rewrites the products' weights (NNCF holds those in memory, the float products'
    too, restored afterwards) each copy is the graph alone, and NNCF and ONNX Runtime read the
    weights from the file (NNCF's ``BackendParameters.EXTERNAL_DATA_DIR``). On vit_b_ktp this
    took the INT8 step's peak from 9.64 to 7.55 GiB (docs/design.md, "Calibrated INT8"). The
    folder is deleted on leaving, also on an error or an interrupt; ``workdir`` should be the
    staging folder of the result.

    Raises:
        EvadError: ``workdir`` lacks the room for the copy, or the copy cannot be written.
    """
    size = src.stat().st_size
    what = f"the calibration's working copy of {src.name}'s weights ({size / 1e6:.0f} MB)"

    def unwritable(e: OSError) -> EvadError:
        return EvadError(f"{what} could not be written into {workdir} ({one_line(e)}): check "
                         "the folder and its free space")

    try:
        free = shutil.disk_usage(workdir).free
    except OSError as e:
        raise unwritable(e) from e
    if free < size:
        raise EvadError(f"{what} does not fit in {workdir}: {free / 1e6:.0f} MB free there; "
                        "free some disk space")
    try:
        folder = tempfile.TemporaryDirectory(prefix=".int8-weights-", dir=workdir,
                                             ignore_cleanup_errors=True)
    except OSError as e:
        raise unwritable(e) from e
    with folder as tmp:
        model = onnx.load(str(src))
        graph = Path(tmp).resolve() / "fp32.onnx"
        try:  # initializers of 1 KiB or more go to the file
            save_with_weights_file(model, graph, min_bytes=1024)
        except OSError as e:  # the disk filled meanwhile
            raise unwritable(e) from e
        # read back rather than kept: protobuf's arena keeps the cleared weights' memory until
        # the whole message goes (kept, the INT8 step's peak was 8.16 GiB, not 7.58, on vit_b)
        del model
        yield onnx.load(str(graph), load_external_data=False), str(graph.parent)


def _load_weights(model: onnx.ModelProto, weights_dir: str, what: str) -> None:
    """Read ``model``'s external initializers from ``weights_dir`` into it, each then byte for
    byte what the export wrote (the folder is deleted next; the file written from the model
    must hold them)."""
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, weights_dir)
    except (OSError, ValueError, onnx.checker.ValidationError) as e:  # a missing or bad file
        raise EvadError(f"cannot read {what}'s weights back from the calibration's working "
                        f"copy: {one_line(e)}") from e
    for t in initializers(model.graph):
        # the loader sets data_location to its default, which protobuf then writes out
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")


def quantized_model(src: str | os.PathLike, calibration: Calibration, *,
                    workdir: str | os.PathLike, exclude: dict[str, str] | None = None,
                    progress: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Calibrate the fp32 export ``src`` on the calibration's clips: its Q/DQ model, in memory.

    Args:
        calibration: the plan and its clip source.
        workdir: a folder for a working copy of ``src``'s weights while NNCF runs (as large as
            ``src``; deleted after): the staging folder the result goes to.
        exclude: nodes to keep in float, by name, with why (default :func:`float_nodes`).
        progress: show NNCF's progress bars (stderr): two statistics passes over the clips,
            then SmoothQuant and the bias correction, one step per node.

    Returns:
        (the model, the ``quantization`` record for the metadata: method, calibration data,
        clip count and hash, the nodes kept in float); ``evad.export.exporter.write_int8``
        writes the record into the model with the rest of the metadata and saves it once.

    Raises:
        EvadError: NNCF failed, a pass read fewer clips than planned, or ``workdir`` has no
            room for the working copy (one line).
    """
    from nncf.onnx.quantization.backend_parameters import BackendParameters
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    require_quantizer()
    src, plan = Path(src), calibration.plan
    if Path(f"{src}.data").is_file():
        raise EvadError(f"{src} keeps its weights in {src.name}.data (over 2 GB): NNCF 3.4's "
                        "statistics passes hand ONNX Runtime the model, with the weights "
                        "SmoothQuant rewrote, as one protobuf, which holds 2 GB at most (not "
                        "tried); export a smaller input size or model for --int8")
    spec = ModelSpec.from_metadata(read_metadata(src), f"ONNX model {src}")
    clips = _Clips(calibration, spec)
    with _weights_on_disk(src, Path(workdir)) as (model, weights_dir), \
            _nncf_quietly(progress):
        if exclude is None:
            exclude = float_nodes(model)
        float_types = sorted({n.op_type for n in model.graph.node} - set(QUANTIZED_OPS))
        try:
            quantized = nncf.quantize(
                model, nncf.Dataset(clips), preset=nncf.QuantizationPreset.PERFORMANCE,
                model_type=nncf.ModelType.TRANSFORMER, subset_size=plan.clips,
                fast_bias_correction=True,
                ignored_scope=nncf.IgnoredScope(names=sorted(exclude), types=float_types,
                                                validate=False),
                advanced_parameters=AdvancedQuantizationParameters(
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(
                        matmul=SMOOTH_QUANT_ALPHA, convolution=-1),
                    backend_params={BackendParameters.EXTERNAL_DATA_DIR: weights_dir}))
        except (KeyboardInterrupt, EvadError):
            raise
        except Exception as e:  # NNCF raises what onnx / onnxruntime / numpy raise
            raise EvadError(f"NNCF's quantizer failed on {src}: {one_line(e)}") from e
        # NNCF loads its result's weights itself; the fp32 graph's are the unsmoothing's source
        _load_weights(quantized, weights_dir, "NNCF's result")
        _load_weights(model, weights_dir, "the fp32 export")
    if not clips.passes or any(n != plan.clips for n in clips.passes):
        raise EvadError(f"calibration read {clips.passes} of the {plan.clips} clips planned "
                        f"from {plan.data} per pass: a video ended early; check it")
    unsmoothed = _unsmooth_float_nodes(quantized, model, exclude)
    signed = _signed_activations(quantized)
    return quantized, {
        "method": f"nncf.quantize (NNCF {nncf.__version__}, ONNX backend), preset PERFORMANCE, "
                  f"model type TRANSFORMER: SmoothQuant alpha {SMOOTH_QUANT_ALPHA:g} on the "
                  f"quantized MatMuls (NNCF's SmoothQuant takes no ignored scope: its {unsmoothed} "
                  f"Mul(s) before float products removed, their weights the fp32 export's), "
                  f"activation ranges the mean over the clips of each clip's max |x|, fast "
                  f"bias correction; QDQ on the products' inputs",
        "activations": "int8, per tensor, symmetric" + (
            f" ({signed} non-negative tensor(s) NNCF made uint8 re-expressed as int8: the same "
            "range, scale x 255/127)" if signed else ""),
        "weights": "int8, per output channel, symmetric; biases float",
        "quantized_ops": list(QUANTIZED_OPS),
        "calibration_data": plan.kind, "calibration_clips": plan.clips,
        "calibration_sha256": plan.sha256,
        "float_nodes": dict(sorted(exclude.items())),
        "float_ops": "every op but " + ", ".join(QUANTIZED_OPS)}
