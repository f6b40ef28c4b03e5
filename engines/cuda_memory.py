"""The CUDA runtime calls a TensorRT engine needs, on cuda-python (``cuda.bindings.runtime``).

A TensorRT deployment image (Triton's, a Jetson's) has TensorRT and numpy, not torch: the
runner's device memory, pinned host buffers and stream come from NVIDIA's own CUDA bindings, as
in TensorRT's current Python samples. ``cuda.bindings`` loads on first use
(:func:`evad.lazy.lazy_import`), so this module imports without it.

Every call is made through :func:`call`, which checks the error code that cuda-python returns
first in its result tuple and raises :class:`CudaError` naming the call. Each owned resource
(:class:`DeviceBuffer`, :class:`PinnedBuffer`, :class:`Stream`) is freed once: by ``close()``
(which raises a CUDA error), or, if never closed, when it is garbage collected or at exit
(quietly: there is no caller to tell).
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any

import numpy as np

from evad.errors import BackendError
from evad.lazy import MissingDependency, lazy_import

__all__ = ["CudaError", "DeviceBuffer", "PinnedBuffer", "Stream", "call", "copy_to_device",
           "copy_to_host", "current_device", "device_count", "no_gpu_reason"]

#: the lazily loaded ``cuda.bindings.runtime``; tests replace it with a recording fake
cudart: Any = lazy_import("cuda.bindings.runtime",
                          "pip install cuda-bindings (NVIDIA's cuda-python; or pip install "
                          "'evad-deploy[trt]')")
#: what the commonest errors mean here (cuda-bindings N.x needs a driver of CUDA N or newer)
_HINTS = {
    "cudaErrorInsufficientDriver": ": no NVIDIA driver, or one older than the CUDA of this "
                                   "cuda-bindings (pip install 'cuda-bindings==12.*' on a CUDA "
                                   "12 driver)",
    "cudaErrorNoDevice": ": no CUDA GPU is visible (CUDA_VISIBLE_DEVICES?)",
}


class CudaError(BackendError):
    """A CUDA runtime call returned an error; ``call`` names it, ``code`` is the cudaError_t."""

    def __init__(self, call: str, code: Any) -> None:
        self.call = call
        self.code = int(code)
        name = getattr(code, "name", None) or f"error {self.code}"
        hint = _HINTS.get(str(name), "")
        super().__init__(f"CUDA call {call} failed: {name} ({self.code}){hint}")


def call(name: str, *args: Any, runtime: Any = None) -> Any:
    """``cudart.<name>(*args)`` with its error code checked.

    cuda-python returns ``(err,)`` or ``(err, value, ...)``; this returns None, the value, or the
    tuple of values.

    Args:
        name: the runtime function (``"cudaMalloc"``).
        runtime: the bindings module to call into (default: :data:`cudart`); a resource is freed
            through the module that allocated it.

    Raises:
        CudaError: the call returned an error code.
        MissingDependency: cuda-python is not installed (the message says what to install).
    """
    result = getattr(cudart if runtime is None else runtime, name)(*args)
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:  # cudaSuccess
        raise CudaError(name, err)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _free_quietly(runtime: Any, name: str, handle: Any) -> None:
    """The garbage-collection / exit path of a resource never closed: nobody to raise to."""
    try:
        call(name, handle, runtime=runtime)
    except Exception:  # a finalizer has nobody to raise to
        pass


class _Owned:
    """A CUDA resource freed exactly once by ``free_call``: ``close()`` or, failing that, GC."""

    def __init__(self, free_call: str, handle: Any) -> None:
        # the module bound now, not looked up at free time: the one that allocated must free
        runtime = cudart
        self._runtime, self._free_call, self._handle = runtime, free_call, handle
        self._finalizer = weakref.finalize(self, _free_quietly, runtime, free_call, handle)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free it now (idempotent).

        Raises:
            CudaError: the free call failed (it is not retried).
        """
        if self._finalizer.detach() is not None:
            call(self._free_call, self._handle, runtime=self._runtime)


class DeviceBuffer(_Owned):
    """``nbytes`` of device memory (``cudaMalloc``); ``ptr`` is its address."""

    def __init__(self, nbytes: int) -> None:
        # cudaMalloc(0) may give a null pointer, which TensorRT refuses as a tensor address
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(call("cudaMalloc", self.nbytes))
        super().__init__("cudaFree", self.ptr)


class PinnedBuffer(_Owned):
    """Page-locked host memory (``cudaMallocHost``) seen as a numpy array.

    ``array`` is a view of the pinned memory, valid until ``close()``: hand out copies.

    Args:
        shape: the array's shape.
        dtype: the array's numpy dtype (bf16 is held as its uint16 bits).
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.nbytes = max(nbytes, 1)
        self.ptr = int(call("cudaMallocHost", self.nbytes))
        super().__init__("cudaFreeHost", self.ptr)
        memory = memoryview((ctypes.c_char * self.nbytes).from_address(self.ptr)).cast("B")
        self.array: np.ndarray = np.frombuffer(memory, dtype=dtype,
                                               count=nbytes // dtype.itemsize).reshape(shape)

    def close(self) -> None:
        # drop our view first; a view still held elsewhere would read freed memory
        self.array = np.empty((0,), self.array.dtype)
        super().close()


class Stream(_Owned):
    """A CUDA stream (``cudaStreamCreate``); ``handle`` is the ``cudaStream_t`` as an int, as
    ``IExecutionContext.execute_async_v3`` takes it."""

    def __init__(self) -> None:
        self.stream = call("cudaStreamCreate")
        self.handle = int(self.stream)
        super().__init__("cudaStreamDestroy", self.stream)

    def synchronize(self) -> None:
        """Wait for all work queued on the stream.

        Raises:
            CudaError: the stream's work failed (a kernel's error shows here).
        """
        call("cudaStreamSynchronize", self.stream, runtime=self._runtime)


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    """Queue a copy of the first ``nbytes`` of ``src`` into ``dst`` on ``stream``."""
    _copy(dst, src, nbytes, "cudaMemcpyHostToDevice", stream)


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    """Queue a copy of the first ``nbytes`` of ``src`` into ``dst`` on ``stream``."""
    _copy(dst, src, nbytes, "cudaMemcpyDeviceToHost", stream)


def _copy(dst: DeviceBuffer | PinnedBuffer, src: DeviceBuffer | PinnedBuffer, nbytes: int,
          kind: str, stream: Stream) -> None:
    if nbytes > min(dst.nbytes, src.nbytes) or nbytes < 0:
        raise BackendError(f"a copy of {nbytes} bytes does not fit buffers of {src.nbytes} -> "
                           f"{dst.nbytes} bytes")
    if dst.closed or src.closed:
        raise BackendError("a copy into or out of a freed buffer")
    if nbytes:
        call("cudaMemcpyAsync", dst.ptr, src.ptr, nbytes,
             getattr(stream._runtime.cudaMemcpyKind, kind), stream.stream,
             runtime=stream._runtime)


def device_count() -> int:
    """CUDA devices cuda-python sees (``cudaGetDeviceCount``).

    Raises:
        CudaError: no driver, or no device (the runtime reports both as errors).
        MissingDependency: cuda-python is not installed.
    """
    return int(call("cudaGetDeviceCount"))


def no_gpu_reason() -> str | None:
    """None when cuda-python sees a CUDA GPU; else why not, one phrase naming the way out."""
    try:
        n = device_count()
    except (CudaError, MissingDependency) as e:
        return str(e)
    return None if n > 0 else "cudaGetDeviceCount found no device"


def current_device() -> tuple[str, str]:
    """(name, compute capability ``"major.minor"``) of this thread's current device, as
    ``nvidia-smi`` and ``torch.cuda.get_device_name`` say them.

    Raises:
        CudaError: no usable device.
        MissingDependency: cuda-python is not installed.
    """
    dev = int(call("cudaGetDevice"))
    attr = cudart.cudaDeviceAttr
    major = int(call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMajor, dev))
    minor = int(call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMinor, dev))
    props = call("cudaGetDeviceProperties", dev)
    # the struct's char[256]: bytes up to the first NUL
    raw = props.name
    name = (raw if isinstance(raw, bytes) else str(raw).encode()).split(b"\0", 1)[0].decode()
    return name, f"{major}.{minor}"
