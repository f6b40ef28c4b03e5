"""A thin ONNX Runtime session for exported EVAD graphs: inputs by name, outputs as a dict."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evad.errors import EvadError

__all__ = ["OnnxRuntimeModel", "available_providers"]


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise EvadError("onnxruntime is not installed: pip install onnxruntime "
                        "(or onnxruntime-gpu for CUDA)") from e
    return onnxruntime


def available_providers() -> list[str]:
    """ONNX Runtime execution providers of this install, preferred first (CUDA, then CPU)."""
    have = _ort().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxRuntimeModel:
    """Run an exported model: ``model(clip, image_size) -> {output name: array}``.

    Args:
        path: the ``.onnx`` file (external data beside it is found by onnxruntime).
        providers: execution providers in order of preference; default CUDA when present, else
            CPU.
        threads: intra-op threads (0 = onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None,
                 threads: int = 0) -> None:
        ort = _ort()
        path = Path(path)
        if not path.is_file():
            raise EvadError(f"ONNX file {path} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=providers or available_providers())
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EvadError(f"onnxruntime cannot load {path}: {first}") from e
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def __call__(self, clip: np.ndarray, image_size: np.ndarray,
                 run_options=None) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w) -> outputs by name.

        ``run_options``: an ``onnxruntime.RunOptions`` (e.g. to shrink the memory arena)."""
        feeds = {"clip": np.ascontiguousarray(clip, dtype=np.float32),
                 "image_size": np.ascontiguousarray(image_size, dtype=np.int64)}
        outs = self.session.run(None, feeds, run_options)
        return dict(zip(self.output_names, outs, strict=True))
