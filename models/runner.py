"""The torch reference as a :class:`evad.runner.Runner`: numpy in, the graph's outputs out.

Opened through ``evad.runtime.backends.open_runner`` (``--ckpt FILE``, or a model in memory);
the clip is checked against the preset (3 channels, its frame count, any H x W) before torch
runs."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from evad.errors import ConfigError
from evad.models.checkpoint import load_checkpoint
from evad.models.evad import EVAD
from evad.models.flops import token_counts
from evad.models.presets import Preset, model_spec, preset_metadata
from evad.runner import (
    OUTPUT_ACTION_PROBS,
    OUTPUT_BOXES,
    OUTPUT_PERSON_SCORES,
    RunnerBase,
    kept_idx_name,
)

__all__ = ["TORCH_PRECISIONS", "TorchRunner", "model_metadata", "pruning_blocks_at"]


def pruning_blocks_at(preset: Preset, height: int, width: int) -> list[int]:
    """The blocks that really prune at a ``height`` x ``width`` input (a keep rate whose count
    rounds up to every token prunes nothing and has no ``kept_idx`` output)."""
    counts = token_counts(preset, height, width)
    return [b for b in range(preset.depth) if counts[b + 1] < counts[b]]


def model_metadata(preset: Preset, precision: str = "fp32",
                   checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """A torch model's equivalent of an export's evad metadata: the keys that do not depend on
    an input size or an export (``preset``, ``labels``, clip and normalisation numbers,
    ``precision``, ``checkpoint_sha256``), under the names ``evad.export.metadata`` gives
    them, so that ``preset_of(runner.metadata)`` is the preset for every backend."""
    return {
        **preset_metadata(preset),
        "precision": precision,
        "checkpoint_sha256": checkpoint_sha256,
    }


#: precision name -> the autocast dtype the torch runner computes in (None: fp32 throughout)
TORCH_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                                   "fp16": torch.float16}


class TorchRunner(RunnerBase):
    """The torch reference, on CUDA when torch sees a GPU (or on ``device``).

    ``close()`` drops the model (and empties torch's CUDA cache when it ran on a GPU).

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
        self.backend = "torch"
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.spec = model_spec(model.preset, name)
        self.metadata = model_metadata(model.preset, precision)
        self.name = f"torch ({self.device.type}" + (f", {precision})" if precision != "fp32"
                                                     else ")")
        self.on_gpu = self.device.type == "cuda"
        # the model takes any H x W (it pads to multiples of 32 itself)
        self.clip_shape = (3, model.preset.num_frames, None, None)

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
        runner.metadata["checkpoint_sha256"] = meta["sha256"]
        return runner

    def _infer(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (checked) -> the graph's
        outputs."""
        dtype = TORCH_PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype,
                                                    enabled=dtype is not None):
            out = self.model(torch.from_numpy(clip).to(self.device),
                             torch.from_numpy(image_size).to(self.device))
        result = {OUTPUT_BOXES: out.boxes.float().cpu().numpy(),
                  OUTPUT_PERSON_SCORES: out.person_scores.float().cpu().numpy(),
                  OUTPUT_ACTION_PROBS: torch.sigmoid(out.action_logits).float().cpu().numpy()}
        blocks = pruning_blocks_at(self.model.preset, clip.shape[-2], clip.shape[-1])
        for block, kept in zip(blocks, out.kept_indices, strict=True):
            result[kept_idx_name(block)] = kept.cpu().numpy()
        return result

    def _release(self) -> None:
        self.__dict__.pop("model", None)
        if self.on_gpu:
            torch.cuda.empty_cache()
