"""Calibrated INT8: an fp32 export -> an explicit Q/DQ ONNX (``QuantizeLinear`` /
``DequantizeLinear`` around the matrix products), calibrated on clips of the user's data.

Why ONNX Runtime's ``quantize_static`` (docs/design.md, "Calibrated INT8"): it is installed
with the runtime already (onnxruntime), writes standard ONNX Q/DQ that ONNX Runtime, OpenVINO
and TensorRT's explicit quantization all read, keeps the graph's ``evad`` custom nodes and their
model-local functions, and takes the graph as exported (no ``quant_pre_process``: its symbolic
shape inference does not know the ``evad`` ops, and the quantizer's own ONNX shape inference
suffices). NNCF is not installed here; NVIDIA ModelOpt's ONNX PTQ pins onnx ~= 1.21 and
onnxruntime-gpu ~= 1.24 and cannot share this environment.

The settings are those TensorRT's explicit quantization needs (and ONNX Runtime's CPU kernels
take): QDQ format, int8 activations and weights, both symmetric (zero point 0), weights per
output channel, biases left float (``QuantizeBias`` off: ORT's default int32 bias feeds a
``DequantizeLinear`` that TensorRT's parser refuses, "input has type Int32 but must have type
FP8, FP4, Int4, Int8, or UInt8"; ORT fuses the same ``QLinearConv`` / ``QGemm`` either way);
Percentile calibration: each tensor's range is the 99.99th percentile of its |x| over the
calibration clips (a histogram), not its extreme, so one outlier does not coarsen every step
(vit_b_ktp, 16 clips: block 9's kept-token Jaccard 0.9725 against MinMax's 0.9687, which
missed the 0.97 rule; docs/design.md, "Calibrated INT8"). The histogram calibrator keeps every
clip's activations (a vit_b_ktp 288x512 clip's: over 2 GiB) until it bins them, so the clips
go to it one at a time (ORT's ``CalibStridedMinMax`` of 1: despite the name, any calibrator;
each clip's histograms are merged into the running ones): the calibration's memory does not grow
with the clip count (vit_b_ktp, 16 clips: 6.0 GiB peak; all 16 at once, or 8 at a time, were
killed at 23 GiB).

What stays float, and why: only ``MatMul``, ``Gemm`` and ``Conv`` are quantized, so the ``evad``
ops (``KeyframeTopKPrune``, ``RoIAlign3D``), attention's softmax, LayerNorm and every other op
run in float; the linear layers whose outputs feed a pruning block's importance (the qkv
projection before each ``KeyframeTopKPrune``) stay float too, so int8 rounding cannot move which
tokens survive, and so does the actor localization (FPN and Sparse R-CNN stages), whose person
score meets a threshold (:func:`float_nodes`). The list goes into the metadata.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.ava_csv import read_rows
from evad.command import check_input_dir, one_line
from evad.errors import ConfigError, EvadError
from evad.hashing import file_sha256
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, ModelSpec
from evad.sampling import expected_keyframes
from evad.video import VIDEO_EXTENSIONS, open_video, sniff_container

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization as ortq
else:
    onnx = lazy_import("onnx", "pip install onnx")
    ort = lazy_import("onnxruntime", "pip install onnxruntime")
    ortq = lazy_import("onnxruntime.quantization", "pip install onnxruntime")

__all__ = ["CALIBRATION_PERCENTILE", "CALIBRATION_STRIDE_S",
           "DEFAULT_CLIPS", "INT8_SUFFIX", "LOCALIZATION_SCOPES", "MIN_CLIPS", "QUANTIZED_OPS",
           "Calibration", "CalibrationPlan", "ClipSource", "float_nodes", "name_scopes",
           "plan_calibration", "quantize"]

#: the fewest calibration clips taken: a handful of clips sets ranges that fit those scenes
#: only (and one clip is what the bar refuses);
#: eight at 1 s spacing span several scenes even from one short video (measured on the tiny
#: model in docs/design.md, "Calibrated INT8")
MIN_CLIPS = 8
#: clips taken by default (at most; spread evenly over the data)
DEFAULT_CLIPS = 32
#: the percentile of |x| that sets an activation tensor's range
CALIBRATION_PERCENTILE = 99.99
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


class _Reader:
    """The calibration clips as ONNX Runtime's ``CalibrationDataReader`` wants them (one feed
    per ``get_next``), counting them on ``step``."""

    def __init__(self, clips: Iterator[tuple[np.ndarray, np.ndarray]], count: int,
                 step: Callable[[], None]) -> None:
        self.clips, self.count, self.step = clips, count, step
        #: clips handed out so far; the current range's end (``set_range``)
        self.read, self.end = 0, count

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        """The quantizer's strided calibration asks for clips ``start_index`` to ``end_index``,
        in order: the clips come from one pass over the data."""
        if start_index != self.read:
            raise EvadError(f"calibration asked for clips from {start_index}, after "
                            f"{self.read}: ONNX Runtime's quantizer changed; pin onnxruntime")
        self.end = end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.read >= self.end:
            return None
        nxt = next(self.clips, None)
        if nxt is None:
            return None
        self.read += 1
        self.step()
        return {INPUT_CLIP: nxt[0], INPUT_IMAGE_SIZE: nxt[1]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (feed := self.get_next()) is not None:
            yield feed


@contextlib.contextmanager
def _without_preprocess_advice() -> Iterator[None]:
    """Drop the quantizer's "Please consider to run pre-processing" warnings (it logs them on
    the root logger, twice a run): this export needs no ``quant_pre_process`` (module
    docstring), and a user should not be told to run it."""
    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize(src: str | os.PathLike, dst: str | os.PathLike, calibration: Calibration, *,
             exclude: dict[str, str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Calibrate the fp32 export ``src`` on the calibration's clips and write the Q/DQ model
    to ``dst`` (write it into a staging folder: an interrupted calibration then leaves
    nothing).

    Args:
        calibration: the plan and its clip source.
        exclude: nodes to keep in float, by name, with why (default :func:`float_nodes`).
        progress: draw a progress bar (stderr), one step per clip.

    Returns:
        The ``quantization`` record for the metadata (method, calibration data, clip count and
        hash, the nodes kept in float); ``evad.export.exporter.write_int8`` writes it into
        ``dst`` with the rest of the metadata.

    Raises:
        EvadError: ONNX Runtime's quantizer failed (one line).
    """
    from tqdm import tqdm

    src, dst, plan = Path(src), Path(dst), calibration.plan
    meta = read_metadata(src)
    spec = ModelSpec.from_metadata(meta, f"ONNX model {src}")
    if exclude is None:
        exclude = float_nodes(onnx.load(str(src), load_external_data=False))
    with tqdm(total=plan.clips, desc="calibrate", unit="clip", disable=not progress,
              leave=False) as bar, _without_preprocess_advice():
        reader = _Reader(calibration.clips(plan, spec), plan.clips, lambda: bar.update())
        try:
            ortq.quantize_static(
                str(src), str(dst), reader, quant_format=ortq.QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
                nodes_to_exclude=sorted(exclude),
                calibrate_method=ortq.CalibrationMethod.Percentile,
                use_external_data_format=Path(f"{src}.data").is_file(),
                # no CalibMaxIntermediateOutputs: in ORT 1.32 a calibrator clears the collected
                # outputs at that count without using them (all but the last clips are lost)
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": False, "CalibStridedMinMax": 1,
                               "CalibPercentile": CALIBRATION_PERCENTILE,
                               "CalibTensorRangeSymmetric": True})
        except (KeyboardInterrupt, EvadError):
            raise
        except Exception as e:  # the quantizer raises what onnx / onnxruntime raise
            raise EvadError(f"ONNX Runtime's quantizer failed on {src}: {one_line(e)}") from e
    if reader.read != plan.clips:
        raise EvadError(f"calibration read {reader.read} of the {plan.clips} clips planned from "
                        f"{plan.data}: a video ended early; check it")
    return {
        "method": f"onnxruntime.quantization.quantize_static (onnxruntime "
                  f"{ort.__version__}), QDQ, calibration Percentile {CALIBRATION_PERCENTILE:g} "
                  f"(symmetric: the percentile of |x|), one clip at a time",
        "activations": "int8, per tensor, symmetric",
        "weights": "int8, per output channel, symmetric; biases float",
        "quantized_ops": list(QUANTIZED_OPS),
        "calibration_data": plan.kind, "calibration_clips": plan.clips,
        "calibration_sha256": plan.sha256,
        "float_nodes": dict(sorted(exclude.items())),
        "float_ops": "every op but " + ", ".join(QUANTIZED_OPS)}
