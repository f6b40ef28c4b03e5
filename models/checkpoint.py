"""Loading and saving EVAD checkpoints in the released layout.

Released files are ``torch.save`` dicts ``{"model_state": state_dict, "cfg": yaml_string, "epoch",
"optimizer_state", ...}``. The training config (``cfg``) is the source of the preset: keep rates,
widths, classes, read by ``evad.models.checkpoint_cfg`` (each value as the official code reads
it, ``evad.models.official_cfg``). Where there is none, the architecture is matched from the
tensor shapes. This module is the file: read (weights-only unless trusted), check the weights
against the preset, save atomically.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from evad.atomic import atomic_write
from evad.command import ArgumentParser, check_input_file, run_command
from evad.errors import CheckpointError, ConfigError
from evad.hashing import file_sha256
from evad.models.checkpoint_cfg import cfg_from_preset, preset_from_cfg
from evad.models.evad import EVAD
from evad.models.presets import PRESETS, Preset, get_preset

__all__ = [
    "WEIGHT_DTYPES",
    "check_weights",
    "convert_trusted",
    "load_checkpoint",
    "load_or_build",
    "official_state_dict",
    "save_checkpoint",
]

# Keys the released files carry that inference does not use.
_TRAINING_ONLY = re.compile(r"^criterion\.")
_EMPTY_WEIGHT = torch.tensor([1.0, 0.1])  # the no-object weight of the released loss


def official_state_dict(model: EVAD) -> dict[str, torch.Tensor]:
    """The model's state dict as the released files store it (with the loss's
    ``criterion.empty_weight`` buffer, which inference ignores)."""
    sd = dict(model.state_dict())
    sd["criterion.empty_weight"] = _EMPTY_WEIGHT.clone()
    return sd


def save_checkpoint(model: EVAD, path: str | os.PathLike, epoch: int = 0,
                    optimizer_state: dict | None = None, extra: dict | None = None,
                    half: bool = False) -> Path:
    """Write ``model`` in the released layout, atomically (temporary file, then rename).

    ``extra`` adds top-level entries (e.g. the trainer's step); ``half`` stores floating point
    weights as fp16 (half the file; ``load_checkpoint`` restores fp32)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = official_state_dict(model)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    blob = {
        "epoch": epoch,
        "model_state": state,
        "optimizer_state": optimizer_state or {},
        "cfg": cfg_from_preset(model.preset),
        "amp": None,
        **(extra or {}),
    }
    with atomic_write(path, "wb") as f:
        torch.save(blob, f)
    return path


_CONVERT = "python -m evad.models.checkpoint --convert-trusted {path} {out}"


def _read(path: Path, trusted: bool) -> Any:
    check_input_file(path, "checkpoint", error=CheckpointError)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # torch.load raises many types for bad files
        text = str(e)
        if "Unsupported global" in text:  # a pickle of objects, not a corrupt file
            out = path.with_name(path.stem + ".weights" + path.suffix)
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors; loading those "
                "runs code from the file (pickle can execute anything), so evad-deploy does not. "
                "If you trust where it came from, convert it once to a weights-only file: "
                + _CONVERT.format(path=path, out=out)) from e
        # torch's own text suggests weights_only=False, which is wrong advice for a file
        # that is corrupt or no checkpoint at all: keep only what the unpickler found
        found = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in \
            text else text
        reason = next((x.strip() for x in found.splitlines() if x.strip()), type(e).__name__)
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated, corrupt or not "
                              f"a PyTorch checkpoint ({reason[:200]})") from e


def convert_trusted(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite a TRUSTED checkpoint that holds pickled Python objects as one that the safe
    loader reads: tensors, numbers, strings, lists and dicts only (other objects become their
    ``str``). Loading ``src`` runs any code it holds: only for files you trust.

    Returns:
        ``dst``, written atomically.
    """
    obj = _read(Path(src), trusted=True)

    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.detach().clone()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)

    dst = Path(dst)
    with atomic_write(dst, "wb") as f:
        torch.save(plain(obj), f)
    return dst


#: the weight dtypes a checkpoint may store (fp32 training, fp16 / bf16 copies); loaded as fp32
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_weights(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  path: Path) -> str:
    """Refuse weights that cannot be the model's: a floating tensor stored as an integer or in
    an unexpected dtype, or with NaN / inf values (the key is named).

    Returns:
        the dtype(s) the floating weights were stored in (``float16``).
    """
    stored = set()
    for k, ref in expected.items():
        v = sd[k]
        if ref.is_floating_point():
            if v.dtype not in WEIGHT_DTYPES:
                raise CheckpointError(
                    f"{path}: weight {k!r} is stored as {str(v.dtype).removeprefix('torch.')}; "
                    "EVAD's weights are float32, float16 or bfloat16 (an integer weight is a "
                    "corrupt or quantized file)")
            stored.add(str(v.dtype).removeprefix("torch."))
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CheckpointError(f"{path}: weight {k!r} has {bad} of {v.numel()} values "
                                      "that are NaN or infinite: the training diverged or the "
                                      "file is corrupt")
        elif v.dtype != ref.dtype:
            raise CheckpointError(f"{path}: buffer {k!r} is {v.dtype}, the model's is "
                                  f"{ref.dtype}")
    return "+".join(sorted(stored)) or "none"


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    for key in ("model_state", "model", "module", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            sd, extra = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd, extra = obj, {}
        else:
            raise CheckpointError(
                f"{path} has no state dict: expected a 'model_state', 'model', 'module' or "
                f"'state_dict' entry or a bare state dict; found keys {sorted(obj)[:8]}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: state dict entry {k!r} is a {type(v).__name__}, "
                                  "not a tensor")
        k = k[len("module."):] if k.startswith("module.") else k
        if not _TRAINING_ONLY.match(k):
            out[k] = v
    return out, extra


def _preset_from_shapes(sd: Mapping[str, torch.Tensor]) -> Preset:
    """Match the architecture by tensor shapes (keep rates cannot be read from weights)."""
    try:
        classes = int(sd["det_head.decoder.blocks.0.action_logits.weight"].shape[0])
    except KeyError:
        raise CheckpointError("the state dict has no det_head.decoder.blocks.0.action_logits: "
                              "it is not an EVAD checkpoint") from None
    shapes = {k: tuple(v.shape) for k, v in sd.items() if not _TRAINING_ONLY.match(k)}
    # the pruning (KTP) variants first: their shapes equal the plain ViTs'
    order = ["vit_b_ktp", "vit_l_ktp"] + [n for n in PRESETS if n not in ("vit_b_ktp",
                                                                         "vit_l_ktp")]
    for name in order:
        p = get_preset(name, num_classes=classes)
        with torch.device("meta"):
            ref = EVAD(p).state_dict()
        if {k: tuple(v.shape) for k, v in ref.items()} == shapes:
            if name == "vit_b_ktp":
                warnings.warn("checkpoint has no cfg: architecture matched ViT-B by shapes; keep "
                              "rates cannot be read from weights, so vit_b_ktp's (0.7 at blocks "
                              "3, 6, 9) are assumed. Pass preset= or keep_rate= to choose.",
                              stacklevel=3)
            return p
    raise CheckpointError("the checkpoint has no cfg and its shapes match no known preset "
                          f"({', '.join(PRESETS)}); pass preset= with the right sizes")


def load_checkpoint(
    path: str | os.PathLike,
    keep_rate: float | None = None,
    preset: str | Preset | None = None,
    trusted: bool = False,
) -> tuple[EVAD, dict]:
    """Load an EVAD checkpoint (released layout, or a bare / wrapped state dict), eval mode.

    Args:
        path: the ``.pth`` / ``.pyth`` file.
        keep_rate: override the trained keep rate of every pruning block (the paper runs a
            0.7-trained model at 0.6 .. 0.9 without retraining); 1.0 disables pruning.
        preset: force the architecture instead of reading it from ``cfg`` or the shapes.
        trusted: allow arbitrary pickled objects (``torch.load(weights_only=False)``).

    Returns:
        (model, meta) where meta holds ``preset`` (Preset), ``preset_source`` ("argument", "cfg"
        or "shapes"), ``trained_keep_rates``, ``epoch``, ``sha256``, ``path`` and ``dtype`` (what
        the weights were stored as; the model is float32).

    Raises:
        CheckpointError: unreadable file, pickled objects (unless ``trusted``), no state dict,
            missing or unexpected keys (listed), tensors whose shapes do not fit the preset,
            integer or non-finite weights, or a config with wrong types or sizes.
    """
    path = Path(path)
    sd, extra = _extract_state_dict(_read(path, trusted), path)
    # a config is read even when the preset is forced: a broken one means a broken file
    from_cfg = preset_from_cfg(extra["cfg"]) if extra.get("cfg") is not None else None
    if preset is not None:
        p, source = (get_preset(preset) if isinstance(preset, str) else preset), "argument"
    elif from_cfg is not None:
        p, source = from_cfg, "cfg"
    else:
        p, source = _preset_from_shapes(sd), "shapes"
    trained = dict(p.keep_rates)
    if keep_rate is not None:
        p = p.replace(keep_rate=keep_rate)
    model = EVAD(p)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        raise CheckpointError(
            f"{path} does not match preset {p.name!r} ({source}): "
            f"{len(missing)} missing key(s) [{show(missing)}], "
            f"{len(unexpected)} unexpected key(s) [{show(unexpected)}]")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) have shapes that do not fit preset "
                              f"{p.name!r} ({source}): {'; '.join(wrong[:4])}")
    dtype = check_weights(sd, expected, path)
    model.load_state_dict(sd, strict=True)
    model.eval()
    meta = {"preset": p, "preset_source": source, "trained_keep_rates": trained,
            "epoch": extra.get("epoch"), "sha256": file_sha256(path), "path": str(path),
            "dtype": dtype}
    return model, meta


def load_or_build(
    ckpt: str | os.PathLike | None = None,
    preset: str | Preset | None = None,
    *,
    seed: int = 0,
    keep_rate: float | None = None,
) -> tuple[EVAD, dict]:
    """The model a command works on: a checkpoint's weights, or a preset's random weights
    (seeded, then calmed: ``EVAD.calm``), in eval mode. Every command that takes "a checkpoint
    or a preset" (export, bench, parity) gets its model here, so the same seed gives the same
    weights in each of them.

    Args:
        ckpt: a checkpoint (any layout :func:`load_checkpoint` reads); None: build ``preset``.
        preset: with ``ckpt``, the architecture to force (``load_checkpoint``'s ``preset``);
            without, the preset (name or Preset) whose random weights are drawn.
        seed: torch's global seed, set just before the random weights are drawn (unused with
            a checkpoint).
        keep_rate: override the keep rate of every pruning block (0 < r <= 1); 1.0 disables
            pruning.

    Returns:
        (model, meta): for a checkpoint ``load_checkpoint``'s meta plus ``seed`` None; for
        random weights the same keys with ``preset_source`` "random", ``seed``, ``dtype``
        "float32", and ``epoch``, ``sha256``, ``path`` None.

    Raises:
        ConfigError: neither a checkpoint nor a preset, an unknown preset or a bad keep rate.
        CheckpointError: as :func:`load_checkpoint`.
    """
    if ckpt is not None:
        model, meta = load_checkpoint(ckpt, keep_rate=keep_rate, preset=preset)
        return model, {**meta, "seed": None}
    if preset is None:
        raise ConfigError("no model: give a checkpoint or a preset")
    p = get_preset(preset) if isinstance(preset, str) else preset
    trained = dict(p.keep_rates)
    if keep_rate is not None:
        p = p.replace(keep_rate=keep_rate)
    torch.manual_seed(seed)
    model = EVAD(p).eval().calm()
    return model, {"preset": p, "preset_source": "random", "trained_keep_rates": trained,
                   "epoch": None, "sha256": None, "path": None, "dtype": "float32",
                   "seed": seed}


def main(argv: list[str] | None = None) -> int:
    """``python -m evad.models.checkpoint --convert-trusted SRC DST``."""
    ap = ArgumentParser(prog="python -m evad.models.checkpoint", description="Convert a "
                        "TRUSTED checkpoint that holds pickled Python objects into a weights-only "
                        "file that evad-deploy loads safely. Loading SRC runs any code it holds.")
    ap.add_argument("--convert-trusted", nargs=2, metavar=("SRC", "DST"), type=Path,
                    required=True)
    args: argparse.Namespace = ap.parse_args(argv)

    def body() -> int:
        src, dst = args.convert_trusted
        out = convert_trusted(src, dst)
        model, meta = load_checkpoint(out)
        print(f"wrote {out}: preset {meta['preset'].name} ({meta['preset_source']}), weights "
              f"{meta['dtype']}; it loads without trusted=True")
        return 0

    return run_command(ap.prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
