"""torch -> ONNX for the whole detector: one graph from clip to detections.

Why the dynamo exporter (``torch.onnx.export(dynamo=True)``): it is the exporter current
PyTorch supports (the TorchScript exporter is deprecated and warns on every call), it reads our
``torch.library.custom_op`` registrations through their fake kernels, so the keep count K stays a
function of the input shapes, and its ``custom_translation_table`` lets each custom op become one
``evad`` node. Two things it does not do, which this module adds: it would inline an onnxscript
body (so the translation emits the registered ``evad`` op instead), and it does not attach
model-local functions (so the FunctionProtos are appended after export).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

from evad.command import one_line
from evad.errors import ConfigError, EvadError
from evad.export import attention
from evad.export.external_data import save_with_weights_file
from evad.export.ops import DOMAIN, TRANSLATIONS, function_protos
from evad.export.sizes import DEFAULT_OPSET, MAX_SIDE, validate_size
from evad.models.evad import EVAD
from evad.models.runner import pruning_blocks_at
from evad.runner import DETECTIONS, INPUT_CLIP, INPUT_IMAGE_SIZE, INPUTS, kept_idx_name

__all__ = ["DEFAULT_OPSET", "MAX_SIDE", "DetectorGraph", "Staging", "check_model",
           "export_onnx", "output_names", "save_model", "validate_size"]

_TWO_GB = 2 * 1024**3


class DetectorGraph(nn.Module):
    """What the ONNX graph computes.

    Inputs: ``clip`` (B, 3, T, H, W) float32, normalised and zero padded; ``image_size`` (B, 2)
    int64, the unpadded (h, w). Outputs: ``boxes`` (B, n, 4) x1y1x2y2 input pixels,
    ``person_scores`` (B, n), ``action_probs`` (B, n, classes) after sigmoid, and
    ``kept_idx_<i>`` (B, K_i) int64 per pruning block.
    """

    def __init__(self, model: EVAD) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: torch.Tensor, image_size: torch.Tensor):
        out = self.model(clip, image_size)
        return (out.boxes, out.person_scores, torch.sigmoid(out.action_logits),
                *out.kept_indices)


def output_names(model: EVAD, height: int, width: int) -> list[str]:
    """Graph output names, one ``kept_idx_<i>`` per block that prunes at this input size."""
    return [*DETECTIONS,
            *(kept_idx_name(b) for b in pruning_blocks_at(model.preset, height, width))]


def export_onnx(model: EVAD, height: int = 288, width: int = 512, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, attention_op: str = "fused",
                log: Callable[[str], None] | None = None) -> onnx.ModelProto:
    """Export ``model`` (eval mode) to an ONNX model with ``evad`` custom nodes and functions.

    Args:
        model: the torch reference.
        height, width: the fixed input size in pixels (multiples of 32).
        opset: default-domain opset (>= 17).
        dynamic_batch: make the batch dimension symbolic ("batch").
        attention_op: ``"fused"`` writes each attention as one ``com.microsoft``
            ``MultiHeadAttention`` (ONNX Runtime's flash kernel: no (B, heads, N, N) scores;
            ``evad.export.attention``), ``"standard"`` as MatMul + Softmax + MatMul.
        log: told each stage as it ends (traced and translated, checked).

    Returns:
        The checked model (full checker and strict shape inference pass).

    Raises:
        ConfigError: bad size or opset. EvadError: the exporter or the checks failed.
    """
    say = log or (lambda m: None)
    validate_size(height, width)
    if attention_op not in ("fused", "standard"):
        raise ConfigError(f"attention_op {attention_op!r}: 'fused' or 'standard'")
    if opset < 17:
        raise ConfigError(f"opset {opset}: the export needs opset >= 17 (LayerNormalization)")
    model = model.eval()
    # Batch 2 as the example: torch.export specialises a dimension of size 1.
    clip = torch.zeros(2, 3, model.preset.num_frames, height, width)
    image_size = torch.tensor([[height, width]] * 2, dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {INPUT_CLIP: {0: batch}, INPUT_IMAGE_SIZE: {0: batch}} if dynamic_batch else None
    names = output_names(model, height, width)
    printed = io.StringIO()  # what the exporter prints, kept off the caller's stdout
    table = {**TRANSLATIONS, **(attention.translations() if attention_op == "fused" else {})}
    # torch.onnx logs a warning per torchvision op it cannot register: noise for this model.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                DetectorGraph(model), (clip, image_size), dynamo=True, opset_version=opset,
                input_names=list(INPUTS), output_names=names, dynamic_shapes=shapes,
                custom_translation_table=table, verbose=False,
            )
    except ConfigError:
        raise
    except Exception as e:
        first = one_line(e)
        raise EvadError(f"torch.onnx.export failed: {first}") from e
    if program is None:  # only with a file argument, which is not given here
        raise EvadError("torch.onnx.export returned no ONNX program")
    proto = program.model_proto
    used = {n.op_type for n in proto.graph.node if n.domain == DOMAIN}
    proto.functions.extend(f for f in function_protos() if f.name in used)
    say(f"traced and translated: {len(proto.graph.node)} nodes, {len(proto.functions)} evad "
        f"functions; checking (onnx full checker, strict shape inference) ...")
    checked = check_model(proto)
    say("checks passed")
    return checked


def check_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Full checker and strict shape inference; returns the model with inferred shapes."""
    try:
        if proto.ByteSize() < _TWO_GB:
            onnx.checker.check_model(proto, full_check=True)
            return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                     data_prop=True)
        with tempfile.TemporaryDirectory() as tmp:  # > 2 GB: check through a file
            path = os.path.join(tmp, "model.onnx")
            save_with_weights_file(proto, path, min_bytes=1024)
            onnx.checker.check_model(path, full_check=True)
            onnx.shape_inference.infer_shapes_path(path, path, check_type=True, strict_mode=True,
                                                   data_prop=True)
            return onnx.load(path)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise EvadError(f"the exported ONNX model fails onnx's checks: {e}") from e


class Staging:
    """A staging folder beside an ONNX file's final place (one per export).

    The model goes in with :meth:`write` (weights in ``<name>.onnx.data`` when the file would
    pass protobuf's 2 GB limit), files that belong beside it (a parity report) go in
    :attr:`folder`, and :meth:`commit` moves them all into place, the ``.onnx`` last, so that
    its ``.data`` is there before it. A failed, refused or interrupted export leaves no file
    that looks like a good one: use it in ``with``, which removes the folder, committed or not.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        #: where the model ends up
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: the staging folder, hidden, in the destination folder (same file system: the moves
        #: are renames)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        #: the model's staged file (ONNX Runtime can open it there: its .data sits beside it)
        self.model = self.folder / self.path.name

    def write(self, proto: onnx.ModelProto) -> Path:
        """Write ``proto`` into the staging folder; returns the staged ``.onnx``."""
        if proto.ByteSize() >= _TWO_GB:
            save_with_weights_file(proto, self.model, min_bytes=0)
        else:
            onnx.save_model(proto, str(self.model))
        return self.model

    def size_mb(self) -> float:
        """What is staged so far, MB (the model and its external data)."""
        return sum(x.stat().st_size for x in self.folder.iterdir()) / 1e6

    def commit(self) -> Path:
        """Move every staged file into the destination folder, the model last; returns
        :attr:`path`. A folder in the staging folder is a step's working folder that could not
        be removed (``evad.export.int8``'s copy of the weights): it goes with the staging
        folder, not into the destination."""
        for x in self.folder.iterdir():
            if x != self.model and not x.is_dir():
                os.replace(x, self.path.parent / x.name)
        os.replace(self.model, self.path)
        return self.path

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``proto`` atomically (a :class:`Staging` committed at once); weights go to
    ``<name>.onnx.data`` when the file would pass protobuf's 2 GB limit. Nothing is left at
    ``path`` if writing fails."""
    with Staging(path) as staging:
        staging.write(proto)
        return staging.commit()
