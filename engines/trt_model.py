"""Run an EVAD TensorRT engine: ``TensorRTModel(path)(clip, image_size) -> {name: array}``,
the call interface of :class:`evad.export.ort_session.OnnxRuntimeModel`.

Device memory, the stream and pinned host buffers come from torch (no pycuda); inference is one
``execute_async_v3`` per batch on one CUDA stream with tensor addresses set from torch tensors.
Batches are padded up to the profile's minimum and split at its maximum.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from evad.engines.builder import check_engine_metadata, read_engine_metadata, running_environment
from evad.errors import EvadError

__all__ = ["TensorRTModel", "merged_metadata"]


def merged_metadata(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The ONNX export's metadata (the keys of ``evad.export.read_metadata``) updated with what
    the engine is (precision, TensorRT version, GPU, compute capability, plugins, batch profile,
    ONNX hash): what the runtime reads from ``TensorRTModel.metadata``."""
    engine = {k: v for k, v in sidecar.items() if k not in ("onnx_metadata", "format_version")}
    return {**sidecar.get("onnx_metadata", {}), **engine}


class TensorRTModel:
    """A deserialized engine, checked against this GPU and TensorRT before use.

    Args:
        path: the ``.engine`` file (its ``.engine.json`` sidecar must sit beside it).
        plugins: ``cpp`` or ``python``; default: the set the engine was built with.

    Raises:
        EvadError: TensorRT/GPU/plugins missing, or the engine does not match this machine.
    """

    def __init__(self, path: str | os.PathLike, plugins: str | None = None) -> None:
        import torch

        from evad.plugins import load

        self.path = Path(path)
        #: the ``.engine.json`` sidecar as written by the builder
        self.engine_metadata = read_engine_metadata(self.path)
        #: the ONNX export's metadata (same keys as ``evad.export.read_metadata``) updated with
        #: what the engine is: precision, TensorRT version, GPU, plugins, batch profile
        self.metadata = merged_metadata(self.engine_metadata)
        trt = load(plugins or self.engine_metadata.get("plugins", "cpp"))
        if not hasattr(trt, "Runtime"):
            raise EvadError("TensorRT runtime missing: pip install tensorrt")
        check_engine_metadata(self.engine_metadata, running_environment(trt))
        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EvadError(f"TensorRT could not deserialize {self.path}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.OUTPUT
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        lo, _, hi = self.engine.get_tensor_profile_shape("clip", 0)
        self.batch_min, self.batch_max = int(lo[0]), int(hi[0])

    def _dtype(self, name: str):
        trt, torch = self._trt, self._torch
        return {trt.float32: torch.float32, trt.float16: torch.float16,
                trt.int64: torch.int64, trt.int32: torch.int32,
                trt.bfloat16: torch.bfloat16}[self.engine.get_tensor_dtype(name)]

    def _run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        b = clip.shape[0]
        pad = max(self.batch_min, b)
        # Pinned host buffers: the copies overlap with nothing else but stay truly async.
        host_clip = torch.zeros((pad, *clip.shape[1:]), dtype=torch.float32).pin_memory()
        host_size = torch.zeros((pad, 2), dtype=torch.int64).pin_memory()
        host_clip[:b] = torch.from_numpy(clip)
        host_size[:b] = torch.from_numpy(image_size)
        host_size[b:] = host_size[:1]  # padded clips get a valid size; results are dropped
        with torch.cuda.stream(self.stream):
            dev = {"clip": host_clip.to("cuda", non_blocking=True),
                   "image_size": host_size.to("cuda", non_blocking=True)}
            for name, t in dev.items():
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            outs: dict[str, Any] = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EvadError("TensorRT execution failed (see its log above)")
            host = {n: torch.empty(t.shape, dtype=t.dtype).pin_memory() for n, t in outs.items()}
            for n, t in outs.items():
                host[n].copy_(t, non_blocking=True)
        self.stream.synchronize()
        return {n: h[:b].float().numpy() if h.dtype in (torch.float16, torch.bfloat16)
                else h[:b].numpy() for n, h in host.items()}

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w) -> outputs by name."""
        clip = np.ascontiguousarray(clip, dtype=np.float32)
        image_size = np.ascontiguousarray(image_size, dtype=np.int64)
        parts = [self._run(clip[i:i + self.batch_max], image_size[i:i + self.batch_max])
                 for i in range(0, clip.shape[0], self.batch_max)]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
