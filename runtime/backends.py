"""The one place that chooses an inference backend: :func:`open_runner`.

Every backend is a :class:`evad.runner.Runner` (``runner(clip, image_size) -> outputs``):
``TrtRunner`` (a TensorRT engine), ``OrtRunner`` (ONNX Runtime, CUDA or CPU),
``OpenVinoRunner`` (OpenVINO on the CPU, fp32 or bf16: the fast CPU path), ``TorchRunner`` (the
torch reference, fp32 or under bf16 autocast). ``auto`` takes the fastest that can run here. The
ORT and OpenVINO paths are torch-free: the torch runner's module loads only when the torch
backend is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from evad.command import check_input_file
from evad.engines.metadata import onnx_sha256, sidecar_path
from evad.engines.trt_runner import TrtRunner
from evad.errors import BackendError, EvadError
from evad.export.ort_runner import CUDA, OrtRunner, available_providers
from evad.lazy import available, lazy_import
from evad.runner import Runner

if TYPE_CHECKING:
    import openvino
    import torch

    from evad.export import openvino_runner
    from evad.models import runner as torch_runner
else:
    torch = lazy_import("torch", "pip install torch")
    torch_runner = lazy_import("evad.models.runner", "pip install torch")
    # a TensorRT-only deployment has no onnx: the OpenVINO runner (which reads ONNX) loads here
    # only when it is used
    openvino_runner = lazy_import("evad.export.openvino_runner", "pip install onnx openvino")
    openvino = lazy_import("openvino", "pip install 'evad-deploy[openvino]'")

__all__ = ["BACKENDS", "PRECISIONS", "open_runner", "openvino_installed", "sibling_engine"]

BACKENDS = ("auto", "trt", "ort", "openvino", "torch")
#: what ``--precision`` takes; an engine's precision is the one it was built with
PRECISIONS = ("fp32", "bf16", "bf16-int8w")


def _torch_cuda() -> bool:
    return available(torch) and bool(torch.cuda.is_available())


def _ort_cuda() -> bool:
    try:
        return CUDA in available_providers()
    except EvadError:  # onnxruntime missing
        return False


def sibling_engine(onnx: Path | None) -> Path | None:
    """An engine built beside an ONNX file (``x.engine`` or ``x.plan`` next to ``x.onnx``) from
    THAT file: an engine whose sidecar records another ONNX hash (the ONNX was re-exported
    since) is stale and not used."""
    if onnx is None:
        return None
    for ext in (".engine", ".plan"):
        p = onnx.with_suffix(ext)
        if p.is_file():
            try:
                recorded = json.loads(sidecar_path(p).read_text()).get("onnx_sha256")
            except (OSError, ValueError, AttributeError):
                return None
            return p if recorded == onnx_sha256(onnx) else None
    return None


def _torch(ckpt: Path, precision: str = "fp32") -> Runner:
    return torch_runner.TorchRunner.from_checkpoint(ckpt, precision=precision)


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported here."""
    return available(openvino)


def open_runner(kind: str = "auto", engine: Path | None = None, onnx: Path | None = None,
                ckpt: Path | None = None, threads: int = 0, shrink_arena: bool = False,
                cuda: bool | None = None,
                precision: str = "fp32") -> tuple[Runner, list[str]]:
    """The runner to use, and notes on why (for ``auto``: what was skipped and why).

    Args:
        kind: ``auto``, ``trt``, ``ort``, ``openvino`` or ``torch``.
        engine, onnx, ckpt: the model files at hand (any subset).
        threads: ONNX Runtime intra-op threads (0 = its default).
        shrink_arena: ONNX Runtime gives its CPU arena back after each run (long videos).
        cuda: for ``ort``: None = its CUDA provider when installed, True = require it, False =
            CPU only.
        precision: ``fp32`` or ``bf16`` for ``openvino`` and ``torch``, ``bf16-int8w`` (int8
            MatMul weights) for ``openvino`` (ONNX Runtime runs fp32 only; an engine runs the
            precision it was built with).

    ``auto`` takes the fastest available: a TensorRT engine (given, or beside the ONNX), then
    ONNX Runtime on CUDA, the torch reference on CUDA, then on the CPU: at bf16 OpenVINO (when
    installed) or torch bf16; at fp32 ONNX Runtime, torch. An engine named explicitly that
    cannot run is an error, not skipped.

    Raises:
        BackendError / EvadError: the named backend cannot run (missing package, missing model
            file, no model for it).
    """
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of "
                           f"{', '.join(PRECISIONS)}")
    if precision != "fp32" and kind in ("trt", "ort"):
        raise BackendError(f"--precision {precision} is for --backend openvino or torch: ONNX "
                           "Runtime runs fp32 and an engine runs the precision it was built with "
                           "(evad-build-engine --bf16)")
    # each named file first, so that a typo is said as such, not as a backend problem
    for path, what in ((engine, "TensorRT engine"), (onnx, "ONNX model"), (ckpt, "checkpoint")):
        if path is not None:
            check_input_file(path, what)
    ort_kw = {"threads": threads, "shrink_arena": shrink_arena}
    if kind == "trt":
        engine = engine or sibling_engine(onnx)
        if engine is None:
            raise BackendError("--backend trt needs an engine: pass --engine FILE")
        return TrtRunner(engine), []
    if kind == "ort":
        if onnx is None:
            raise BackendError("--backend ort needs an ONNX model: pass --onnx FILE")
        return OrtRunner(onnx, cuda=cuda, **ort_kw), []
    if kind == "openvino":
        if onnx is None:
            raise BackendError("--backend openvino needs an ONNX model: pass --onnx FILE")
        return openvino_runner.OpenVinoRunner(onnx, precision, threads), []
    if kind == "torch":
        if ckpt is None:
            raise BackendError("--backend torch needs a checkpoint: pass --ckpt FILE")
        if precision == "bf16-int8w":
            raise BackendError("--precision bf16-int8w is OpenVINO's: pass --onnx FILE with "
                               "--backend openvino (torch takes fp32 or bf16)")
        return _torch(ckpt, precision), []

    notes: list[str] = []
    eng = engine or sibling_engine(onnx)
    if eng is not None and precision != "fp32":
        notes.append(f"skipped trt (an engine runs the precision it was built with, not "
                     f"--precision {precision})")
        eng = None
    if eng is not None:
        try:  # TrtRunner checks TensorRT and the GPU (cuda-python, no torch) before the file
            return TrtRunner(eng), notes
        except EvadError as e:
            if engine is not None:  # asked for by name: a mismatched engine is refused
                raise
            notes.append(f"skipped trt ({e})")
    elif onnx is not None or ckpt is not None:
        notes.append("skipped trt (no engine given)")
    if onnx is not None and precision == "fp32" and _ort_cuda():
        try:
            return OrtRunner(onnx, cuda=True, **ort_kw), notes
        except BackendError as e:  # the CUDA provider did not load: keep to the order
            notes.append(f"skipped ort cuda ({e})")
    torch_ok = precision in ("fp32", "bf16")  # bf16-int8w is OpenVINO's
    if ckpt is not None and torch_ok and _torch_cuda():
        return _torch(ckpt, precision), notes
    if precision != "fp32":
        if onnx is not None and openvino_installed():
            try:
                return openvino_runner.OpenVinoRunner(onnx, precision, threads), notes
            except EvadError as e:
                if ckpt is None or not torch_ok:
                    raise
                notes.append(f"skipped openvino ({e})")
        elif onnx is not None:
            notes.append("skipped openvino (not installed: pip install openvino)")
        if ckpt is not None and torch_ok:
            return _torch(ckpt, precision), notes
        raise BackendError("; ".join(notes) or f"no model for a {precision} CPU backend: pass "
                           "--onnx FILE (OpenVINO) or --ckpt FILE (torch)")
    if onnx is not None:
        return OrtRunner(onnx, **ort_kw), notes
    if ckpt is not None:
        return _torch(ckpt), notes
    if engine is not None:  # only an engine, and it could not run
        raise BackendError("; ".join(notes) or "the TensorRT engine cannot run here")
    raise BackendError("no model: pass --onnx FILE, --ckpt FILE or --engine FILE")
