"""The one export: a checkpoint or a preset -> an ONNX file with its metadata, parity-checked.

``Exporter(height, width, made_by=...)(out, ckpt=... or preset=...)`` loads the model
(``evad.models.load_or_build``), builds the one metadata dict (``build_metadata``), exports the
graph (``export_onnx``), writes it into one staging folder beside ``out`` (``Staging``), checks
parity against torch when asked, and only then moves it into place. ``evad-export``,
``evad-bench`` (its ONNX paths) and the demo model (``evad.export.demo``) all export through it,
so an ONNX says the same about itself whichever command made it, except in the keys that say
where it came from (``evad.export.metadata.PROVENANCE_KEYS``). ``tests/test_export_entry.py``
checks that no other module calls the steps.

As in Ultralytics' exporter: one ``__call__`` and one table of the formats an export offers
(:func:`export_formats`). This stage writes the ONNX; the TensorRT engine is built from that
file by the engines stage (``evad.engines.builder``, which export may not import), so commands
that want both (``evad-export``) compose the two.

Torch-free at import (``evad-export`` refuses bad requests before torch loads,
``tests/test_fail_fast.py``): torch, onnx and the exporter load on the first export.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evad.atomic import write_json_atomic
from evad.errors import ConfigError
from evad.export.sizes import DEFAULT_OPSET, validate_size
from evad.lazy import lazy_import
from evad.metadata import read_metadata, write_metadata
from evad.models.presets import Preset
from evad.runner import Runner

if TYPE_CHECKING:
    import onnx
    import torch

    from evad import models
    from evad.export import int8, metadata, onnx_export, parity
    from evad.models import flops
    from evad.models.evad import EVAD
else:
    torch = lazy_import("torch", "pip install torch")
    onnx = lazy_import("onnx", "pip install onnx")
    models = lazy_import("evad.models", "pip install torch")
    flops = lazy_import("evad.models.flops", "pip install torch")
    metadata = lazy_import("evad.export.metadata", "pip install torch")
    onnx_export = lazy_import("evad.export.onnx_export", "pip install torch onnx onnxscript")
    parity = lazy_import("evad.export.parity", "pip install torch")
    int8 = lazy_import("evad.export.int8", "pip install onnx onnxruntime")

__all__ = ["ExportFormat", "Exported", "Exporter", "ParityCheck", "export_formats",
           "write_int8"]


@dataclass(frozen=True)
class ExportFormat:
    """One row of :func:`export_formats`."""

    #: the format's name
    name: str
    #: the file's suffix
    suffix: str
    #: what makes it
    made_by: str
    #: what making it needs beyond the core install
    needs: str
    #: what the file is
    description: str


_FORMATS = (
    ExportFormat("onnx", ".onnx", "evad.export.exporter.Exporter", "torch, onnx, onnxscript",
                 "the whole detector, clip to detections, at a fixed input size with a dynamic "
                 "batch; evad custom ops carry model-local functions, so plain ONNX Runtime and "
                 "OpenVINO run it; <name>.parity.json beside it when parity was checked"),
    ExportFormat("engine", ".engine", "evad.engines.builder.build", "TensorRT and an NVIDIA GPU",
                 "a TensorRT engine built from the ONNX (evad-build-engine, or evad-export's "
                 "engine step), with its .engine.json sidecar of the same metadata"),
)


def export_formats() -> tuple[ExportFormat, ...]:
    """The formats an EVAD export offers, in the order they are made (each from the one
    before): the ONNX this module writes, then the engine built from it."""
    return _FORMATS


def _suffix(name: str) -> str:
    return next(f.suffix for f in _FORMATS if f.name == name)


@dataclass(frozen=True)
class ParityCheck:
    """The exporter's parity step: the staged ONNX in a backend against the torch reference on
    seeded clips (``evad.export.parity.compare``); the ONNX is moved into place only if it
    passes.

    The caller opens the backend (``open``), because runners are opened through
    ``evad.runtime.backends.open_runner``, which this stage may not import.
    """

    #: seeded clips, batch 1 each
    clips: int
    #: the seed of the clips (``evad.export.parity.seeded_inputs``)
    seed: int
    #: the staged ``.onnx`` -> a runner on it (closed after the check)
    open: Callable[[Path], Runner]
    #: the backend, as the report beside the ONNX names it
    backend: str = "onnxruntime (CPU)"
    #: the backend, short, for the log lines and the summary
    label: str = "ORT CPU"


@dataclass(frozen=True)
class Exported:
    """What one export made."""

    #: the ONNX, in place (where it would have been, when parity failed: then it is not there)
    path: Path
    #: its metadata (the one dict, as written into the file)
    meta: dict[str, Any]
    #: the model's preset (keep-rate override applied)
    preset: Preset
    #: GFLOPs per clip of the model at the input size
    gflops: float
    #: seconds from the start of the trace to the file written into the staging folder
    export_s: float
    #: the parity report (None: not checked); when it failed, nothing was moved into place
    report: parity.ParityReport | None = None
    #: the INT8 Q/DQ ONNX beside ``path`` (None: not asked for) and its metadata
    int8_path: Path | None = None
    int8_meta: dict[str, Any] | None = None

    @property
    def written(self) -> bool:
        """Whether the ONNX is in place (not refused by parity)."""
        return self.report is None or self.report.passed


def write_int8(src: Path, dst: Path, calibration: int8.Calibration, *,
               progress: bool = False) -> dict[str, Any]:
    """The INT8 Q/DQ ONNX of the fp32 export ``src`` at ``dst``
    (``evad.export.int8.quantized_model``), with its metadata: ``src``'s, ``precision`` int8 and
    the ``quantization`` record. Returns that metadata. Write ``dst`` into a staging folder (an
    interrupt then leaves nothing)."""
    model, record = int8.quantized_model(src, calibration, workdir=dst.parent,
                                         progress=progress)
    meta = metadata.int8_metadata(read_metadata(src), record)
    write_metadata(model, meta)
    onnx.save_model(model, str(dst))
    return meta


def _memory_check(p: Preset, height: int, width: int) -> None:
    """Refuse an input size whose attention alone would not fit in this machine's memory (the
    exporter and the parity run hold a (heads, N, N) float32 score matrix per block)."""
    n = flops.token_counts(p, height, width)[0]
    need = 3 * 4 * max(p.num_heads, 1) * n * n  # scores, softmax, one copy; 4 bytes each
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ConfigError(f"input {height}x{width} gives {n} tokens; one attention block needs "
                          f"about {need / 2**30:.0f} GiB and this machine has "
                          f"{have / 2**30:.0f} GiB: use a smaller --height/--width")


class Exporter:
    """Exports EVAD models at one input size: configure once, call per model.

    Args:
        height, width: the fixed input size, pixels (multiples of 32).
        made_by: the command that exports (``evad-export``), recorded in the metadata's
            ``exporter`` key with the torch version.
        opset: default-domain ONNX opset (>= 17).
        precision: the precision asked of the engine built from this ONNX, recorded in the
            metadata (the ONNX itself is fp32).
        parity: the parity step (None: none).
        progress: draw the parity and calibration progress bars (stderr).
        calibration: also write the INT8 Q/DQ ONNX (``<name>.int8.onnx``), calibrated on this
            plan's clips (``evad.export.int8.Calibration``; None: no INT8).
        log: told each step as ``log(step, message)``, step ``export`` or ``parity``.

    Raises:
        ConfigError: a bad size or opset (before any work).
    """

    def __init__(self, height: int, width: int, *, made_by: str, opset: int = DEFAULT_OPSET,
                 precision: str = "fp32", parity: ParityCheck | None = None,
                 progress: bool = False, calibration: int8.Calibration | None = None,
                 log: Callable[[str, str], None] | None = None) -> None:
        validate_size(height, width)
        if opset < 17:
            raise ConfigError(f"opset {opset}: the export needs opset >= 17 "
                              "(LayerNormalization)")
        self.height, self.width = height, width
        self.made_by, self.opset, self.precision = made_by, opset, precision
        self.parity = parity if parity is not None and parity.clips > 0 else None
        self.progress = progress
        self.calibration = calibration
        self._log = log or (lambda step, msg: None)

    def __call__(self, out: str | os.PathLike, *, ckpt: str | os.PathLike | None = None,
                 preset: str | Preset | None = None, seed: int = 0,
                 keep_rate: float | None = None) -> Exported:
        """Export a checkpoint, or a preset's random weights, to ``out`` (a ``.onnx`` path).

        Args:
            out: where the ONNX goes; its folder is made; a file there is replaced only once
                the new one passed parity.
            ckpt, preset, seed, keep_rate: the model, as ``evad.models.load_or_build`` takes
                them (a checkpoint, or a preset's random weights drawn with ``seed``, calmed).

        Returns:
            What was made; ``written`` False when parity failed (nothing moved into place).

        Raises:
            ConfigError: ``out`` is not a ``.onnx`` path, or the input size needs more memory
                than this machine has. CheckpointError: as ``load_or_build``. EvadError: the
                exporter or the onnx checks failed.
        """
        out = Path(out)
        if out.suffix != _suffix("onnx"):
            raise ConfigError(f"{out}: an ONNX export is written to a {_suffix('onnx')} file")
        model, origin = self._load(ckpt, preset, seed, keep_rate)
        p = model.preset
        _memory_check(p, self.height, self.width)
        gflops = flops.flops(p, self.height, self.width)["total"]
        random = origin["sha256"] is None
        # the one metadata dict: every key written into the file comes from here
        meta = metadata.build_metadata(
            p, self.height, self.width, self.opset, checkpoint_sha256=origin["sha256"],
            precision=self.precision,
            exporter=f"{self.made_by}: torch.onnx dynamo (torch {torch.__version__})",
            random_weights=random, random_seed=origin["seed"] if random else None)
        rates = ", ".join(f"{r} at block {b}" for b, r in sorted(p.keep_rates.items())) or "none"
        self._log("export", f"input {self.height}x{self.width} (H x W), keep {rates}, tokens "
                  f"(all, then after each pruning block) {' -> '.join(map(str, meta['tokens']))}"
                  f", {gflops:.1f} GFLOPs/clip")
        t0 = time.perf_counter()
        self._log("export", "trace (torch.export) and translate to ONNX: the dynamo exporter "
                  "takes a while ...")
        proto = onnx_export.export_onnx(model, self.height, self.width, self.opset,
                                        log=lambda m: self._log("export", m))
        write_metadata(proto, meta)
        with onnx_export.Staging(out) as staging:
            staged = staging.write(proto)
            del proto  # the graph and weights, once more in memory, during the parity run
            export_s = time.perf_counter() - t0
            self._log("export", f"wrote {out} ({staging.size_mb():.1f} MB, opset {self.opset}) "
                      f"in {export_s:.1f} s")
            report = self._check(model, staged, staging.folder, out) if self.parity else None
            del model  # the torch weights: the INT8 calibration next needs the memory
            done = Exported(out, meta, p, gflops, export_s, report)
            if done.written and self.calibration is not None:
                done = self._int8(done, staged, staging.folder)
            if done.written:
                staging.commit()
        return done

    def _int8(self, done: Exported, staged: Path, folder: Path) -> Exported:
        """The INT8 Q/DQ ONNX of the staged export, calibrated and written into the staging
        folder (it moves into place with the fp32 ONNX; an interrupt leaves neither)."""
        assert self.calibration is not None  # only called with a calibration
        plan = self.calibration.plan
        name = done.path.name.removesuffix(_suffix("onnx")) + int8.INT8_SUFFIX
        self._log("int8", f"calibrating on {plan.clips} clips of {plan.data} ({plan.kind}) ...")
        t0 = time.perf_counter()
        meta = write_int8(staged, folder / name, self.calibration, progress=self.progress)
        kept = meta["quantization"]["float_nodes"]
        self._log("int8", f"wrote {done.path.parent / name} in {time.perf_counter() - t0:.1f} s "
                  f"({', '.join(int8.QUANTIZED_OPS)} quantized; {len(kept)} kept in float, "
                  "each with its reason in the metadata's quantization.float_nodes)")
        return dataclasses.replace(done, int8_path=done.path.parent / name, int8_meta=meta)

    def _load(self, ckpt: str | os.PathLike | None, preset: str | Preset | None, seed: int,
              keep_rate: float | None) -> tuple[EVAD, dict[str, Any]]:
        t0 = time.perf_counter()
        if ckpt is None and preset is None:
            raise ConfigError("no model to export: give a checkpoint or a preset")
        if ckpt is not None:
            self._log("export", f"loading {ckpt} ...")
            model, origin = models.load_or_build(ckpt, preset, keep_rate=keep_rate)
            self._log("export", f"loaded {ckpt} ({origin['preset_source']}: preset "
                      f"{origin['preset'].name}, weights {origin['dtype']}, trained keep rates "
                      f"{origin['trained_keep_rates'] or 'none'}) in "
                      f"{time.perf_counter() - t0:.1f} s")
        else:
            name = preset.name if isinstance(preset, Preset) else preset
            self._log("export", f"building preset {name} ...")
            model, origin = models.load_or_build(preset=preset, seed=seed, keep_rate=keep_rate)
            self._log("export", f"preset {name} with RANDOM weights (seed {seed}, calmed: see "
                      "EVAD.calm)")
        return model, origin

    def _check(self, model: EVAD, staged: Path, folder: Path, out: Path) -> parity.ParityReport:
        """Parity of the staged ONNX against ``model``; the report goes beside it (staged, so
        that it moves into place with it) when it passed."""
        check = self.parity
        assert check is not None  # only called with a parity step
        clips, sizes = parity.seeded_inputs(check.clips, 1, model.preset.num_frames,
                                            self.height, self.width, check.seed)
        with check.open(staged) as runner, \
                parity.ParityBar(len(clips), check.label, not self.progress) as bar:
            report = parity.compare(model, runner, clips, sizes, progress=bar.step)
        for line in report.lines():
            self._log("parity", f"{check.label} vs torch fp32: {line}")
        self._log("parity", "PASS" if report.passed else "FAIL")
        if report.passed:
            write_json_atomic(folder / out.with_suffix(".parity.json").name, {
                "backend": check.backend, "reference": "torch fp32, forced to the backend's "
                "kept tokens; oracle: the same in float64", "clips": len(clips),
                "clip_seed": check.seed, "input_size": [self.height, self.width],
                **report.to_dict()})
        return report
