"""A run's output folder as a transaction: staged, then committed whole, or abandoned.

A run writes into a staging folder, ``OUT/.evad-staging/``, which holds its own ``run.json``
(settings, ``complete: false``) beside the files being written, so a run killed at any moment
leaves what it finished readable there for ``--resume``. A finished run in ``OUT`` is not
touched until the new one completes; then its files are moved into ``OUT`` (``os.replace``:
each file is the old one or the whole new one) and ``OUT/run.json`` is rewritten last, naming
every file beside it with its size and SHA-256. While the files move, ``OUT/run.json`` says
``complete: false``: at no moment does a ``run.json`` that says complete sit beside files of
another run.

The settings a resume must match are the content of the model (its SHA-256) and of the video
(size, and the SHA-256 of its first and last MiB) and every option that changes results; the
paths are recorded (``source``) but not compared, so the same file under another spelling
resumes. What the files hold is ``evad.runtime.outputs``'s.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from evad.atomic import write_json_atomic
from evad.errors import EvadError
from evad.hashing import file_sha256

__all__ = ["RUN_NAME", "STAGING", "ResumeMode", "StagedRun", "damage", "folder_mode", "read_run",
           "settings_change"]

#: the run record in the output folder (and in its staging folder while the run goes on)
RUN_NAME = "run.json"
#: the folder inside ``--out`` where a run writes until it completes
STAGING = ".evad-staging"

#: what a folder holds for a run's settings: ``done`` (finished with them), ``resume`` (an
#: interrupted run of them is staged), ``fresh`` (nothing of them)
ResumeMode = Literal["done", "resume", "fresh"]


def settings_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first setting that differs, said for a person (``""``: none)."""
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            what = {"model_sha256": "the model file's content (SHA-256)",
                    "video_identity": "the video's content (size / first and last MiB)"
                    }.get(k, k)
            a, b = old.get(k), new.get(k)
            if isinstance(a, str) and len(a) == 64:
                a, b = f"{a[:12]}...", f"{str(b)[:12]}..."
            return f"{what}: {a!r} then, {b!r} now"
    return ""


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_run(out_dir: Path) -> dict[str, Any]:
    """``out_dir``'s ``run.json`` ({} when missing or unreadable)."""
    return _read_json(out_dir / RUN_NAME) or {}


def damage(out_dir: Path, files: Any) -> str:
    """"" when every file a ``run.json`` records (``{name: {"bytes", "sha256"}}``) is in
    ``out_dir`` with that size and SHA-256; else one phrase naming the first that is not. The
    size is checked first; each file is then hashed (SHA-256: 0.9 GB/s measured on the 2-core
    development VM, so a finished run's CSV, JSONL and a render of a few hundred MB verify in
    well under a second each)."""
    if not isinstance(files, dict):
        return f"{RUN_NAME} lists no files"
    for name, record in files.items():
        path = out_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(record, dict):
            continue  # a run.json from before the sizes were recorded: presence only
        size = path.stat().st_size
        if record.get("bytes", size) != size:
            return f"{name} is {size} bytes where {RUN_NAME} records {record['bytes']}"
        if "sha256" in record and file_sha256(path) != record["sha256"]:
            return f"{name} no longer has the SHA-256 {RUN_NAME} records"
    return ""


def folder_mode(out_dir: Path, settings: dict[str, Any], needs: Sequence[str] = ()
                ) -> ResumeMode:
    """What ``out_dir`` holds for a run of ``settings``: ``done``: a finished run, every file
    its ``run.json`` lists in place with the size and SHA-256 recorded there, and each of
    ``needs`` among them; ``resume``: an interrupted one, staged; ``fresh``: nothing of these
    settings, or a finished run whose files were damaged since (it is run again)."""
    run = read_run(out_dir)
    files = run.get("files", {})
    if run.get("complete") and run.get("settings") == settings and \
            all(n in files for n in needs) and not damage(out_dir, files):
        return "done"
    staged = _read_json(out_dir / STAGING / RUN_NAME)
    if staged and staged.get("settings") == settings:
        return "resume"
    return "fresh"


class StagedRun:
    """One run's transaction on ``out_dir``.

    Args:
        out_dir: the output folder.
        settings: what must match for ``--resume``: model and video content, options.
        source: recorded in ``run.json``, never compared (paths, model name).

    In order: :meth:`resumes` (does this run continue the staged one?), :meth:`begin` (the
    staging folder is this run's), files written into :meth:`part`, then :meth:`commit` (and
    :meth:`add_output` for outputs made after it) or, after a failure, :meth:`abandon`. The
    caller holds ``out_dir``'s ``FolderLock`` throughout.
    """

    def __init__(self, out_dir: Path, settings: dict[str, Any],
                 source: dict[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.source = dict(source or {})
        self.staging = self.out_dir / STAGING
        self.run_path = self.out_dir / RUN_NAME
        self.note = ""  # what begin() found in out_dir, for the log
        self.committed = False
        self.summary: dict[str, Any] = {}
        self._owned = False  # begin() ran: the staging folder is this run's
        self._recorded: dict[str, dict[str, Any]] = {}  # outputs moved in: name -> size, hash

    def part(self, name: str) -> Path:
        """Where the output ``name`` is written until :meth:`commit`."""
        return self.staging / name

    def _state(self, complete: bool, **more: Any) -> dict[str, Any]:
        return {"complete": complete, "settings": self.settings, "source": self.source, **more}

    def _finished_settings(self) -> dict[str, Any] | None:
        """The settings of the finished run in ``out_dir`` (``run.json`` complete), or None."""
        run = _read_json(self.run_path)
        if run is None or run.get("complete") is not True:
            return None
        settings = run.get("settings")
        return settings if isinstance(settings, dict) else {}

    def resumes(self, resume: bool, record: str) -> bool:
        """Whether this run continues the run staged in ``out_dir``: ``resume`` is asked and
        the staged ``record`` (the file that lists what is done) is there. Then the caller
        reads back what the staging holds before :meth:`begin`. Otherwise :attr:`note` says
        what a fresh run finds.

        Raises:
            EvadError: the staged run's settings are unreadable or differ (the first difference
                named), or ``resume`` of a finished run of other settings; nothing is changed.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        finished = self._finished_settings()
        if resume and self.part(record).is_file():
            staged = _read_json(self.part(RUN_NAME))
            old = None if staged is None else staged.get("settings", {})
            if not isinstance(old, dict):
                raise EvadError(f"cannot resume: {self.part(RUN_NAME)} is unreadable, so what "
                                "the staged run was made with is unknown; drop --resume to "
                                "start again")
            diff = settings_change(old, self.settings)
            if diff:
                raise EvadError(f"cannot resume {self.out_dir}: {diff}; use another --out or "
                                "drop --resume to start again")
            return True
        diff = settings_change(finished, self.settings) if finished is not None else ""
        if resume and diff:
            # a finished run is never what --resume replaces: the user asked to continue
            raise EvadError(f"cannot resume {self.out_dir}: it holds a finished run and "
                            f"{diff}; its files are left as they are: use another --out, "
                            "or drop --resume to replace that run")
        # only a --resume asks whether the finished run is whole (a run without it replaces
        # the finished one anyway, so its files are not hashed for nothing)
        broken = damage(self.out_dir, read_run(self.out_dir).get("files", {})) \
            if finished is not None and resume else ""
        if broken:
            self.note = (f"{self.out_dir} holds a finished run, but {broken}: running it again "
                         "(the damaged run stays until this one completes)")
        elif finished is not None:
            self.note = (f"{self.out_dir} holds a finished run: it stays as it is until this "
                         "run completes, then this run replaces it")
        elif resume:
            self.note = f"nothing to resume in {self.out_dir}: starting from the start"
        return False

    def begin(self, fresh: bool) -> None:
        """Take the staging folder (``fresh``: emptied first, any unfinished run there
        discarded) and mark it: its ``run.json`` says ``complete: false``."""
        if fresh:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        self._owned = True
        write_json_atomic(self.part(RUN_NAME), self._state(complete=False))

    def _add_files(self, *names: str) -> dict[str, dict[str, Any]]:
        """Record the size and SHA-256 of outputs now in ``out_dir`` (each hashed once) and
        return every output recorded so far, for ``run.json``."""
        for n in names:
            self._recorded[n] = {"bytes": (self.out_dir / n).stat().st_size,
                                 "sha256": file_sha256(self.out_dir / n)}
        return dict(self._recorded)

    def commit(self, summary: dict[str, Any], names: Sequence[str],
               stale: Sequence[str] = ()) -> None:
        """Move the staged ``names`` into ``out_dir`` and rewrite its ``run.json`` last.

        A finished run that was there is replaced only now; its ``stale`` outputs (ones this
        run does not make now: they showed the other run) are removed. If this is killed
        half-way, ``run.json`` says ``complete: false``."""
        for n in names:  # on disk before run.json can say so
            with open(self.part(n), "rb") as fh:
                os.fsync(fh.fileno())
        self.summary = summary
        if self.run_path.exists():
            write_json_atomic(self.run_path, {
                "complete": False, "note": "a new run is replacing the files here; the "
                "detections may be of either run until this says complete"})
        for n in stale:
            (self.out_dir / n).unlink(missing_ok=True)
        for n in names:
            os.replace(self.part(n), self.out_dir / n)
        write_json_atomic(self.run_path, self._state(
            True, summary=summary, files=self._add_files(*names)))
        self.committed = True
        shutil.rmtree(self.staging, ignore_errors=True)

    def staged_path(self, name: str) -> Path:
        """Where to write an extra output (``annotated.mp4``) before :meth:`add_output`."""
        self.staging.mkdir(exist_ok=True)
        return self.part(name)

    def add_output(self, name: str) -> Path:
        """Move a finished extra output from staging into ``out_dir`` and list it in
        ``run.json``."""
        assert self.committed, "commit() first"
        final = self.out_dir / name
        os.replace(self.part(name), final)
        write_json_atomic(self.run_path, self._state(
            True, summary=self.summary, files=self._add_files(name)))
        shutil.rmtree(self.staging, ignore_errors=True)
        return final

    def abandon(self, has_work: bool) -> bool:
        """After a failure: remove the staging folder unless it holds work to resume
        (``has_work``: finished keyframes) or was never this run's. Returns whether resumable
        work stays staged."""
        if self.committed:  # only an extra output was being made: nothing to resume
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        if has_work or not self._owned:
            return has_work
        shutil.rmtree(self.staging, ignore_errors=True)
        return False
