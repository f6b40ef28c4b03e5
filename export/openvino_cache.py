"""Where OpenVINO's compiled models are kept, what their files are called, and how the folder
stays bounded.

Each compiled model in the cache is an IR (``evad-<key>.xml`` + ``.bin``, :func:`ir_path`;
the key is the export's and the rewrite's SHA-256, ``evad.export.openvino_runner``) and the blob
OpenVINO's model cache compiles from it (``<number>.blob``, named by OpenVINO); vit_b_ktp's pair
is about 1.5 GB. A changed export, rewrite or OpenVINO version is a new model, so without a
bound the folder only grows: it held 13 GB of one model's past versions on the machine this was
written on. Each model's ``.use`` file (JSON: the blobs its compiles made) is rewritten whenever
it is loaded, so its modification time is the model's last use, and :func:`prune_cache` keeps
the :func:`cache_keep` most recently used models. The folders are evad-deploy's own: a blob no
kept model claims is removed once an hour old, whoever wrote it. Filesystem only: no OpenVINO.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

from evad.atomic import write_json_atomic
from evad.cache import cache_dir
from evad.errors import ConfigError

__all__ = ["DEFAULT_CACHE_KEEP", "IR_PREFIX", "STRAY_AGE_S", "blobs_since", "cache_keep", "ir_path",
           "openvino_cache_dir", "precision_folder", "prune_cache", "record_use", "tmp_ir",
           "usable_cache"]

#: what every file evad-deploy names in a precision folder starts with
IR_PREFIX = "evad-"

#: compiled models kept per precision folder unless ``$EVAD_OPENVINO_CACHE_KEEP`` says otherwise
DEFAULT_CACHE_KEEP = 4
#: seconds a file that no kept model claims (a blob, a ``.tmp`` IR) is left alone: it may belong
#: to a compile still running in another process (vit_l's takes minutes on 2 cores)
STRAY_AGE_S = 3600.0


def openvino_cache_dir() -> str:
    """Where compiled models are kept, one folder per precision below it (OpenVINO's model
    cache and the IR files it is compiled from: compiling vit_b_ktp takes about 2 minutes on
    2 cores, loading it from the cache seconds): ``$EVAD_OPENVINO_CACHE``, else ``openvino``
    in evad-deploy's cache folder (``evad.cache.cache_dir``: ``$EVAD_CACHE``, default
    ``~/.cache/evad-deploy``); an empty ``EVAD_OPENVINO_CACHE`` turns the cache off."""
    return os.environ.get("EVAD_OPENVINO_CACHE", str(cache_dir() / "openvino"))


def usable_cache() -> bool:
    """Whether the cache folder exists or can be made (an unwritable home compiles uncached)."""
    folder = openvino_cache_dir()
    if not folder:
        return False
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def cache_keep() -> int:
    """How many compiled models each precision folder keeps (``$EVAD_OPENVINO_CACHE_KEEP``,
    default :data:`DEFAULT_CACHE_KEEP`).

    Raises:
        ConfigError: the variable is set to anything but a whole number >= 1.
    """
    raw = os.environ.get("EVAD_OPENVINO_CACHE_KEEP", "").strip()
    if not raw:
        return DEFAULT_CACHE_KEEP
    if not (raw.isascii() and raw.isdecimal()) or int(raw) < 1:
        raise ConfigError(f"EVAD_OPENVINO_CACHE_KEEP={raw!r}: set it to how many compiled models "
                          "to keep per precision, a whole number >= 1 (or set "
                          "EVAD_OPENVINO_CACHE= to turn the cache off)")
    return int(raw)


def precision_folder(precision: str) -> str:
    """One precision's folder in the cache. One folder per precision: OpenVINO's cache key does
    not include the inference precision hint, and a blob compiled at fp32 loaded for bf16 gave
    wrong outputs (96x192) or a crash (288x512)."""
    return os.path.join(openvino_cache_dir(), precision)


def ir_path(folder: str | Path, key: str, batched: bool = False) -> Path:
    """The cached IR (its ``.xml``; the ``.bin`` beside it) of the model named ``key``:
    ``-batch`` for one compiled with the export's symbolic batch."""
    return Path(folder, f"{IR_PREFIX}{key}{'-batch' if batched else ''}.xml")


def tmp_ir(target: Path) -> Path:
    """Where ``target`` is saved before it is renamed into place (one per process)."""
    return target.with_name(f"{target.stem}.{os.getpid()}.tmp.xml")


def blobs_since(folder: Path, start: float) -> set[str]:
    """The OpenVINO blobs in ``folder`` written at or after ``start`` (``time.time()``): the
    ones a compile that began then made. By date, not by name: OpenVINO names a blob after the
    IR's path and the compile options, so a model built again at its path writes a blob of the
    same name. A compile of another process in the same seconds is counted too, and its blob
    claimed by both models."""
    # start - 1 s: coarse file dates (1 s on some systems)
    return {b.name for b in folder.glob("*.blob") if (_mtime(b) or 0.0) >= start - 1.0}


def _use_file(ir: Path) -> Path:
    return ir.with_suffix(".use")


def _claimed(ir: Path) -> set[str]:
    """The blobs ``ir``'s ``.use`` file names: plain ``*.blob`` names in its folder only (none
    for a model cached before use files, or a file that is not one)."""
    try:
        names = json.loads(_use_file(ir).read_text())["blobs"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not isinstance(names, list):
        return set()
    return {b for b in names if isinstance(b, str) and b.endswith(".blob") and Path(b).name == b}


def record_use(ir: Path, new_blobs: AbstractSet[str] = frozenset()) -> None:
    """Mark the cached model ``ir`` (its ``.xml``) as used now, adding ``new_blobs`` (the blobs
    its compile just made) to those it claims."""
    write_json_atomic(_use_file(ir), {"blobs": sorted(_claimed(ir) | set(new_blobs))})


def _mtime(path: Path) -> float | None:
    """``path``'s modification time, None where it is gone."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _last_use(ir: Path) -> float:
    used = _mtime(_use_file(ir))  # a model cached before use files: when its IR was written
    return used if used is not None else _mtime(ir) or 0.0


def prune_cache(folder: Path, keep: int, protect: Path | None = None,
                now: float | None = None) -> list[Path]:
    """Remove from ``folder`` (one precision's) every compiled model but the ``keep`` most
    recently used (and ``protect``, the one this process loaded, whatever its date, and any IR
    still being built: no ``.use`` file yet and younger than :data:`STRAY_AGE_S`), with the
    blobs they claim, and stray files older than :data:`STRAY_AGE_S`: blobs no kept model
    claims, an IR's ``.tmp`` or a ``.use`` file's temporary of an interrupted write, a ``.use``
    or ``.bin`` whose ``.xml`` is gone. A file that cannot be removed (gone already, held by
    another process) is skipped. Returns what was removed.

    A model cached before use files claims no blob: its blob goes once it is an hour old, and
    OpenVINO compiles it again (claimed then) on the model's next load.
    """
    now = time.time() if now is None else now
    models = sorted((p for p in folder.glob(f"{IR_PREFIX}*.xml") if ".tmp." not in p.name),
                    key=_last_use, reverse=True)
    # an IR without a .use file younger than STRAY_AGE_S is being built (renamed into place,
    # its compile not yet done) by this or another process: never dropped
    building = [m for m in models
                if not _use_file(m).exists() and now - (_mtime(m) or 0.0) < STRAY_AGE_S]
    kept = [m for m in models if m == protect or m in building]
    kept += [m for m in models if m not in kept][:max(keep - len(kept), 0)]
    dropped = [m for m in models if m not in kept]
    claimed = set().union(*(_claimed(ir) for ir in kept))
    # the .xml first: an .xml is only ever seen beside its whole .bin
    doomed = [path for ir in dropped for path in (
        ir, ir.with_suffix(".bin"), _use_file(ir), *(folder / b for b in _claimed(ir) - claimed))]
    names = {m.name for m in models}
    strays = [*folder.glob("*.blob"), *folder.glob(f"{IR_PREFIX}*.tmp.*"),
              *folder.glob(f".{IR_PREFIX}*.tmp"),
              *(p for pattern in (f"{IR_PREFIX}*.use", f"{IR_PREFIX}*.bin")
                for p in folder.glob(pattern)
                if ".tmp." not in p.name and p.with_suffix(".xml").name not in names)]
    for stray in strays:
        written = _mtime(stray)
        if stray.name not in claimed and stray not in doomed and written is not None \
                and now - written > STRAY_AGE_S:
            doomed.append(stray)
    removed = []
    for path in doomed:
        try:
            path.unlink()
            removed.append(path)
        except OSError:  # gone already, a folder, held open (Windows): the next prune retries
            continue
    return removed
