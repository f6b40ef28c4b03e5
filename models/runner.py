"""The torch reference as a :class:`evad.runner.Runner`: numpy in, the graph's outputs out."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from evad.errors import ConfigError
from evad.models.checkpoint import load_checkpoint
from evad.models.evad import EVAD
from evad.models.flops import token_counts
from evad.models.labels import SYNTHETIC_PRESETS, label_names, trained_on
from evad.models.presets import Preset
from evad.runner import (
    OUTPUT_ACTION_PROBS,
    OUTPUT_BOXES,
    OUTPUT_PERSON_SCORES,
    ModelSpec,
    kept_idx_name,
)

__all__ = ["TORCH_PRECISIONS", "TorchRunner", "pruning_blocks_at", "spec_of"]


def pruning_blocks_at(preset: Preset, height: int, width: int) -> list[int]:
    """The blocks that really prune at a ``height`` x ``width`` input (a keep rate whose count
    rounds up to every token prunes nothing and has no ``kept_idx`` output)."""
    counts = token_counts(preset, height, width)
    return [b for b in range(preset.depth) if counts[b + 1] < counts[b]]


def spec_of(preset: Preset, name: str, random_weights: bool = False) -> ModelSpec:
    """What the runtime needs of a preset (the torch reference takes any input size)."""
    return ModelSpec(name, None, preset.num_frames, preset.frame_stride, preset.short_side,
                     preset.max_long_side, tuple(preset.mean), tuple(preset.std),
                     preset.person_threshold, label_names(preset.num_classes, preset.labels),
                     None, preset.name, trained_on(preset.name, preset.num_classes,
                                                   random_weights),
                     preset.name in SYNTHETIC_PRESETS and not random_weights,
                     preset.patch_size, preset.tubelet_size)


#: precision name -> the autocast dtype the torch runner computes in (None: fp32 throughout)
TORCH_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                                   "fp16": torch.float16}


class TorchRunner:
    """The torch reference, on CUDA when torch sees a GPU (or on ``device``).

    Args:
        model: an ``EVAD`` (put in eval mode and moved to the device here).
        name: what the model is, for messages (``checkpoint x.pth``).
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        precision: ``"fp32"`` (the reference), or ``"bf16"`` / ``"fp16"`` under torch autocast
            (matrix products and convolutions in that type; the pruning importance, softmax
            and LayerNorm in fp32). fp16 only on CUDA.
    """

    def __init__(self, model: EVAD, name: str = "torch model",
                 device: str | torch.device | None = None, precision: str = "fp32") -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision not in TORCH_PRECISIONS:
            raise ConfigError(f"torch precision {precision!r}: use one of "
                              f"{', '.join(TORCH_PRECISIONS)}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("torch fp16 runs on CUDA only; on a CPU use --precision bf16")
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.spec = spec_of(model.preset, name)
        self.name = f"torch ({self.device.type}" + (f", {precision})" if precision != "fp32"
                                                     else ")")
        self.on_gpu = self.device.type == "cuda"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        precision: str = "fp32") -> TorchRunner:
        """Load a checkpoint (any layout ``load_checkpoint`` reads).

        Raises:
            CheckpointError: the file is missing, unreadable, or not a valid EVAD checkpoint.
        """
        model, meta = load_checkpoint(path)
        runner = cls(model, f"checkpoint {path}", device, precision)
        runner.spec = dataclasses.replace(runner.spec, sha256=meta["sha256"])
        return runner

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 -> the graph's outputs."""
        dtype = TORCH_PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype,
                                                    enabled=dtype is not None):
            out = self.model(torch.from_numpy(np.ascontiguousarray(clip, np.float32))
                             .to(self.device),
                             torch.from_numpy(np.ascontiguousarray(image_size, np.int64))
                             .to(self.device))
        result = {OUTPUT_BOXES: out.boxes.float().cpu().numpy(),
                  OUTPUT_PERSON_SCORES: out.person_scores.float().cpu().numpy(),
                  OUTPUT_ACTION_PROBS: torch.sigmoid(out.action_logits).float().cpu().numpy()}
        blocks = pruning_blocks_at(self.model.preset, clip.shape[-2], clip.shape[-1])
        for block, kept in zip(blocks, out.kept_indices, strict=True):
            result[kept_idx_name(block)] = kept.cpu().numpy()
        return result
