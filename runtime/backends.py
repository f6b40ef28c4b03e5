"""Inference backends behind one small interface: ``run(clip, image_size) -> outputs``.

Every backend returns numpy arrays: ``boxes`` (B, n, 4) x1y1x2y2 in the resized, unpadded
input's pixels, ``person_scores`` (B, n) and ``action_probs`` (B, n, classes), sigmoid applied.
``ModelSpec`` is what the runtime reads from the artefact's metadata (input size, frames,
normalisation, thresholds, labels), so no number is repeated here.

Heavy dependencies load lazily: torch only for the torch backend, TensorRT only for ``trt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evad.errors import BackendError, EvadError

__all__ = [
    "BACKENDS",
    "Backend",
    "ModelSpec",
    "OrtBackend",
    "TorchBackend",
    "TrtBackend",
    "create_backend",
    "trt_model_class",
]

BACKENDS = ("auto", "trt", "ort", "torch")


@dataclass(frozen=True)
class ModelSpec:
    """The numbers a model was trained and exported with.

    input_size: fixed (H, W) input pixels of an export or engine; None for the torch reference.
    num_frames, frame_stride: the clip (16 frames, every 4th).
    short_side, max_long_side: resize targets, pixels.
    mean, std: normalisation, 0..1 scale, RGB.
    person_threshold: the official person score threshold.
    labels: action names, output i is action id i + 1.
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

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], name: str) -> ModelSpec:
        """From ``evad.export.read_metadata`` (or an engine's sidecar with the same keys)."""
        try:
            h, w = meta["input_size"]
            return cls(name, (int(h), int(w)), int(meta["num_frames"]),
                       int(meta["frame_stride"]), int(meta["short_side"]),
                       int(meta["max_long_side"]), tuple(meta["mean"]), tuple(meta["std"]),
                       float(meta["person_threshold"]), list(meta["labels"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BackendError(f"{name} has incomplete evad metadata ({e}): re-export it with "
                               "evad-export") from e

    @classmethod
    def from_preset(cls, preset: Any, name: str) -> ModelSpec:
        """From a ``evad.models.Preset`` (the torch backend: any input size)."""
        from evad.models.labels import label_names

        return cls(name, None, preset.num_frames, preset.frame_stride, preset.short_side,
                   preset.max_long_side, tuple(preset.mean), tuple(preset.std),
                   preset.person_threshold, label_names(preset.num_classes))


class Backend(Protocol):
    """What the runtime calls. ``name`` says which backend and device (for the summary);
    ``on_gpu`` picks the default batch size."""

    name: str
    spec: ModelSpec
    on_gpu: bool

    def run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 unpadded (h, w) -> boxes
        (B, n, 4) input pixels, person_scores (B, n), action_probs (B, n, C)."""
        ...


class OrtBackend:
    """ONNX Runtime: CUDA execution provider when this install has it, else CPU.

    Args:
        path: an ``.onnx`` written by ``evad-export``.
        cuda: None = CUDA when available; True = require it; False = CPU only.
        threads: intra-op threads (0 = onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, cuda: bool | None = None,
                 threads: int = 0) -> None:
        from evad.export.metadata import read_metadata
        from evad.export.ort_session import OnnxRuntimeModel, available_providers

        path = Path(path)
        self.spec = ModelSpec.from_metadata(read_metadata(path), f"ONNX model {path}")
        providers = available_providers()
        if cuda is False:
            providers = ["CPUExecutionProvider"]
        elif cuda and "CUDAExecutionProvider" not in providers:
            raise BackendError("onnxruntime has no CUDA provider here: pip install "
                               "onnxruntime-gpu")
        self.model = OnnxRuntimeModel(path, providers=providers, threads=threads)
        self.name = f"ort ({self.model.providers[0]})"
        self.on_gpu = self.model.providers[0] != "CPUExecutionProvider"
        # ORT's CPU arena keeps the largest activations of every run and grows by doubling:
        # 288x512 tiny settled at 1.7 GB RSS on a long video. Shrinking it after each run keeps
        # the steady state at ~0.2 GB (peak 0.7 GB); the price is one re-allocation per run.
        import onnxruntime

        self.run_options = onnxruntime.RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(clip, image_size, self.run_options)
        return {k: out[k] for k in ("boxes", "person_scores", "action_probs")}


class TorchBackend:
    """The torch reference from a checkpoint, on CUDA when torch sees a GPU."""

    def __init__(self, path: str | os.PathLike, device: str | None = None) -> None:
        import torch

        from evad.models import load_checkpoint

        path = Path(path)
        if not path.is_file():
            raise EvadError(f"checkpoint {path} does not exist")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, meta = load_checkpoint(path)
        self.model = model.to(self.device).eval()
        self.spec = ModelSpec.from_preset(meta["preset"], f"checkpoint {path}")
        self.name = f"torch ({self.device.type})"
        self.on_gpu = self.device.type == "cuda"

    def run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(clip).to(self.device),
                             torch.from_numpy(image_size).to(self.device))
            return {"boxes": out.boxes.float().cpu().numpy(),
                    "person_scores": out.person_scores.float().cpu().numpy(),
                    "action_probs": torch.sigmoid(out.action_logits).float().cpu().numpy()}


class TrtBackend:
    """A TensorRT engine through ``evad.engines.trt_model.TensorRTModel`` (imported lazily).

    The engine's metadata (same keys as the ONNX metadata) comes from the model's ``metadata``
    attribute.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if not path.is_file():
            raise EvadError(f"TensorRT engine {path} does not exist")
        cls = trt_model_class()
        self.model = cls(path)
        meta = getattr(self.model, "metadata", None)
        if not isinstance(meta, dict):
            raise BackendError(f"TensorRT engine {path} carries no evad metadata: rebuild it "
                               "with evad-export")
        self.spec = ModelSpec.from_metadata(meta, f"TensorRT engine {path}")
        self.name = "trt"
        self.on_gpu = True

    def run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(clip, image_size)
        return {k: np.asarray(out[k]) for k in ("boxes", "person_scores", "action_probs")}


def trt_model_class() -> Any:
    """``TensorRTModel``, or BackendError naming what is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise BackendError("the trt backend needs TensorRT: pip install 'evad-deploy[trt]' on "
                           "a machine with an NVIDIA GPU, or use --backend ort") from e
    try:
        from evad.engines.trt_model import TensorRTModel
    except ImportError as e:
        raise BackendError(f"the trt backend is not available in this evad-deploy ({e}); use "
                           "--backend ort") from e
    return TensorRTModel


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _ort_cuda() -> bool:
    try:
        from evad.export.ort_session import available_providers

        return "CUDAExecutionProvider" in available_providers()
    except EvadError:
        return False


def sibling_engine(onnx: Path | None) -> Path | None:
    """An engine built beside an ONNX file (``x.engine`` or ``x.plan`` next to ``x.onnx``) from
    THAT file: an engine whose sidecar records another ONNX hash (the ONNX was re-exported
    since) is stale and not used."""
    if onnx is None:
        return None
    for ext in (".engine", ".plan"):
        p = onnx.with_suffix(ext)
        if p.is_file():
            sidecar = p.with_name(p.name + ".json")
            try:
                recorded = json.loads(sidecar.read_text()).get("onnx_sha256")
            except (OSError, ValueError):
                return None
            from evad.engines.builder import onnx_sha256

            return p if recorded == onnx_sha256(onnx) else None
    return None


def create_backend(kind: str, engine: Path | None = None, onnx: Path | None = None,
                   ckpt: Path | None = None, threads: int = 0) -> tuple[Backend, list[str]]:
    """The backend to run, and notes on why (for ``auto``: what was skipped and why).

    ``auto`` takes the fastest available: a TensorRT engine (given, or beside the ONNX), then
    ONNX Runtime on CUDA, the torch reference on CUDA, ONNX Runtime on CPU, torch on CPU.

    Raises:
        BackendError / EvadError: the named backend cannot run (missing package, missing model
            file, no model for it).
    """
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "trt":
        if engine is None:
            engine = sibling_engine(onnx)
        if engine is None:
            raise BackendError("--backend trt needs an engine: pass --engine FILE")
        return TrtBackend(engine), []
    if kind == "ort":
        if onnx is None:
            raise BackendError("--backend ort needs an ONNX model: pass --onnx FILE")
        return OrtBackend(onnx, threads=threads), []
    if kind == "torch":
        if ckpt is None:
            raise BackendError("--backend torch needs a checkpoint: pass --ckpt FILE")
        return TorchBackend(ckpt), []

    notes: list[str] = []
    eng = engine or sibling_engine(onnx)
    if eng is not None:
        try:
            if not _torch_cuda():
                raise BackendError("no CUDA GPU visible")
            return TrtBackend(eng), notes
        except EvadError as e:
            if engine is not None:  # asked for by name: a mismatched engine is refused
                raise
            notes.append(f"skipped trt ({e})")
    elif onnx is not None or ckpt is not None:
        notes.append("skipped trt (no engine given)")
    ort_cuda, torch_cuda = onnx is not None and _ort_cuda(), ckpt is not None and _torch_cuda()
    if ort_cuda:
        return OrtBackend(onnx, cuda=True, threads=threads), notes  # type: ignore[arg-type]
    if torch_cuda:
        return TorchBackend(ckpt), notes  # type: ignore[arg-type]
    if onnx is not None:
        return OrtBackend(onnx, threads=threads), notes
    if ckpt is not None:
        return TorchBackend(ckpt), notes
    if engine is not None:  # only an engine, and it could not run
        raise BackendError("; ".join(notes) or "the TensorRT engine cannot run here")
    raise BackendError("no model: pass --onnx FILE, --ckpt FILE or --engine FILE")
