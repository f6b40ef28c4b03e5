"""A TensorRT engine as a :class:`evad.runner.Runner`.

Device memory, the stream and pinned host buffers come from torch (no pycuda). Every buffer is
allocated once, for the profile's largest batch, and reused: a call copies the clips into the
pinned input buffer, runs one ``execute_async_v3`` on one CUDA stream, copies the outputs back
into pinned host buffers and waits once. Batches are padded up to the profile's minimum and
split at its maximum. Needs no onnx: the engine's metadata is its JSON sidecar.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.command import check_input_file
from evad.engines.environment import running_environment
from evad.engines.metadata import check_engine_metadata, merged_metadata, read_engine_metadata
from evad.errors import BackendError, EvadError
from evad.hashing import file_sha256
from evad.lazy import available, lazy_import
from evad.plugins import PluginError, tensorrt
from evad.plugins import load as load_plugins
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, INPUTS, ModelSpec

if TYPE_CHECKING:
    import tensorrt as trt
    import torch
else:
    torch = lazy_import("torch", "pip install torch")

__all__ = ["TrtRunner"]


def _torch_dtype(trt_module: Any, dtype: trt.DataType) -> torch.dtype:
    table = {trt_module.float32: torch.float32, trt_module.float16: torch.float16,
             trt_module.int64: torch.int64, trt_module.int32: torch.int32,
             trt_module.bfloat16: torch.bfloat16}
    if dtype not in table:
        raise EvadError(f"engine tensor type {dtype} is not one evad engines use")
    return table[dtype]


def _check_can_run() -> None:
    """What every engine needs before its file is even read: TensorRT and a CUDA GPU.

    Raises:
        BackendError: naming the missing piece and the way out.
    """
    try:
        trt_module = tensorrt()
    except PluginError as e:
        raise BackendError(f"the trt backend needs TensorRT ({e}); or use --backend ort") from e
    if not hasattr(trt_module, "Runtime"):
        raise BackendError("the trt backend needs TensorRT's runtime: pip install tensorrt; or "
                           "use --backend ort")
    if not (available(torch) and torch.cuda.is_available()):
        raise BackendError("the trt backend needs a CUDA GPU (torch sees none); use --backend "
                           "ort or torch")


class TrtRunner:
    """A deserialized engine, checked against this GPU and TensorRT before use.

    Args:
        path: the ``.engine`` file (its ``.engine.json`` sidecar must sit beside it).
        plugins: ``cpp`` or ``python``; default: the set the engine was built with.

    Raises:
        EvadError: TensorRT, a GPU or the plugins are missing, or the engine does not match this
            machine (``EngineMismatchError``).
    """

    def __init__(self, path: str | os.PathLike, plugins: str | None = None) -> None:
        self.path = check_input_file(path, "TensorRT engine")
        _check_can_run()
        #: the ``.engine.json`` sidecar as written by the builder
        self.engine_metadata = read_engine_metadata(self.path)
        #: the ONNX export's metadata updated with what the engine is
        self.metadata = merged_metadata(self.engine_metadata)
        self.spec = ModelSpec.from_metadata(self.metadata, f"TensorRT engine {self.path}",
                                            file_sha256(self.path))
        trt_module = load_plugins(plugins or self.engine_metadata.get("plugins", "cpp"))
        if not hasattr(trt_module, "Runtime"):
            raise BackendError("the TensorRT runtime is missing: pip install tensorrt")
        check_engine_metadata(self.engine_metadata, running_environment(trt_module))
        self._trt = trt_module
        self._logger = trt_module.Logger(trt_module.Logger.WARNING)
        self._runtime = trt_module.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise EvadError(f"TensorRT could not deserialize {self.path}")
        self.engine: trt.ICudaEngine = engine
        self.context: trt.IExecutionContext = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.name = f"trt ({self.engine_metadata.get('precision', 'fp32')})"
        self.on_gpu = True
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        out_mode = trt_module.TensorIOMode.OUTPUT
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == out_mode]
        lo, _, hi = engine.get_tensor_profile_shape(INPUT_CLIP, 0)
        self.batch_min, self.batch_max = int(lo[0]), int(hi[0])
        self._allocate(tuple(int(d) for d in hi))

    def _allocate(self, clip_max: tuple[int, ...]) -> None:
        """Device and pinned host buffers for the largest batch; addresses are set once."""
        ctx, engine = self.context, self.engine
        ctx.set_input_shape(INPUT_CLIP, clip_max)
        ctx.set_input_shape(INPUT_IMAGE_SIZE, (clip_max[0], 2))
        self._dev: dict[str, torch.Tensor] = {}
        self._host: dict[str, torch.Tensor] = {}
        for name in (*INPUTS, *self.output_names):
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            dtype = _torch_dtype(self._trt, engine.get_tensor_dtype(name))
            self._dev[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self._host[name] = torch.empty(shape, dtype=dtype).pin_memory()
            ctx.set_tensor_address(name, self._dev[name].data_ptr())

    def _run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        b = clip.shape[0]
        pad = max(self.batch_min, b)
        host_clip, host_size = self._host[INPUT_CLIP], self._host[INPUT_IMAGE_SIZE]
        host_clip[:b].copy_(torch.from_numpy(clip))
        host_size[:b].copy_(torch.from_numpy(image_size))
        # padded clips repeat the first one (deterministic, finite); their results are dropped
        host_clip[b:pad] = host_clip[:1]
        host_size[b:pad] = host_size[:1]
        try:
            with torch.cuda.stream(self.stream):
                for name in INPUTS:
                    self._dev[name][:pad].copy_(self._host[name][:pad], non_blocking=True)
                if not (self.context.set_input_shape(INPUT_CLIP, (pad, *host_clip.shape[1:]))
                        and self.context.set_input_shape(INPUT_IMAGE_SIZE, (pad, 2))):
                    raise EvadError(f"the engine does not take a batch of {pad} clips of "
                                    f"{tuple(host_clip.shape[1:])}")
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise EvadError("TensorRT execution failed (see its log above)")
                for name in self.output_names:
                    self._host[name][:b].copy_(self._dev[name][:b], non_blocking=True)
        finally:
            # also on failure: queued copies must finish before the pinned buffers are reused
            self.stream.synchronize()
        out = {}
        for name in self.output_names:
            h = self._host[name][:b]
            # a copy: the pinned buffer is overwritten by the next call
            out[name] = (h.float() if h.dtype in (torch.float16, torch.bfloat16)
                         else h.clone()).numpy()
        return out

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w) -> outputs by name."""
        clip = np.ascontiguousarray(clip, dtype=np.float32)
        image_size = np.ascontiguousarray(image_size, dtype=np.int64)
        want = tuple(self._host[INPUT_CLIP].shape[1:])
        if clip.ndim != 5 or clip.shape[1:] != want or clip.shape[0] == 0:
            raise EvadError(f"clip of shape {clip.shape}: this engine takes (B >= 1, *{want})")
        parts = [self._run(clip[i:i + self.batch_max], image_size[i:i + self.batch_max])
                 for i in range(0, clip.shape[0], self.batch_max)]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
