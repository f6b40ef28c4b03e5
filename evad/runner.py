"""The one interface every inference backend offers, and the graph's input and output names.

A :class:`Runner` takes a batch of clips and returns the detector's outputs by name, as numpy
arrays, whatever runs underneath (the torch reference, ONNX Runtime, a TensorRT engine). The
runtime, ``evad-eval --data``, ``evad-parity`` and the benchmarks all call runners through it;
``evad.runtime.backends.open_runner`` is the one place that chooses one.

Inputs (the exported graph's, the engine's, the torch model's call):
    ``clip`` (B, 3, T, H, W) float32, normalised and zero padded to the input size;
    ``image_size`` (B, 2) int64, the unpadded (h, w) of each clip, input pixels.
Outputs:
    ``boxes`` (B, n, 4) float32 x1y1x2y2 in the unpadded input's pixels;
    ``person_scores`` (B, n) float32 person probabilities;
    ``action_probs`` (B, n, classes) float32, sigmoid applied;
    ``kept_idx_<block>`` (B, K) int64 per pruning block: the kept non-keyframe tokens in top-k
    order (what parity judges).

:data:`BACKEND_TABLE` is the one table of which backend runs which precision on which device,
from which model file: every command's ``--backend`` / ``--precision`` choices, the order
``open_runner``'s ``auto`` tries, ``evad-build-engine --precision`` and the benchmark paths come
from it. :class:`RunnerBase` is what every runner shares: the input check against the model's
signature (:func:`check_inputs`, once, before any backend runs) and ``close()`` / ``with``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from evad.errors import BackendError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only (the package runs on 3.10)

__all__ = ["BACKEND_TABLE", "DETECTIONS", "ENGINE_PRECISIONS", "INPUTS", "INPUT_CLIP",
           "INPUT_IMAGE_SIZE", "KEPT_IDX_PREFIX", "OUTPUT_ACTION_PROBS", "OUTPUT_BOXES",
           "OUTPUT_PERSON_SCORES", "RUN_PRECISIONS", "BackendRow", "ModelSpec", "Runner",
           "RunnerBase", "backend_choices", "backend_row", "check_inputs", "kept_blocks",
           "kept_idx_name", "model_flag", "precision_choices", "runs_at"]

INPUT_CLIP = "clip"
INPUT_IMAGE_SIZE = "image_size"
INPUTS = (INPUT_CLIP, INPUT_IMAGE_SIZE)
OUTPUT_BOXES = "boxes"
OUTPUT_PERSON_SCORES = "person_scores"
OUTPUT_ACTION_PROBS = "action_probs"
#: the outputs a detection consumer reads
DETECTIONS = (OUTPUT_BOXES, OUTPUT_PERSON_SCORES, OUTPUT_ACTION_PROBS)
KEPT_IDX_PREFIX = "kept_idx_"


def kept_idx_name(block: int) -> str:
    """Output name of a pruning block's kept indices (``kept_idx_3``)."""
    return f"{KEPT_IDX_PREFIX}{block}"


def kept_blocks(outputs: dict[str, Any]) -> list[int]:
    """The pruning blocks whose kept indices ``outputs`` holds, in block order."""
    return sorted(int(k[len(KEPT_IDX_PREFIX):]) for k in outputs if k.startswith(KEPT_IDX_PREFIX))


@dataclass(frozen=True)
class ModelSpec:
    """The numbers a model was trained and exported with, as the runtime needs them.

    name: what the model is, for messages (``ONNX model exports/x.onnx``).
    input_size: fixed (H, W) input pixels of an export or engine; None for the torch reference.
    num_frames, frame_stride: the clip (16 frames, every 4th).
    short_side, max_long_side: resize targets, pixels.
    mean, std: normalisation, 0..1 scale, RGB.
    person_threshold: the official person score threshold.
    labels: action names, output i is action id i + 1.
    sha256: the model file's SHA-256 (what a resumed run checks), None for a model in memory.
    preset: the preset's name; trained_on: what the weights learnt from (``AVA v2.2 (80
    actions)``, ``synthetic stick-figure clips only``); synthetic_only: the demo model, which
    knows no real footage. patch_size, tubelet_size: token size (pixels, frames).
    """

    name: str
    input_size: tuple[int, int] | None
    num_frames: int
    frame_stride: int
    short_side: int
    max_long_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    person_threshold: float
    labels: list[str] = field(default_factory=list)
    sha256: str | None = None
    preset: str = ""
    trained_on: str = ""
    synthetic_only: bool = False
    patch_size: int = 16
    tubelet_size: int = 2

    def describe(self) -> str:
        """One line on what the model is: ``ONNX model x.onnx (preset demo, trained on ...)``."""
        parts = [f"preset {self.preset}" if self.preset else "",
                 f"trained on {self.trained_on}" if self.trained_on else ""]
        inner = ", ".join(p for p in parts if p)
        return f"{self.name} ({inner})" if inner else self.name

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], name: str,
                      sha256: str | None = None) -> ModelSpec:
        """From an artefact's evad metadata (ONNX ``evad.*`` props or an engine's sidecar).

        Raises:
            BackendError: a key is missing, of the wrong type or out of range (named).
        """
        def bad(key: str, why: str) -> BackendError:
            return BackendError(f"{name} has broken evad metadata: {key} {why}; re-export it "
                                "with evad-export")

        if not isinstance(meta, dict):
            raise bad("(all)", "is not a mapping")
        missing = [k for k in _SPEC_KEYS if k not in meta]
        if missing:
            raise bad(", ".join(missing), "missing")

        def count(key: str, lo: int = 1, hi: int = 1 << 16) -> int:
            v = meta[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise bad(key, f"= {v!r} is not an integer in {lo}..{hi}")
            return v

        size = meta["input_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16
                for v in size)):
            raise bad("input_size", f"= {size!r} is not two positive integers")

        def triple(key: str, positive: bool) -> tuple[float, float, float]:
            v = meta[key]
            ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                and (x > 0 or not positive) for x in v)
            if not ok:
                raise bad(key, f"= {v!r} is not three finite numbers"
                          + (" > 0" if positive else ""))
            return (float(v[0]), float(v[1]), float(v[2]))

        thr = meta["person_threshold"]
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1:
            raise bad("person_threshold", f"= {thr!r} is not a number in [0, 1]")
        labels = meta["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise bad("labels", "is not a list of names")
        preset = meta.get("preset_name", "")
        trained = meta.get("trained_on", "")
        if not isinstance(preset, str) or not isinstance(trained, str):
            raise bad("preset_name / trained_on", "is not text")
        # exports made before these keys: the demo preset was the only synthetic one
        synthetic = meta.get("synthetic_only", preset == "demo" and "random_seed" not in meta)
        stored = meta.get("preset")
        grid: dict[str, Any] = stored if isinstance(stored, dict) else {}
        patch, tubelet = grid.get("patch_size", 16), grid.get("tubelet_size", 2)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                   for v in (patch, tubelet)):
            raise bad("preset.patch_size / tubelet_size", "is not a positive integer")
        return cls(name, (size[0], size[1]), count("num_frames"), count("frame_stride"),
                   count("short_side"), count("max_long_side"), triple("mean", False),
                   triple("std", True), float(thr), labels, sha256, preset, trained,
                   bool(synthetic), patch, tubelet)


_SPEC_KEYS = ("input_size", "num_frames", "frame_stride", "short_side", "max_long_side",
              "mean", "std", "person_threshold", "labels")


# -- the one table of backend x precision x device ------------------------------------------

#: the model file a backend runs from, by its flag: ``--engine``, ``--onnx``, ``--ckpt`` (a
#: checkpoint, or a torch model in memory)
ModelFile = Literal["engine", "onnx", "ckpt"]
Device = Literal["cuda", "cpu"]


@dataclass(frozen=True)
class BackendRow:
    """One backend on one device: what it runs from and at which precisions.

    backend: the ``--backend`` name. device: where it computes. model: the model file it needs
    (:data:`ModelFile`). precisions: what it computes in. set_at: ``run`` (``--precision`` picks
    one when the runner opens) or ``build`` (fixed when the model file is made: a TensorRT
    engine's ``evad-build-engine --precision``; a run takes the engine's own, so the run flag
    must stay at its default ``fp32``). auto: the ``--precision`` values at which ``auto`` tries
    this row (OpenVINO fp32 runs when named, but ``auto`` takes ONNX Runtime at fp32).
    torch_free: runs where torch is not installed.
    """

    backend: str
    device: Device
    model: ModelFile
    precisions: tuple[str, ...]
    set_at: Literal["run", "build"]
    auto: tuple[str, ...]
    torch_free: bool

    @property
    def run_precisions(self) -> tuple[str, ...]:
        """What ``--precision`` may be when this row opens (``fp32`` = as built, for ``build``)."""
        return self.precisions if self.set_at == "run" else ("fp32",)


#: ``int8`` is the calibrated Q/DQ ONNX of ``evad-export --int8 --calib DATA``: the file is
#: int8 (its metadata says so), the runner only runs it; ``auto`` takes ONNX Runtime for it.
#: Every backend x device, fastest first: ``auto`` takes the first row whose model file is at
#: hand, that runs the asked precision (its ``auto`` column) and can run here. docs/design.md
#: ("One runner interface") shows it as a table; tests/test_backend_table.py checks that every
#: command's choices, the engine builder's precisions and the benchmark paths come from it.
BACKEND_TABLE: tuple[BackendRow, ...] = (
    BackendRow("trt", "cuda", "engine", ("fp32", "tf32", "fp16", "bf16"), "build", ("fp32",),
               True),
    BackendRow("ort", "cuda", "onnx", ("fp32",), "run", ("fp32",), True),
    BackendRow("torch", "cuda", "ckpt", ("fp32", "bf16"), "run", ("fp32", "bf16"), False),
    BackendRow("openvino", "cpu", "onnx", ("fp32", "bf16", "bf16-int8w", "int8"), "run",
               ("bf16", "bf16-int8w"), True),
    BackendRow("ort", "cpu", "onnx", ("fp32", "int8"), "run", ("fp32", "int8"), True),
    BackendRow("torch", "cpu", "ckpt", ("fp32", "bf16"), "run", ("fp32", "bf16"), False),
)


def _union(groups: list[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for g in groups for x in g))


#: what ``--precision`` takes at run time (the default, fp32, first)
RUN_PRECISIONS = _union([r.precisions for r in BACKEND_TABLE if r.set_at == "run"])
#: what a TensorRT engine is built at (``evad-build-engine --precision``)
ENGINE_PRECISIONS = _union([r.precisions for r in BACKEND_TABLE if r.set_at == "build"])


def backend_choices(models: tuple[ModelFile, ...] = ("engine", "onnx", "ckpt"),
                    auto: bool = True) -> tuple[str, ...]:
    """A command's ``--backend`` choices: ``auto`` (when it offers it), then every backend that
    runs from one of ``models``, in table order."""
    names = _union([(r.backend,) for r in BACKEND_TABLE if r.model in models])
    return ("auto", *names) if auto else names


def precision_choices(backends: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A command's ``--precision`` choices: the run precisions of ``backends`` (default all)."""
    rows = [r for r in BACKEND_TABLE if backends is None or r.backend in backends]
    picked = set(_union([r.run_precisions for r in rows]))
    return tuple(p for p in RUN_PRECISIONS if p in picked)


def backend_row(backend: str, device: Device | None = None) -> BackendRow:
    """The first row of ``backend`` (on ``device`` when given).

    Raises:
        BackendError: no such backend (on that device), naming the choices.
    """
    for r in BACKEND_TABLE:
        if r.backend == backend and device in (None, r.device):
            return r
    on = f" on {device}" if device else ""
    where = ", ".join(f"{r.backend} ({r.device})" for r in BACKEND_TABLE)
    raise BackendError(f"no backend {backend!r}{on}; the backends are {where}")


def model_flag(backend: str) -> ModelFile:
    """The model file ``backend`` runs from (``engine``, ``onnx``, ``ckpt``)."""
    return backend_row(backend).model


def runs_at(backend: str, precision: str) -> bool:
    """Whether ``--backend backend --precision precision`` can be asked for."""
    return any(precision in r.run_precisions for r in BACKEND_TABLE if r.backend == backend)


# -- the interface ---------------------------------------------------------------------------


@runtime_checkable
class Runner(Protocol):
    """A model that runs clips; closed by ``close()`` or a ``with`` block.

    name: which backend and device, for summaries (``ort (CPUExecutionProvider)``).
    backend: its :data:`BACKEND_TABLE` name (``trt``, ``ort``, ``openvino``, ``torch``).
    precision: what it computes in (an engine's: the one it was built with).
    spec: what the model expects (:class:`ModelSpec`).
    metadata: the artefact's evad metadata (an ONNX file's ``evad.*`` keys, an engine's merged
        sidecar; for the torch model the same keys it has: ``preset``, ``labels``, ...);
        ``evad.export.metadata.preset_of(runner.metadata)`` is its preset.
    on_gpu: whether it computes on a GPU (the runtime's default batch size follows it).
    """

    name: str
    backend: str
    precision: str
    spec: ModelSpec
    metadata: dict[str, Any]
    on_gpu: bool

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 unpadded (h, w) -> every
        output by name (see the module docstring), numpy, batch B."""
        ...

    def close(self) -> None:
        """Free what the backend holds (idempotent); the runner cannot run afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


def _shape(dims: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("B" if i == 0 else "any" if d is None else str(d)
                           for i, d in enumerate((0, *dims))) + ")"


def check_inputs(clip: np.ndarray, image_size: np.ndarray, clip_shape: tuple[int | None, ...],
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a batch against the model's signature, as Polygraphy's ``infer()`` checks feeds
    against ``get_input_metadata()``; return both C-contiguous as the graph's types.

    Args:
        clip: (B, 3, T, H, W), any float dtype (cast to float32).
        image_size: (B, 2), any integer dtype (cast to int64): each clip's unpadded (h, w),
            pixels, within 1..the clip's H and W.
        clip_shape: the model's clip shape without the batch, (3, T, H, W); None where it takes
            any size (the torch reference's H and W).
        what: the model, for the message (``ort (CPUExecutionProvider) on ONNX model x.onnx``).

    Raises:
        BackendError: one line naming the input, what it got and what the model takes.
    """
    clip, image_size = np.asarray(clip), np.asarray(image_size)
    want = f"{what} takes clip {_shape(clip_shape)} float32 and image_size (B, 2) int64"
    if clip.dtype.kind != "f":
        raise BackendError(f"clip is {clip.dtype}, not float: {want}")
    fits = clip.ndim == len(clip_shape) + 1 and clip.shape[0] >= 1 and all(
        d is None or g == d for g, d in zip(clip.shape[1:], clip_shape, strict=True))
    if not fits:
        raise BackendError(f"clip of shape {tuple(clip.shape)} does not fit: {want}")
    if image_size.dtype.kind not in "iu":
        raise BackendError(f"image_size is {image_size.dtype}, not an integer: {want}")
    if image_size.shape != (clip.shape[0], 2):
        raise BackendError(f"image_size of shape {tuple(image_size.shape)} for {clip.shape[0]} "
                           f"clip(s): {want}")
    # The graph scales boxes by image_size and trusts it: a value outside 1..the clip's padded
    # H / W gives boxes out of the frame without a word, so every backend refuses it here.
    h, w = clip.shape[-2], clip.shape[-1]
    bad = np.flatnonzero((image_size[:, 0] < 1) | (image_size[:, 0] > h) |
                         (image_size[:, 1] < 1) | (image_size[:, 1] > w))
    if bad.size:
        i = int(bad[0])
        raise BackendError(f"image_size[{i}] = {image_size[i].tolist()} (h, w) is outside the "
                           f"clip: each value must be 1..{h} (h) and 1..{w} (w), the unpadded "
                           f"size of a clip padded to {h}x{w}")
    return (np.ascontiguousarray(clip, dtype=np.float32),
            np.ascontiguousarray(image_size, dtype=np.int64))


class RunnerBase:
    """What every runner shares: the input check (:func:`check_inputs`) before the backend
    runs, a one-line error after ``close()``, and ``with`` closing it.

    A runner sets ``name``, ``backend``, ``precision``, ``spec``, ``metadata``, ``on_gpu`` and
    ``clip_shape`` (the model's clip without the batch, None where any size runs), and
    implements :meth:`_infer` (the checked batch -> outputs) and :meth:`_release`.
    """

    name: str
    backend: str
    precision: str
    spec: ModelSpec
    metadata: dict[str, Any]
    on_gpu: bool
    clip_shape: tuple[int | None, ...]
    #: set before anything that can fail, so a runner whose constructor failed half way closes
    _closed: bool = False

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w) -> outputs by name.

        Raises:
            BackendError: the runner was closed, or the inputs do not fit the model (one line).
        """
        if self._closed:
            raise BackendError(f"{self.name} on {self.spec.name} was closed: open the model "
                               "again to run it")
        clip, image_size = check_inputs(clip, image_size, self.clip_shape,
                                        f"{self.name} on {self.spec.name}")
        return self._infer(clip, image_size)

    def _infer(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the backend's resources (called once, by :meth:`close`)."""

    def close(self) -> None:
        """Free what the backend holds (idempotent); calling the runner afterwards is a
        one-line BackendError."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
