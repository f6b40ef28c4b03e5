"""Where OpenVINO's compiled models are kept, and how the folder stays bounded.

Each compiled model in the cache is an IR (``evad-<key>.xml`` + ``.bin``, named by the export's
and the rewrite's SHA-256: ``evad.export.openvino_runner._compile``) and the blob OpenVINO's
model cache compiles from it (``<number>.blob``, named by OpenVINO); vit_b_ktp's pair is about
1.5 GB. A changed export, rewrite or OpenVINO version is a new model, so without a bound the
folder only grows: it held 13 GB of one model's past versions on the machine this was written
on. Each model's ``.use`` file (JSON: the blobs its compiles made) is rewritten whenever it is
loaded, so its modification time is the model's last use; after each compile the folder keeps
the :func:`cache_keep` most recently used models and removes the rest with their blobs.
Filesystem only: no OpenVINO here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from evad.atomic import write_json_atomic
from evad.cache import cache_dir
from evad.errors import ConfigError

__all__ = ["DEFAULT_CACHE_KEEP", "STRAY_AGE_S", "blob_names", "cache_keep", "openvino_cache_dir",
           "prune_cache", "record_use", "usable_cache"]

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
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"EVAD_OPENVINO_CACHE_KEEP={raw!r}: set it to how many compiled models "
                          "to keep per precision, a whole number >= 1 (or set "
                          "EVAD_OPENVINO_CACHE= to turn the cache off)")
    return int(raw)


def blob_names(folder: Path) -> set[str]:
    """The OpenVINO blobs in ``folder`` now (to tell which ones a compile made)."""
    return {p.name for p in folder.glob("*.blob")}


def _use_file(ir: Path) -> Path:
    return ir.with_suffix(".use")


def _claimed(ir: Path) -> set[str]:
    """The blobs ``ir``'s ``.use`` file names (none for a model cached before use files)."""
    try:
        return set(json.loads(_use_file(ir).read_text())["blobs"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def record_use(ir: Path, new_blobs: set[str] = frozenset()) -> None:
    """Mark the cached model ``ir`` (its ``.xml``) as used now, adding ``new_blobs`` (the blobs
    its compile just made) to those it claims."""
    write_json_atomic(_use_file(ir), {"ir": ir.name, "blobs": sorted(_claimed(ir) | new_blobs)})


def _last_use(ir: Path) -> float:
    for path in (_use_file(ir), ir):  # a model cached before use files: when it was written
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def prune_cache(folder: Path, keep: int, now: float | None = None) -> list[Path]:
    """Remove from ``folder`` (one precision's) every compiled model but the ``keep`` most
    recently used, with the blobs they claim, and stray files older than :data:`STRAY_AGE_S`
    (blobs no kept model claims, ``.tmp`` leftovers of an interrupted compile, ``.use`` files
    whose IR is gone). A file another
    process removed first is skipped. Returns what was removed.

    A model cached before use files claims no blob: its blob goes once it is an hour old, and
    OpenVINO compiles it again (claimed then) on the model's next load.
    """
    now = time.time() if now is None else now
    models = sorted((p for p in folder.glob("evad-*.xml") if ".tmp." not in p.name),
                    key=_last_use, reverse=True)
    kept, dropped = models[:keep], models[keep:]
    claimed = set().union(*(_claimed(ir) for ir in kept)) if kept else set()
    doomed = [path for ir in dropped for path in (
        ir, ir.with_suffix(".bin"), _use_file(ir), *(folder / b for b in _claimed(ir) - claimed))]
    orphans = [u for u in folder.glob("evad-*.use") if not u.with_suffix(".xml").exists()]
    for stray in (*folder.glob("*.blob"), *folder.glob("*.tmp.*"), *orphans):
        if stray.name not in claimed and stray not in doomed:
            try:
                if now - stray.stat().st_mtime > STRAY_AGE_S:
                    doomed.append(stray)
            except OSError:
                continue
    removed = []
    for path in doomed:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
    return removed
