"""ONNX Runtime as a :class:`evad.runner.Runner`: an exported EVAD graph, inputs by name,
every output as a numpy array. Torch-free; onnxruntime loads on first use. Opened through
``evad.runtime.backends.open_runner``; ``close()`` releases the session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evad.command import check_input_file, one_line
from evad.errors import BackendError
from evad.hashing import onnx_sha256
from evad.lazy import lazy_import
from evad.metadata import read_metadata
from evad.runner import (
    DETECTIONS,
    INPUT_CLIP,
    INPUT_IMAGE_SIZE,
    KEPT_IDX_PREFIX,
    ModelSpec,
    RunnerBase,
)

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu for CUDA)")

__all__ = ["CPU", "CUDA", "OrtRunner", "available_providers", "file_precision"]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    """ONNX Runtime execution providers of this install, preferred first (CUDA, then CPU).

    Raises:
        MissingDependency: onnxruntime is not installed.
    """
    have = ort.get_available_providers()
    return [p for p in (CUDA, CPU) if p in have]


def file_precision(meta: dict) -> str:
    """What an ONNX export computes in, from its evad metadata: ``int8`` for the calibrated
    Q/DQ export (``evad-export --int8``), else ``fp32`` (the ``precision`` key of an fp32
    export names the engine precision asked of it, not the file's)."""
    return "int8" if meta.get("precision") == "int8" else "fp32"


#: the graph's signature as the runtime reads it: name -> (ONNX Runtime type, rank)
_INPUTS = {INPUT_CLIP: ("tensor(float)", 5), INPUT_IMAGE_SIZE: ("tensor(int64)", 2)}
_OUTPUTS = {DETECTIONS[0]: ("tensor(float)", 3), DETECTIONS[1]: ("tensor(float)", 2),
            DETECTIONS[2]: ("tensor(float)", 3)}


def _check_signature(path: Path, session: ort.InferenceSession) -> None:
    """Refuse a graph whose inputs or outputs are not the detector's (names, types, ranks)."""
    have_in = {i.name: (i.type, len(i.shape)) for i in session.get_inputs()}
    have_out = {o.name: (o.type, len(o.shape)) for o in session.get_outputs()}
    for kind, want, have in (("input", _INPUTS, have_in), ("output", _OUTPUTS, have_out)):
        for name, (dtype, rank) in want.items():
            if name not in have:
                raise BackendError(f"{path} has evad metadata but no {kind} {name!r} (it has "
                                   f"{', '.join(have) or 'none'}): it is not an evad-export "
                                   "graph; re-export it")
            if have[name] != (dtype, rank):
                raise BackendError(f"{path}: {kind} {name!r} is {have[name][0]} of rank "
                                   f"{have[name][1]}, the detector's is {dtype} of rank {rank}; "
                                   "re-export it")
    extra_in = sorted(set(have_in) - set(_INPUTS))
    if extra_in:
        raise BackendError(f"{path} has inputs the detector does not feed: {extra_in}")
    for name, (dtype, rank) in have_out.items():
        if name.startswith(KEPT_IDX_PREFIX) and (dtype, rank) != ("tensor(int64)", 2):
            raise BackendError(f"{path}: output {name!r} is {dtype} of rank {rank}, not int64 "
                               "(B, K); re-export it")


class OrtRunner(RunnerBase):
    """An exported model in ONNX Runtime; ``close()`` (or the end of a ``with`` block) releases
    the session and its memory.

    Args:
        path: the ``.onnx`` from evad-export (external data beside it is found by onnxruntime).
        cuda: None = the CUDA provider when this install has it, else CPU; True = require it;
            False = CPU only.
        threads: intra-op threads (0 = onnxruntime's default).
        shrink_arena: with ``cpu_arena``, give the CPU arena back after every run.
        precision: ``int8`` to require the calibrated Q/DQ export (``evad-export --int8``);
            None or ``fp32``: whatever the file is (an int8 export runs as int8: the
            precision is the file's, read from its metadata).
        cpu_arena: pool CPU allocations in ONNX Runtime's arena (off by default). The arena
            keeps the largest activations of every run and grows by doubling: vit_b_ktp at
            288x512 peaked at 2.66 GB with it and 1.96 GB without, for 8.3 s against 9.3 s a
            clip (ORT 1.32, 2 threads, one standalone run each; in evad-bench's committed run,
            without it: 2.17 GB against torch fp32's 2.20 GB, README "Speed on a CPU").

    Raises:
        EvadError: the file is missing, not an evad export, or onnxruntime cannot load it;
        BackendError: CUDA asked for and not available.
    """

    def __init__(self, path: str | os.PathLike, cuda: bool | None = None, threads: int = 0,
                 shrink_arena: bool = False, cpu_arena: bool = False,
                 precision: str | None = None) -> None:
        self.path = check_input_file(path, "ONNX model")
        self.metadata = read_metadata(self.path)
        self.backend, self.precision = "ort", file_precision(self.metadata)
        if precision not in (None, "fp32", self.precision):
            raise BackendError(f"{self.path} is an fp32 export: ONNX Runtime runs it at fp32 "
                               f"(--precision {precision} needs the INT8 export: evad-export "
                               "--int8 --calib DATA)")
        self.spec = ModelSpec.from_metadata(self.metadata, f"ONNX model {self.path}",
                                            onnx_sha256(self.path))
        providers = available_providers()
        if cuda is False:
            providers = [CPU]
        elif cuda and CUDA not in providers:
            raise BackendError("onnxruntime has no CUDA provider here: pip install "
                               "onnxruntime-gpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = cpu_arena
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own classes: one line for the user
            first = one_line(e)
            raise BackendError(f"onnxruntime cannot load {self.path}: {first}") from e
        self.output_names = [o.name for o in self.session.get_outputs()]
        _check_signature(self.path, self.session)
        clip_in = next(i for i in self.session.get_inputs() if i.name == INPUT_CLIP)
        # a symbolic dimension (the batch, named or None) takes any size
        self.clip_shape = tuple(d if isinstance(d, int) else None for d in clip_in.shape[1:])
        self.providers = self.session.get_providers()
        if cuda and self.providers[0] != CUDA:  # onnxruntime falls back to CPU silently
            raise BackendError("onnxruntime's CUDA provider is installed but did not load (its "
                               "CUDA/cuDNN libraries?); use the CPU provider or fix the install")
        self.name = f"ort ({self.providers[0]})"
        self.on_gpu = self.providers[0] != CPU
        self.run_options = ort.RunOptions()
        if shrink_arena and cpu_arena:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                                  "cpu:0")

    def _infer(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        """clip (B, 3, T, H, W) float32, image_size (B, 2) int64 (h, w), checked -> outputs by
        name."""
        outs = self.session.run(None, {INPUT_CLIP: clip, INPUT_IMAGE_SIZE: image_size},
                                self.run_options)
        return dict(zip(self.output_names, outs, strict=True))

    def _release(self) -> None:
        # the session owns the graph, the weights and the arena: dropping the last reference
        # frees them (onnxruntime has no explicit close)
        self.__dict__.pop("session", None)
