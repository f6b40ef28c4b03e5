"""TrtRunner on the CPU, torch-free: the real runner driven through a recording fake of
cuda-python's ``cuda.bindings.runtime`` (device and pinned memory are ctypes buffers at real
addresses, copies are ``memmove``) and a fake TensorRT whose engine computes its outputs from
the input buffers it finds at the addresses the runner set.

What is checked: the runner and ``evad-trt-run --engine ... --help`` import (and the runner runs)
with torch blocked; outputs equal what the engine computed from the inputs across padding (batch
below the profile minimum), splitting (above its maximum) and every output type (fp16 and bf16
as float32, int64, int32, int8, uint8, bool); the order copy-in -> execute -> copy-out ->
synchronize on one stream; buffers allocated once; every allocation freed exactly once by
``close()`` (and by a constructor that failed half way); a CUDA error naming its call. The
real GPU run is tests/test_engines_gpu.py.

Only ``evad.plugins``' TensorRT lookup and plugin loading are replaced (``trt_runner.tensorrt``,
``trt_runner.load_plugins``): they need a real TensorRT. The sidecar check against this machine
runs for real, on what the fake CUDA runtime reports as the GPU.
"""

from __future__ import annotations

import ctypes
import enum
import json
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from evad.engines import cuda_memory, trt_runner
from evad.engines.cuda_memory import CudaError
from evad.engines.environment import missing_for_engine_build, running_environment
from evad.engines.metadata import EngineMismatchError, engine_metadata
from evad.errors import BackendError, EvadError
from evad.runner import INPUT_CLIP, INPUT_IMAGE_SIZE, INPUTS

ROOT = Path(__file__).resolve().parents[1]
GPU_NAME = "NVIDIA H100 80GB HBM3"
ENV = {"tensorrt_version": "11.4.0", "gpu_name": GPU_NAME, "compute_capability": "9.0"}
#: one clip without its batch dimension: (3, T, H, W)
FRAME = (3, 2, 4, 4)
PROFILE = (2, 4)  # batch min, max


# --- the fake CUDA runtime ------------------------------------------------------------------

class CudaErr(enum.IntEnum):
    """cudaError_t: an int with a name, like cuda-python's enum."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorIllegalAddress = 700


class MemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class DeviceAttr(enum.IntEnum):
    cudaDevAttrComputeCapabilityMajor = 75
    cudaDevAttrComputeCapabilityMinor = 76


OK = CudaErr.cudaSuccess


class FakeCudaRuntime:
    """``cuda.bindings.runtime`` on the CPU. Returns ``(err, value)`` tuples as cuda-python does;
    every call is appended to ``log``; ``fail[name] = code`` makes that call return ``code``."""

    cudaError_t = CudaErr
    cudaMemcpyKind = MemcpyKind
    cudaDeviceAttr = DeviceAttr

    def __init__(self, log: list[tuple], devices: int = 1) -> None:
        self.log = log
        self.devices = devices
        self.live: dict[int, tuple[str, Any]] = {}  # address -> (kind, the buffer keeping it)
        self.allocated: list[tuple[str, int]] = []  # (kind, address), kind: device/host/stream
        self.freed: Counter[tuple[str, int]] = Counter()
        self.fail: dict[str, CudaErr] = {}
        self._streams = 0

    def _failed(self, name: str, *args: Any) -> CudaErr | None:
        self.log.append((name, *args))
        return self.fail.get(name)

    def _alloc(self, kind: str, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(nbytes)
        addr = ctypes.addressof(buf)
        self.live[addr] = (kind, buf)
        self.allocated.append((kind, addr))
        return addr

    def _free(self, name: str, kind: str, handle: int) -> tuple:
        if err := self._failed(name, handle):
            return (err,)
        self.freed[(kind, handle)] += 1
        if self.live.get(handle, ("",))[0] != kind:
            return (CudaErr.cudaErrorInvalidValue,)
        del self.live[handle]
        return (OK,)

    def _buffer(self, kind: str, addr: int, nbytes: int) -> None:
        entry = self.live.get(addr)
        assert entry is not None and entry[0] == kind, f"{addr:#x} is no live {kind} buffer"
        assert nbytes <= len(entry[1]), f"a copy of {nbytes} bytes overruns {len(entry[1])}"

    def cudaMalloc(self, nbytes: int) -> tuple:
        if err := self._failed("cudaMalloc", nbytes):
            return (err, None)
        return (OK, self._alloc("device", nbytes))

    def cudaMallocHost(self, nbytes: int) -> tuple:
        if err := self._failed("cudaMallocHost", nbytes):
            return (err, None)
        return (OK, self._alloc("host", nbytes))

    def cudaFree(self, ptr: int) -> tuple:
        return self._free("cudaFree", "device", ptr)

    def cudaFreeHost(self, ptr: int) -> tuple:
        return self._free("cudaFreeHost", "host", ptr)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: MemcpyKind,
                        stream: int) -> tuple:
        if err := self._failed("cudaMemcpyAsync", kind.name, dst, src, count, stream):
            return (err,)
        h2d = kind == MemcpyKind.cudaMemcpyHostToDevice
        self._buffer("device" if h2d else "host", dst, count)
        self._buffer("host" if h2d else "device", src, count)
        assert ("stream", stream) in self.allocated and not self.freed[("stream", stream)]
        ctypes.memmove(dst, src, count)
        return (OK,)

    def cudaStreamCreate(self) -> tuple:
        if err := self._failed("cudaStreamCreate"):
            return (err, None)
        self._streams += 1
        handle = 0x5000 + self._streams
        self.live[handle] = ("stream", None)
        self.allocated.append(("stream", handle))
        return (OK, handle)

    def cudaStreamSynchronize(self, stream: int) -> tuple:
        if err := self._failed("cudaStreamSynchronize", stream):
            return (err,)
        return (OK,)

    def cudaStreamDestroy(self, stream: int) -> tuple:
        return self._free("cudaStreamDestroy", "stream", stream)

    def cudaGetDeviceCount(self) -> tuple:
        if err := self._failed("cudaGetDeviceCount"):
            return (err, 0)
        return (OK, self.devices) if self.devices else (CudaErr.cudaErrorNoDevice, 0)

    def cudaGetDevice(self) -> tuple:
        return (self._failed("cudaGetDevice") or OK, 0)

    def cudaDeviceGetAttribute(self, attr: DeviceAttr, device: int) -> tuple:
        major = attr == DeviceAttr.cudaDevAttrComputeCapabilityMajor
        return (self._failed("cudaDeviceGetAttribute", attr, device) or OK, 9 if major else 0)

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        err = self._failed("cudaGetDeviceProperties", device) or OK
        return (err, SimpleNamespace(name=GPU_NAME.encode() + b"\0" * 7))  # char[256]

    def leaks(self) -> list[tuple[str, int]]:
        return [a for a in self.allocated if self.freed[a] == 0]

    def double_frees(self) -> list[tuple[str, int]]:
        return [a for a, n in self.freed.items() if n > 1]


# --- the fake TensorRT ----------------------------------------------------------------------

class DT(enum.Enum):
    """trt.DataType members, as the runner reads them off the module (``trt.float16``)."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int64 = "int64"
    int32 = "int32"
    int8 = "int8"
    uint8 = "uint8"
    bool = "bool"


class IOMode(enum.Enum):
    INPUT = 0
    OUTPUT = 1


Outputs = dict[str, tuple[DT, Callable[[np.ndarray, np.ndarray], np.ndarray]]]

#: name -> (engine type, what the engine computes from clip (B, *FRAME) float32 and image_size
#: (B, 2) int64, row by row, as the float32/int values the runner must return). Clips hold
#: multiples of 1/4 in [-2, 2], so every float here is exact in fp16 and bf16.
OUTPUTS: Outputs = {
    "boxes": (DT.float16, lambda c, s: c.reshape(len(c), -1)[:, :4] * 2 + 1),
    "scores": (DT.bfloat16, lambda c, s: c[:, 0, 0, 0, :3] - 0.5),
    "logits": (DT.float32, lambda c, s: c.mean(axis=(1, 2, 3, 4))[:, None] + s[:, :1]),
    "labels": (DT.int64, lambda c, s: np.stack(
        [s[:, 0] * 1000 + s[:, 1], np.round(c.sum(axis=(1, 2, 3, 4)) * 4)], 1).astype(np.int64)),
    "size32": (DT.int32, lambda c, s: s[:, ::-1].astype(np.int32)),
    "keep": (DT.bool, lambda c, s: c.mean(axis=(1, 2, 3, 4)) > 0),
    "delta": (DT.int8, lambda c, s: (s[:, 0] % 7 - 3).astype(np.int8)),
    "level": (DT.uint8, lambda c, s: (s[:, 1] % 200).astype(np.uint8)),
}
_NUMPY = {DT.float32: np.float32, DT.float16: np.float16, DT.int64: np.int64,
          DT.int32: np.int32, DT.int8: np.int8, DT.uint8: np.uint8, DT.bool: np.bool_}


def _engine_bits(dt: DT, values: np.ndarray) -> np.ndarray:
    """What the engine writes for ``values``: its own type; bf16 as the top half of float32."""
    if dt == DT.bfloat16:
        return (np.ascontiguousarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return np.ascontiguousarray(values, _NUMPY[dt])


def _read(addr: int, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(addr), dtype).reshape(shape).copy()


class FakeContext:
    """IExecutionContext: shapes, addresses, and an execute that reads the inputs from the
    device buffers and writes the outputs into them."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []  # (clip, image_size) per execute

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, hi = self.engine.profile
        if not lo <= shape[0] <= hi:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in INPUTS:
            return self.shapes[name]
        return (self.shapes[INPUT_CLIP][0], *self.engine.trailing[name])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.engine.log.append(("execute_async_v3", stream_handle))
        b = self.shapes[INPUT_CLIP][0]
        assert self.shapes[INPUT_IMAGE_SIZE] == (b, 2)
        clip = _read(self.addresses[INPUT_CLIP], np.float32, (b, *FRAME))
        size = _read(self.addresses[INPUT_IMAGE_SIZE], np.int64, (b, 2))
        self.seen.append((clip, size))
        for name, (dt, fn) in self.engine.outputs.items():
            bits = _engine_bits(dt, fn(clip, size))
            ctypes.memmove(self.addresses[name], bits.ctypes.data, bits.nbytes)
        return True


class FakeEngine:
    """ICudaEngine: two inputs (clip float32, image_size int64) and ``outputs``."""

    def __init__(self, log: list[tuple], outputs: Outputs, profile: tuple[int, int]) -> None:
        self.log, self.outputs, self.profile = log, outputs, profile
        self.names = [INPUT_CLIP, INPUT_IMAGE_SIZE, *outputs]
        self.num_io_tensors = len(self.names)
        one = (np.zeros((1, *FRAME), np.float32), np.zeros((1, 2), np.int64))
        self.trailing = {n: fn(*one).shape[1:] for n, (_, fn) in outputs.items()}
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> IOMode:
        return IOMode.INPUT if name in INPUTS else IOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DT:
        return {INPUT_CLIP: DT.float32, INPUT_IMAGE_SIZE: DT.int64}.get(name) or \
            self.outputs[name][0]

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        assert (name, profile) == (INPUT_CLIP, 0)
        lo, hi = self.profile
        return (lo, *FRAME), (lo, *FRAME), (hi, *FRAME)

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def fake_tensorrt(log: list[tuple], outputs: Outputs = OUTPUTS,
                  profile: tuple[int, int] = PROFILE) -> SimpleNamespace:
    """The ``tensorrt`` module as the runner uses it; ``.engine`` is the engine it deserializes."""
    engine = FakeEngine(log, outputs, profile)

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            assert data == b"fake engine"
            return engine

    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return SimpleNamespace(__version__=ENV["tensorrt_version"], Runtime=Runtime, Logger=logger,
                           TensorIOMode=IOMode, engine=engine, **{d.name: d for d in DT})


# --- the setup ------------------------------------------------------------------------------

def write_engine(folder: Path, env: dict[str, str] = ENV) -> Path:
    """An engine file and its sidecar (written as the builder writes it)."""
    onnx_meta = {"input_size": list(FRAME[2:]), "num_frames": FRAME[1], "frame_stride": 1,
                 "short_side": 4, "max_long_side": 8, "mean": [0.5, 0.5, 0.5],
                 "std": [0.25, 0.25, 0.25], "person_threshold": 0.5, "labels": ["a", "b"]}
    path = folder / "fake.engine"
    path.write_bytes(b"fake engine")
    meta = engine_metadata(env, "fp16", onnx_meta, "ab" * 32, "cpp", (PROFILE[0], 3, PROFILE[1]))
    Path(str(path) + ".json").write_text(json.dumps(meta))
    return path


def install(mp: pytest.MonkeyPatch, cuda: FakeCudaRuntime, trt: SimpleNamespace) -> None:
    """The fakes where the runner looks: the lazy ``cudart`` handle, and the TensorRT module
    that ``evad.plugins`` would find and load plugins into."""
    mp.setattr(cuda_memory, "cudart", cuda)
    mp.setattr(trt_runner, "tensorrt", lambda: trt)
    mp.setattr(trt_runner, "load_plugins", lambda kind: trt)


def clips(b: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, *FRAME) float32 multiples of 1/4 in [-2, 2], (B, 2) int64 sizes, all rows distinct."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(-8, 9, (b, *FRAME)).astype(np.float32) / 4
    # distinct unpadded sizes within the clip's H x W (runners refuse sizes outside it)
    cells = rng.permutation(FRAME[2] * FRAME[3])[:b]
    size = np.stack([cells // FRAME[3] + 1, cells % FRAME[3] + 1], 1).astype(np.int64)
    return clip, size


def expected(clip: np.ndarray, size: np.ndarray, outputs: Outputs = OUTPUTS
             ) -> dict[str, np.ndarray]:
    """What the runner must return: fp16 and bf16 as float32, the rest in their own type."""
    out = {}
    for name, (dt, fn) in outputs.items():
        want = fn(clip, size)
        out[name] = want.astype(np.float32 if dt in (DT.float16, DT.bfloat16) else _NUMPY[dt])
    return out


def assert_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def drive_with_fakes(folder: Path) -> None:
    """One whole life of a runner on the fakes (also run in the torch-blocked subprocess):
    a padded batch and a split one, values checked, then everything freed once by ``with``."""
    log: list[tuple] = []
    cuda, trt = FakeCudaRuntime(log), fake_tensorrt(log)
    with pytest.MonkeyPatch.context() as mp:
        install(mp, cuda, trt)
        with trt_runner.TrtRunner(write_engine(folder)) as runner:
            for b, seed in ((1, 0), (7, 1)):
                clip, size = clips(b, seed)
                assert_outputs(runner(clip, size), expected(clip, size))
        assert cuda.allocated and not cuda.leaks() and not cuda.double_frees()


# --- tests ----------------------------------------------------------------------------------

_TORCH_BLOCKED = textwrap.dedent("""
    import importlib.abc, importlib.util, io, sys
    from contextlib import redirect_stdout
    from pathlib import Path

    class BlockTorch(importlib.abc.MetaPathFinder):
        tried = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                self.tried.append(name)
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import evad.engines.trt_runner
    from evad.engines import TrtRunner
    from evad.cli.trt_run import main

    help_text = io.StringIO()
    with redirect_stdout(help_text):
        try:
            main(["--engine", "x.engine", "--help"])
        except SystemExit as e:
            assert e.code == 0, f"--help exited {e.code}"
        else:
            raise AssertionError("--help did not exit")
    assert "usage:" in help_text.getvalue() and "--engine" in help_text.getvalue()
    spec = importlib.util.spec_from_file_location("trt_runner_fakes", sys.argv[1])
    fakes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fakes)
    assert fakes.trt_runner.TrtRunner is TrtRunner
    fakes.drive_with_fakes(Path(sys.argv[2]))
    assert "torch" not in sys.modules, "torch was imported"
    assert not BlockTorch.tried, f"something tried to import torch: {BlockTorch.tried}"
    print("TORCH-FREE OK")
""")


def test_runner_and_cli_import_and_run_with_torch_blocked(tmp_path: Path) -> None:
    """The runner module, ``from evad.engines import TrtRunner``, ``evad-trt-run --engine
    x.engine --help`` and a whole padded + split run on the fakes, in a process where importing
    torch raises."""
    proc = subprocess.run([sys.executable, "-c", _TORCH_BLOCKED, __file__, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TORCH-FREE OK" in proc.stdout


def test_missing_cuda_python_is_one_line_naming_the_package(tmp_path: Path) -> None:
    """Without cuda-python: the runner (TensorRT itself present), the build check and the GPU
    probe each say ``pip install cuda-bindings`` in one line."""
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"x")
    code = textwrap.dedent(f"""
        import sys
        from types import SimpleNamespace
        sys.modules['cuda'] = None
        sys.modules['torch'] = None
        from evad.engines import cuda_memory, missing_for_engine_build, trt_runner
        print(cuda_memory.no_gpu_reason())
        print([str(m) for m in missing_for_engine_build() if m.key == 'gpu'][0])
        trt_runner.tensorrt = lambda: SimpleNamespace(Runtime=object)
        try:
            trt_runner.TrtRunner({str(engine)!r})
        except trt_runner.BackendError as e:
            print(e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reason, gpu_missing, runner = proc.stdout.strip().splitlines()
    assert "pip install cuda-bindings" in reason and "cuda" in reason
    assert "CUDA GPU" in gpu_missing and "pip install cuda-bindings" in gpu_missing
    assert runner.startswith("the trt backend needs cuda-python")
    assert "pip install cuda-bindings" in runner


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple], FakeCudaRuntime,
                                                   SimpleNamespace]:
    log: list[tuple] = []
    cuda, trt = FakeCudaRuntime(log), fake_tensorrt(log)
    install(monkeypatch, cuda, trt)
    return log, cuda, trt


def test_padding_splitting_and_every_output_type(fakes, tmp_path: Path) -> None:
    log, cuda, trt = fakes
    runner = trt_runner.TrtRunner(write_engine(tmp_path))
    assert (runner.batch_min, runner.batch_max) == PROFILE
    ctx = trt.engine.contexts[0]
    n_alloc = len(cuda.allocated)
    # one device and one pinned buffer per tensor, one stream
    assert Counter(k for k, _ in cuda.allocated) == {"device": 10, "host": 10, "stream": 1}
    for b, batches in ((1, [2]), (2, [2]), (4, [4]), (5, [4, 2]), (9, [4, 4, 2])):
        ctx.seen.clear()
        clip, size = clips(b, seed=b)
        got = runner(clip, size)
        assert_outputs(got, expected(clip, size))
        assert [len(c) for c, _ in ctx.seen] == batches
        # what the engine saw: each part of at most batch_max clips, padded to batch_min with
        # copies of the part's first clip
        hi = PROFILE[1]
        for k, (seen_clip, seen_size) in enumerate(ctx.seen):
            part = slice(k * hi, min(b, (k + 1) * hi))
            pad = len(seen_clip) - (part.stop - part.start)
            np.testing.assert_array_equal(seen_clip, np.concatenate(
                [clip[part], np.repeat(clip[part][:1], pad, axis=0)]))
            np.testing.assert_array_equal(seen_size, np.concatenate(
                [size[part], np.repeat(size[part][:1], pad, axis=0)]))
    # the pinned buffers are reused: an earlier result is a copy, not a view of them
    clip, size = clips(3, seed=10)
    first = runner(clip, size)
    runner(*clips(3, seed=11))
    assert_outputs(first, expected(clip, size))
    assert len(cuda.allocated) == n_alloc, "buffers must be allocated once"
    runner.close()
    assert not cuda.leaks() and not cuda.double_frees()


def test_call_order_copy_in_execute_copy_out_synchronize(fakes, tmp_path: Path) -> None:
    log, cuda, trt = fakes
    runner = trt_runner.TrtRunner(write_engine(tmp_path))
    stream = next(h for k, h in cuda.allocated if k == "stream")
    for b, parts in ((3, [(3, 3)]), (6, [(4, 4), (2, 2)]), (1, [(2, 1)])):
        log.clear()
        runner(*clips(b, seed=b))
        events = [e for e in log if e[0] in ("cudaMemcpyAsync", "execute_async_v3",
                                             "cudaStreamSynchronize")]
        want: list[tuple] = []
        for rows_in, rows_out in parts:  # (rows copied in: padded, rows copied out: real)
            want += [("cudaMemcpyAsync", "cudaMemcpyHostToDevice", INPUT_CLIP, rows_in),
                     ("cudaMemcpyAsync", "cudaMemcpyHostToDevice", INPUT_IMAGE_SIZE, rows_in),
                     ("execute_async_v3",)]
            want += [("cudaMemcpyAsync", "cudaMemcpyDeviceToHost", n, rows_out)
                     for n in OUTPUTS]
            want += [("cudaStreamSynchronize",)]
        addr = trt.engine.contexts[0].addresses
        row_bytes = {INPUT_CLIP: int(np.prod(FRAME)) * 4, INPUT_IMAGE_SIZE: 16,
                     **{n: int(np.prod(trt.engine.trailing[n], dtype=np.int64))
                        * _engine_bits(dt, np.zeros(1)).itemsize
                        for n, (dt, _) in OUTPUTS.items()}}
        got: list[tuple] = []
        for e in events:
            if e[0] == "cudaMemcpyAsync":
                _, kind, dst, src, count, on = e
                dev = dst if kind == "cudaMemcpyHostToDevice" else src
                name = next(n for n, a in addr.items() if a == dev)
                assert count % row_bytes[name] == 0 and on == stream
                got.append((e[0], kind, name, count // row_bytes[name]))
            else:
                assert e[1] == stream
                got.append((e[0],))
        assert got == want, b
    runner.close()


def test_close_frees_everything_once_and_is_idempotent(fakes, tmp_path: Path) -> None:
    log, cuda, _ = fakes
    with trt_runner.TrtRunner(write_engine(tmp_path)) as runner:
        runner(*clips(2, seed=0))
        assert not cuda.freed
    assert not cuda.leaks() and not cuda.double_frees() and not cuda.live
    assert Counter(k for k, _ in cuda.freed) == {"device": 10, "host": 10, "stream": 1}
    n = len(log)
    runner.close()  # again: nothing happens
    assert len(log) == n
    with pytest.raises(EvadError, match="closed"):
        runner(*clips(2, seed=0))


@pytest.mark.parametrize("failing", ["cudaMemcpyAsync", "cudaStreamSynchronize"])
def test_a_cuda_error_in_a_run_names_the_call(fakes, tmp_path: Path, failing: str) -> None:
    log, cuda, _ = fakes
    runner = trt_runner.TrtRunner(write_engine(tmp_path))
    cuda.fail[failing] = CudaErr.cudaErrorIllegalAddress
    log.clear()
    with pytest.raises(CudaError, match=f"{failing} failed: cudaErrorIllegalAddress") as info:
        runner(*clips(2, seed=0))
    assert info.value.call == failing and info.value.code == 700
    assert isinstance(info.value, BackendError)
    names = [e[0] for e in log]
    # a failed copy stops the run before TensorRT, and the stream is still waited for
    assert names[-1] == "cudaStreamSynchronize"
    if failing == "cudaMemcpyAsync":
        assert names == ["cudaMemcpyAsync", "cudaStreamSynchronize"]
    del cuda.fail[failing]
    runner.close()
    assert not cuda.leaks() and not cuda.double_frees()


@pytest.mark.parametrize("failing", ["cudaStreamCreate", "cudaMallocHost", "cudaMalloc"])
def test_a_constructor_that_fails_frees_what_it_took(fakes, tmp_path: Path,
                                                     failing: str) -> None:
    _, cuda, _ = fakes
    cuda.fail[failing] = CudaErr.cudaErrorMemoryAllocation
    with pytest.raises(CudaError, match=f"{failing} failed: cudaErrorMemoryAllocation") as info:
        trt_runner.TrtRunner(write_engine(tmp_path))
    # freed by the constructor itself: the traceback held in ``info`` keeps the half-made
    # runner alive, so garbage collection has freed nothing yet
    assert info.traceback and not cuda.leaks() and not cuda.double_frees()


def test_a_failed_free_is_raised_and_the_rest_still_freed(fakes, tmp_path: Path) -> None:
    _, cuda, _ = fakes
    runner = trt_runner.TrtRunner(write_engine(tmp_path))
    cuda.fail["cudaFree"] = CudaErr.cudaErrorIllegalAddress
    with pytest.raises(CudaError, match="cudaFree failed"):
        runner.close()
    assert [a for a in cuda.leaks() if a[0] != "device"] == []  # pinned memory and stream
    runner.close()  # not retried
    assert not cuda.double_frees()


def test_environment_comes_from_cuda_python(fakes, tmp_path: Path) -> None:
    _, cuda, trt = fakes
    assert running_environment(trt) == ENV  # the NUL padding of char[256] gone
    assert not [m for m in missing_for_engine_build() if m.key == "gpu"]
    # an engine built for another GPU is refused before any CUDA memory is taken
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(EngineMismatchError, match="gpu_name"):
        trt_runner.TrtRunner(write_engine(other, {**ENV, "gpu_name": "NVIDIA A100-SXM4-80GB"}))
    assert cuda.allocated == []


def test_no_gpu_is_said_by_the_runner_and_the_build_check(fakes, tmp_path: Path) -> None:
    _, cuda, trt = fakes
    cuda.devices = 0
    with pytest.raises(BackendError, match="needs a CUDA GPU .*cudaGetDeviceCount.*"
                                           "cudaErrorNoDevice"):
        trt_runner.TrtRunner(write_engine(tmp_path))
    gpu = [str(m) for m in missing_for_engine_build() if m.key == "gpu"]
    assert len(gpu) == 1 and "CUDA GPU" in gpu[0] and "cudaErrorNoDevice" in gpu[0]
    with pytest.raises(EvadError, match="no CUDA GPU"):
        running_environment(trt)
    assert cuda.allocated == []


def test_the_fake_matches_the_real_bindings() -> None:
    """Every call the runner makes exists in cuda-python with the fake's parameters, and a real
    error tuple (here: no driver, or an absurd allocation) is turned into a CudaError."""
    import inspect

    cudart = pytest.importorskip("cuda.bindings.runtime",
                                 reason="cuda-python not installed (pip install cuda-bindings)")
    for name, fake in inspect.getmembers(FakeCudaRuntime, inspect.isfunction):
        if not name.startswith("cuda"):
            continue
        first = getattr(cudart, name).__doc__.strip().splitlines()[0]  # "name(a, int b, ...)"
        assert first.startswith(name + "("), first
        args = [a for a in first[len(name) + 1:first.rindex(")")].split(",") if a.strip()]
        assert len(args) == len(inspect.signature(fake).parameters) - 1, (name, first)
    for enum_cls, member in ((cudart.cudaMemcpyKind, "cudaMemcpyHostToDevice"),
                             (cudart.cudaMemcpyKind, "cudaMemcpyDeviceToHost"),
                             (cudart.cudaDeviceAttr, "cudaDevAttrComputeCapabilityMajor"),
                             (cudart.cudaDeviceAttr, "cudaDevAttrComputeCapabilityMinor")):
        assert int(getattr(enum_cls, member)) == int(getattr(
            FakeCudaRuntime.cudaMemcpyKind if "Memcpy" in member
            else FakeCudaRuntime.cudaDeviceAttr, member))
    reason = cuda_memory.no_gpu_reason()
    if reason is not None:  # a machine without a GPU: the real error path
        assert "cudaGetDeviceCount failed: cudaError" in reason
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaError") as info:
        cuda_memory.call("cudaMalloc", 1 << 62)  # 4 EiB: refused with or without a GPU
    assert info.value.call == "cudaMalloc" and info.value.code != 0

