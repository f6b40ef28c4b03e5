"""A TensorRT engine as a :class:`evad.runner.Runner`.

Device memory, the stream and pinned host buffers come from cuda-python
(:mod:`evad.engines.cuda_memory`), not torch: a TensorRT deployment image has no torch. Every
buffer is allocated once, for the profile's largest batch, and reused: a call copies the clips
into the pinned input buffer, queues the host-to-device copies, one ``execute_async_v3`` and the
device-to-host copies on one CUDA stream, and waits once. Batches are padded up to the profile's
minimum and split at its maximum. ``close()`` (or a ``with`` block) frees the device memory,
the pinned memory and the stream. Needs no onnx: the engine's metadata is its JSON sidecar.
Opened through ``evad.runtime.backends.open_runner``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.command import check_input_file
from evad.engines import cuda_memory
from evad.engines.cuda_memory import DeviceBuffer, PinnedBuffer, Stream
from evad.engines.environment import running_environment
from evad.engines.metadata import check_engine_metadata, merged_metadata, read_engine_metadata
from evad.errors import BackendError, EvadError
from evad.hashing import file_sha256
from evad.lazy import available
from evad.plugins import PluginError, tensorrt
from evad.plugins import load as load_plugins
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, INPUTS, ModelSpec, RunnerBase

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["TrtRunner"]

#: numpy has no bfloat16: a bf16 tensor's host buffer holds its bits as uint16
_BF16_BITS = np.dtype(np.uint16)


def _host_dtype(trt_module: Any, dtype: trt.DataType) -> tuple[np.dtype, bool]:
    """(numpy dtype of the host buffer, whether it holds bf16 bits) for an engine tensor type.

    bool, int8 and uint8 are here because a layerwise-debug engine may mark any tensor as output.
    """
    if dtype == trt_module.bfloat16:
        return _BF16_BITS, True
    table = {trt_module.float32: np.float32, trt_module.float16: np.float16,
             trt_module.int64: np.int64, trt_module.int32: np.int32, trt_module.int8: np.int8,
             trt_module.uint8: np.uint8, trt_module.bool: np.bool_}
    if dtype not in table:
        raise EvadError(f"engine tensor type {dtype} is not one evad engines use")
    return np.dtype(table[dtype]), False


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32: bf16 is the upper half of a float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


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
    if not available(cuda_memory.cudart):
        raise BackendError("the trt backend needs cuda-python for CUDA memory and streams: pip "
                           "install cuda-bindings; or use --backend ort")
    why = cuda_memory.no_gpu_reason()
    if why is not None:
        raise BackendError(f"the trt backend needs a CUDA GPU ({why}); use --backend ort or "
                           "torch")


class TrtRunner(RunnerBase):
    """A deserialized engine, checked against this GPU and TensorRT before use.

    Holds device and pinned host memory, an execution context and a CUDA stream until
    :meth:`close` (also as ``with open_runner("trt", engine=path)[0] as runner:``); unclosed,
    they are freed when the runner is garbage collected.

    Args:
        path: the ``.engine`` file (its ``.engine.json`` sidecar must sit beside it).
        plugins: ``cpp`` or ``python``; default: the set the engine was built with.

    Raises:
        EvadError: TensorRT, cuda-python, a GPU or the plugins are missing, or the engine does
            not match this machine (``EngineMismatchError``); a CUDA call failed (``CudaError``,
            naming the call).
    """

    def __init__(self, path: str | os.PathLike, plugins: str | None = None) -> None:
        # close() must work on a runner whose __init__ failed half way
        self._dev: dict[str, DeviceBuffer] = {}
        self._host: dict[str, PinnedBuffer] = {}
        self._bf16: set[str] = set()
        self._stream: Stream | None = None
        self._closed = False
        self.backend = "trt"
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
        #: the precision the engine was built with (evad-build-engine --precision)
        self.precision = str(self.engine_metadata.get("precision", "fp32"))
        self.name = f"trt ({self.precision})"
        self.on_gpu = True
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        out_mode = trt_module.TensorIOMode.OUTPUT
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == out_mode]
        lo, _, hi = engine.get_tensor_profile_shape(INPUT_CLIP, 0)
        self.batch_min, self.batch_max = int(lo[0]), int(hi[0])
        self.clip_shape = tuple(int(d) for d in hi[1:])
        try:
            self._stream = Stream()
            self._allocate(tuple(int(d) for d in hi))
        except BaseException:
            self.close()
            raise

    def _allocate(self, clip_max: tuple[int, ...]) -> None:
        """Device and pinned host buffers for the largest batch; addresses are set once."""
        ctx, engine = self.context, self.engine
        ctx.set_input_shape(INPUT_CLIP, clip_max)
        ctx.set_input_shape(INPUT_IMAGE_SIZE, (clip_max[0], 2))
        for name in (*INPUTS, *self.output_names):
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EvadError(f"engine tensor {name} has a data-dependent shape {shape}: "
                                "evad engines have none")
            dtype, bf16 = _host_dtype(self._trt, engine.get_tensor_dtype(name))
            if bf16 and name in INPUTS:
                raise EvadError(f"engine input {name} is bf16: evad engines take float32 clips "
                                "and int64 sizes; rebuild it with evad-build-engine")
            if bf16:
                self._bf16.add(name)
            self._host[name] = PinnedBuffer(shape, dtype)
            self._dev[name] = DeviceBuffer(self._host[name].nbytes)
            if not ctx.set_tensor_address(name, self._dev[name].ptr):
                raise EvadError(f"TensorRT refused the address of tensor {name}")

    def _rows(self, name: str, n: int) -> int:
        """Bytes of the first ``n`` batch rows of a tensor (C order: a prefix of the buffer)."""
        host = self._host[name].array
        return host.nbytes // max(host.shape[0], 1) * n

    def _run(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        assert self._stream is not None  # set in __init__, cleared only by close()
        stream = self._stream
        b = clip.shape[0]
        pad = max(self.batch_min, b)
        host_clip = self._host[INPUT_CLIP].array
        host_size = self._host[INPUT_IMAGE_SIZE].array
        host_clip[:b] = clip  # casts to the engine's input types
        host_size[:b] = image_size
        # padded clips repeat the first one (deterministic, finite); their results are dropped
        host_clip[b:pad] = host_clip[:1]
        host_size[b:pad] = host_size[:1]
        try:
            for name in INPUTS:
                cuda_memory.copy_to_device(self._dev[name], self._host[name],
                                           self._rows(name, pad), stream)
            if not (self.context.set_input_shape(INPUT_CLIP, (pad, *host_clip.shape[1:]))
                    and self.context.set_input_shape(INPUT_IMAGE_SIZE, (pad, 2))):
                raise EvadError(f"the engine does not take a batch of {pad} clips of "
                                f"{tuple(host_clip.shape[1:])}")
            if not self.context.execute_async_v3(stream.handle):
                raise EvadError("TensorRT execution failed (see its log above)")
            # this run's shape of each output: the batch first (the model's outputs), or any
            # shape (a tensor marked for layer-by-layer debugging, e.g. (20 * batch, C))
            shapes = {name: tuple(int(d) for d in self.context.get_tensor_shape(name))
                      for name in self.output_names}
            for name in self.output_names:
                host = self._host[name].array
                batch_major = bool(shapes[name]) and shapes[name][0] == pad
                nbytes = (self._rows(name, b) if batch_major else
                          int(np.prod(shapes[name], dtype=np.int64)) * host.itemsize)
                cuda_memory.copy_to_host(self._host[name], self._dev[name], nbytes, stream)
        finally:
            # also on failure: queued copies must finish before the pinned buffers are reused
            stream.synchronize()
        out = {}
        for name in self.output_names:
            shape, flat = shapes[name], self._host[name].array.reshape(-1)
            whole = flat[:int(np.prod(shape, dtype=np.int64))].reshape(shape)
            h = whole[:b] if shape and shape[0] == pad else whole
            # always a copy: the pinned buffer is overwritten by the next call
            if name in self._bf16:
                out[name] = _bf16_to_float32(h)
            elif h.dtype == np.float16:
                out[name] = h.astype(np.float32)
            else:
                out[name] = h.copy()
        return out

    def _infer(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w), checked against the
        profile's clip shape -> outputs by name, each (B, ...); float16 and bf16 outputs come
        back as float32."""
        parts = [self._run(clip[i:i + self.batch_max], image_size[i:i + self.batch_max])
                 for i in range(0, clip.shape[0], self.batch_max)]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def _release(self) -> None:
        """Free the execution context, device memory, pinned memory and the stream (once, from
        ``close()``).

        Raises:
            CudaError: a free failed (everything else is still freed first).
        """
        # the context first: it holds the tensor addresses and its own activation memory
        self.__dict__.pop("context", None)
        errors: list[BaseException] = []
        owned = [*self._dev.values(), *self._host.values()]
        if self._stream is not None:
            owned.append(self._stream)
        for res in owned:
            try:
                res.close()
            except cuda_memory.CudaError as e:
                errors.append(e)
        self._dev, self._host, self._stream = {}, {}, None
        self.__dict__.pop("engine", None)
        if errors:
            raise errors[0]
