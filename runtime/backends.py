"""The one place that chooses and opens an inference backend: :func:`open_runner`.

Which backend runs which precision on which device, from which model file, is
:data:`evad.runner.BACKEND_TABLE`; this module opens a row of it. Every backend is a
:class:`evad.runner.Runner` (``runner(clip, image_size) -> outputs``, ``with ... as runner:``):
``TrtRunner`` (a TensorRT engine), ``OrtRunner`` (ONNX Runtime, CUDA or CPU),
``OpenVinoRunner`` (OpenVINO on the CPU: the fast bf16 CPU path), ``TorchRunner`` (the torch
reference, fp32 or under bf16 autocast). No other module constructs a runner
(tests/test_backend_table.py). ``auto`` takes the first row of the table that can run here. The
ORT and OpenVINO paths are torch-free: the torch runner's module loads only when the torch
backend is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from evad.command import check_input_file
from evad.engines.metadata import sidecar_path
from evad.engines.trt_runner import TrtRunner
from evad.errors import BackendError, EvadError
from evad.export.ort_runner import CUDA, OrtRunner, available_providers
from evad.hashing import onnx_sha256
from evad.lazy import available, lazy_import
from evad.runner import (
    BACKEND_TABLE,
    ENGINE_PRECISIONS,
    RUN_PRECISIONS,
    BackendRow,
    ModelFile,
    Runner,
    backend_choices,
    model_flag,
    runs_at,
)

if TYPE_CHECKING:
    import openvino
    import torch

    from evad.export import openvino_runner
    from evad.models import runner as torch_runner
    from evad.models.evad import EVAD
else:
    torch = lazy_import("torch", "pip install torch")
    torch_runner = lazy_import("evad.models.runner", "pip install torch")
    # a TensorRT-only deployment has no onnx: the OpenVINO runner (which reads ONNX) loads here
    # only when it is used
    openvino_runner = lazy_import("evad.export.openvino_runner", "pip install onnx openvino")
    openvino = lazy_import("openvino", "pip install 'evad-deploy[openvino]'")

__all__ = ["open_runner", "openvino_installed", "sibling_engine"]

#: what each model file is called in messages
_WHAT: dict[ModelFile, str] = {"engine": "an engine", "onnx": "an ONNX model",
                               "ckpt": "a checkpoint"}


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


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported here."""
    return available(openvino)


def _can_run(row: BackendRow) -> str | None:
    """None when ``row`` can be tried on this machine, else why not (a ``not installed`` reason
    is said in ``auto``'s notes; a missing GPU is not news on a CPU machine, said as ``""``).
    TensorRT checks itself when the engine opens (its reason names the missing piece)."""
    if row.backend == "ort" and row.device == "cuda":
        return None if _ort_cuda() else ""
    if row.backend == "torch" and row.device == "cuda":
        return None if _torch_cuda() else ""
    if row.backend == "openvino" and not openvino_installed():
        return "not installed: pip install openvino"
    return None


def _open_row(row: BackendRow, file: Path | None, precision: str, threads: int,
              shrink_arena: bool, model: EVAD | None, model_name: str,
              ort_cuda: bool | None) -> Runner:
    """Open one table row (its model file checked present by the caller)."""
    if row.backend == "trt":
        assert file is not None
        return TrtRunner(file)
    if row.backend == "ort":
        assert file is not None
        return OrtRunner(file, cuda=ort_cuda, threads=threads, shrink_arena=shrink_arena,
                         precision=precision)
    if row.backend == "openvino":
        assert file is not None
        return openvino_runner.OpenVinoRunner(file, precision, threads)
    if model is not None:  # torch, a model in memory
        return torch_runner.TorchRunner(model, model_name, row.device, precision)
    assert file is not None
    return torch_runner.TorchRunner.from_checkpoint(file, row.device, precision)


def _who_runs(precision: str) -> str:
    """``openvino (cpu, --onnx)``: the rows that run ``precision``, for messages."""
    return ", ".join(f"{r.backend} ({r.device}, --{r.model})" for r in BACKEND_TABLE
                     if precision in r.run_precisions)


def open_runner(kind: str = "auto", engine: Path | None = None, onnx: Path | None = None,
                ckpt: Path | None = None, threads: int = 0, shrink_arena: bool = False,
                cuda: bool | None = None, precision: str = "fp32", model: EVAD | None = None,
                model_name: str = "torch model",
                auto_among: tuple[str, ...] | None = None) -> tuple[Runner, list[str]]:
    """The runner to use, and notes on why (for ``auto``: what was skipped and why). Close it
    (``with open_runner(...)[0] as runner:``) to free what the backend holds.

    Args:
        kind: ``auto`` or a backend of :data:`evad.runner.BACKEND_TABLE` (``trt``, ``ort``,
            ``openvino``, ``torch``).
        engine, onnx, ckpt: the model files at hand (any subset).
        threads: ONNX Runtime / OpenVINO intra-op threads (0 = its default).
        shrink_arena: ONNX Runtime gives its CPU arena back after each run (long videos).
        cuda: None = a CUDA device when there is one, True = require it, False = the CPU only
            (for ``ort`` and ``torch``; ``auto`` keeps to the rows of that device).
        precision: a run precision of the table (``fp32``, ``bf16``, ``bf16-int8w``); an
            engine runs the precision it was built with, so it takes only the default fp32.
        model: instead of ``ckpt``: a torch model in memory (``EVAD``), named ``model_name``
            in messages (``preset demo``).
        auto_among: the backends ``auto`` may take (a command's ``--backend`` choices; default
            every row of the table).

    ``auto`` tries the table's rows in order (fastest first): a TensorRT engine (given, or
    beside the ONNX), ONNX Runtime on CUDA, torch on CUDA, then on the CPU: at bf16 OpenVINO
    (when installed) or torch bf16; at fp32 ONNX Runtime, torch. A row that fails to open is
    skipped (said in the notes) when a later row can take over; an engine named explicitly that
    cannot run is an error, not skipped.

    Raises:
        BackendError / EvadError: the named backend cannot run (missing package, missing model
            file, no model for it, a precision it does not run).
    """
    choices = backend_choices()
    if kind not in choices:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(choices)}")
    if precision not in RUN_PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of "
                           f"{', '.join(RUN_PRECISIONS)}")
    # each named file first, so that a typo is said as such, not as a backend problem
    for path, what in ((engine, "TensorRT engine"), (onnx, "ONNX model"), (ckpt, "checkpoint")):
        if path is not None:
            check_input_file(path, what)
    # an engine beside the ONNX (built from it) serves trt; the sidecar check hashes the ONNX,
    # so only where an engine can be taken
    near = sibling_engine(onnx) if engine is None and kind in ("auto", "trt") else None
    files: dict[ModelFile, Path | None] = {"engine": engine or near, "onnx": onnx,
                                           "ckpt": ckpt}
    kw = {"precision": precision, "threads": threads, "shrink_arena": shrink_arena,
          "model": model, "model_name": model_name}
    if kind != "auto":
        return _open_named(kind, files, cuda, **kw), []
    rows = [r for r in BACKEND_TABLE if auto_among is None or r.backend in auto_among]
    return _open_auto(rows, files, cuda, engine is not None, **kw)


def _open_named(kind: str, files: dict[ModelFile, Path | None], cuda: bool | None,
                precision: str, threads: int, shrink_arena: bool, model: EVAD | None,
                model_name: str) -> Runner:
    """``--backend kind``: its table row, or one line on why it cannot run."""
    if not runs_at(kind, precision):
        if kind == "trt":
            raise BackendError(f"--precision {precision} is not for --backend trt: an engine "
                               "runs the precision it was built with (evad-build-engine "
                               f"--precision {'/'.join(ENGINE_PRECISIONS)})")
        raise BackendError(f"--backend {kind} does not run --precision {precision}; "
                           f"{precision} runs on {_who_runs(precision)}")
    flag = model_flag(kind)
    file = files[flag]
    if file is None and not (flag == "ckpt" and model is not None):
        raise BackendError(f"--backend {kind} needs {_WHAT[flag]}: pass --{flag} FILE")
    rows = [r for r in BACKEND_TABLE if r.backend == kind
            and (cuda is None or (r.device == "cuda") == cuda)]
    if not rows:
        raise BackendError(f"--backend {kind} runs on the "
                           f"{'CPU' if cuda else 'GPU'} only")
    row = rows[0]
    if kind == "torch" and cuda is None:  # a GPU when torch sees one, as TorchRunner chooses
        row = rows[0] if _torch_cuda() else rows[-1]
    elif kind == "torch" and cuda and not _torch_cuda():
        raise BackendError("--backend torch on CUDA: torch sees no CUDA GPU here")
    return _open_row(row, file, precision, threads, shrink_arena, model, model_name,
                     ort_cuda=cuda)


def _label(row: BackendRow) -> str:
    """How ``auto``'s notes name a row: ``trt``, ``ort cuda``, ``openvino``."""
    return row.backend + (" cuda" if row.backend == "ort" and row.device == "cuda" else "")


def _open_auto(rows: list[BackendRow], files: dict[ModelFile, Path | None], cuda: bool | None,
               engine_named: bool, precision: str, threads: int, shrink_arena: bool,
               model: EVAD | None, model_name: str) -> tuple[Runner, list[str]]:
    """``auto``: the first of ``rows`` (table order) that has its model file, runs
    ``precision`` and opens here; notes on the rows passed over."""
    # a model in memory stands for the checkpoint
    have = {k: v is not None or (k == "ckpt" and model is not None) for k, v in files.items()}
    if not any(have.values()):
        raise BackendError("no model: pass --onnx FILE, --ckpt FILE or --engine FILE")
    notes: list[str] = []
    candidates: list[BackendRow] = []
    for row in rows:
        label = _label(row)
        if not have[row.model]:
            if row is BACKEND_TABLE[0]:  # the fastest path: say why it is not taken
                notes.append(f"skipped {label} (no {row.model} given)")
            continue
        if precision not in row.auto:
            if row.set_at == "build":
                notes.append(f"skipped {label} (an engine runs the precision it was built "
                              f"with, not --precision {precision})")
            continue
        if cuda is not None and (row.device == "cuda") != cuda:
            continue
        why = _can_run(row)
        if why is not None:
            if why:
                notes.append(f"skipped {label} ({why})")
            continue
        candidates.append(row)
    for i, row in enumerate(candidates):
        try:
            # the ONNX Runtime rows are one device each: CUDA required, or the CPU only
            return _open_row(row, files[row.model], precision, threads, shrink_arena, model,
                             model_name, ort_cuda=row.device == "cuda"), notes
        except EvadError as e:
            if (row.set_at == "build" and engine_named) or i == len(candidates) - 1:
                raise  # asked for by name, or nothing left to take over
            notes.append(f"skipped {_label(row)} ({e})")
    if files["engine"] is not None and not (files["onnx"] or have["ckpt"]):
        raise BackendError("; ".join(notes) or "the TensorRT engine cannot run here")
    raise BackendError("; ".join([*notes, f"no model for a {precision} backend here: "
                                  f"{precision} runs on {_who_runs(precision)}"]))
