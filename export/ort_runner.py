"""ONNX Runtime as a :class:`evad.runner.Runner`: an exported EVAD graph, inputs by name,
every output as a numpy array. Torch-free; onnxruntime loads on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evad.errors import BackendError
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, ModelSpec

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu for CUDA)")

__all__ = ["CPU", "CUDA", "OrtRunner", "available_providers"]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    """ONNX Runtime execution providers of this install, preferred first (CUDA, then CPU).

    Raises:
        MissingDependency: onnxruntime is not installed.
    """
    have = ort.get_available_providers()
    return [p for p in (CUDA, CPU) if p in have]


class OrtRunner:
    """An exported model in ONNX Runtime.

    Args:
        path: the ``.onnx`` from evad-export (external data beside it is found by onnxruntime).
        cuda: None = the CUDA provider when this install has it, else CPU; True = require it;
            False = CPU only.
        threads: intra-op threads (0 = onnxruntime's default).
        shrink_arena: give the CPU arena back after every run. ORT's arena keeps the largest
            activations of every run and grows by doubling (288x512 tiny settled at 1.7 GB RSS
            on a long video; shrunk, ~0.2 GB steady, 0.7 GB peak), for one re-allocation per run:
            right for a long video, not for a benchmark.

    Raises:
        EvadError: the file is missing, not an evad export, or onnxruntime cannot load it;
        BackendError: CUDA asked for and not available.
    """

    def __init__(self, path: str | os.PathLike, cuda: bool | None = None, threads: int = 0,
                 shrink_arena: bool = False) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.spec = ModelSpec.from_metadata(self.metadata, f"ONNX model {self.path}")
        providers = available_providers()
        if cuda is False:
            providers = [CPU]
        elif cuda and CUDA not in providers:
            raise BackendError("onnxruntime has no CUDA provider here: pip install "
                               "onnxruntime-gpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own classes: one line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"onnxruntime cannot load {self.path}: {first}") from e
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        if cuda and self.providers[0] != CUDA:  # onnxruntime falls back to CPU silently
            raise BackendError("onnxruntime's CUDA provider is installed but did not load (its "
                               "CUDA/cuDNN libraries?); use the CPU provider or fix the install")
        self.name = f"ort ({self.providers[0]})"
        self.on_gpu = self.providers[0] != CPU
        self.run_options = ort.RunOptions()
        if shrink_arena:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                                  "cpu:0")

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w) -> outputs by name."""
        feeds = {INPUT_CLIP: np.ascontiguousarray(clip, dtype=np.float32),
                 INPUT_IMAGE_SIZE: np.ascontiguousarray(image_size, dtype=np.int64)}
        outs = self.session.run(None, feeds, self.run_options)
        return dict(zip(self.output_names, outs, strict=True))
