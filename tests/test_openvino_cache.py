"""The compiled-model cache's bound (``evad.export.openvino_cache``), on files made here: which
models stay (the most recently used), what goes with a dropped one (its IR, its ``.use`` file,
the blobs it claims) and which strays go (old unclaimed blobs, ``.tmp`` leftovers, orphaned
``.use`` files) while a compile that may still be running elsewhere is left alone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from evad.errors import ConfigError
from evad.export.openvino_cache import (
    DEFAULT_CACHE_KEEP,
    STRAY_AGE_S,
    blobs_since,
    cache_keep,
    prune_cache,
    record_use,
)

NOW = 1_800_000_000.0


def _at(path: Path, age_s: float, text: str = "x") -> Path:
    """``path`` written with ``text`` and dated ``age_s`` seconds before NOW."""
    path.write_text(text)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def _model(folder: Path, key: str, used_s_ago: float | None, blobs: list[str]) -> Path:
    """A cached model: its IR (written a day ago), its blobs (as old) and, unless
    ``used_s_ago`` is None (a model cached before use files), its ``.use`` file."""
    xml = _at(folder / f"evad-{key}.xml", 86400)
    _at(xml.with_suffix(".bin"), 86400)
    for blob in blobs:
        _at(folder / blob, 86400)
    if used_s_ago is not None:
        _at(xml.with_suffix(".use"), used_s_ago, json.dumps({"blobs": blobs}))
    return xml


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_the_most_recently_used_stay_and_the_rest_go_with_their_blobs(tmp_path: Path) -> None:
    _model(tmp_path, "a", 10, ["1.blob"])
    _model(tmp_path, "b", 500, ["2.blob"])
    _model(tmp_path, "c", 9000, ["3.blob", "4.blob"])
    removed = prune_cache(tmp_path, keep=2, now=NOW)
    assert _names(tmp_path) == {"evad-a.xml", "evad-a.bin", "evad-a.use", "1.blob",
                                "evad-b.xml", "evad-b.bin", "evad-b.use", "2.blob"}
    assert {p.name for p in removed} == {"evad-c.xml", "evad-c.bin", "evad-c.use", "3.blob",
                                         "4.blob"}
    assert prune_cache(tmp_path, keep=2, now=NOW) == []  # nothing more to do


def test_a_model_without_a_use_file_is_dated_by_its_ir(tmp_path: Path) -> None:
    """A model cached before use files counts as last used when its IR was written (a day
    ago here): older than one used an hour ago, newer than one used two days ago."""
    _model(tmp_path, "old", 2 * 86400, ["1.blob"])
    _model(tmp_path, "legacy", None, [])
    _model(tmp_path, "new", 3600, ["2.blob"])
    prune_cache(tmp_path, keep=2, now=NOW)
    assert {p.name for p in tmp_path.glob("*.xml")} == {"evad-new.xml", "evad-legacy.xml"}
    assert not (tmp_path / "1.blob").exists()


def test_strays_go_once_old_and_a_running_compile_is_left_alone(tmp_path: Path) -> None:
    _model(tmp_path, "a", 10, ["1.blob"])
    _at(tmp_path / "old.blob", STRAY_AGE_S + 60)  # nobody's, an hour old: goes
    _at(tmp_path / "fresh.blob", 30)  # nobody's yet: a compile in another process
    _at(tmp_path / "evad-z.4242.tmp.bin", STRAY_AGE_S + 60)  # an interrupted save
    _at(tmp_path / "evad-y.4343.tmp.bin", 30)  # a save in progress
    _at(tmp_path / "evad-gone.use", STRAY_AGE_S + 60, '{"blobs": []}')  # its IR was removed
    prune_cache(tmp_path, keep=4, now=NOW)
    assert _names(tmp_path) == {"evad-a.xml", "evad-a.bin", "evad-a.use", "1.blob",
                                "fresh.blob", "evad-y.4343.tmp.bin"}


def test_a_blob_a_kept_model_claims_stays_even_if_a_dropped_one_claims_it(
        tmp_path: Path) -> None:
    _model(tmp_path, "a", 10, ["shared.blob"])
    _model(tmp_path, "b", 9000, ["shared.blob", "2.blob"])
    prune_cache(tmp_path, keep=1, now=NOW)
    assert _names(tmp_path) == {"evad-a.xml", "evad-a.bin", "evad-a.use", "shared.blob"}


def test_record_use_dates_the_model_now_and_adds_its_new_blobs(tmp_path: Path) -> None:
    xml = _model(tmp_path, "a", 9000, ["1.blob"])
    record_use(xml, {"2.blob"})
    use = xml.with_suffix(".use")
    assert json.loads(use.read_text()) == {"blobs": ["1.blob", "2.blob"]}
    assert abs(use.stat().st_mtime - time.time()) < 60  # dated now, not 9000 s before NOW
    record_use(tmp_path / "evad-new.xml")  # no use file yet: one is made, claiming nothing
    assert json.loads((tmp_path / "evad-new.use").read_text())["blobs"] == []


def test_cache_keep_reads_its_variable(monkeypatch) -> None:
    monkeypatch.delenv("EVAD_OPENVINO_CACHE_KEEP", raising=False)
    assert cache_keep() == DEFAULT_CACHE_KEEP
    monkeypatch.setenv("EVAD_OPENVINO_CACHE_KEEP", " 2 ")
    assert cache_keep() == 2
    for bad in ("0", "-1", "two", "1.5", "\u00b2"):
        monkeypatch.setenv("EVAD_OPENVINO_CACHE_KEEP", bad)
        with pytest.raises(ConfigError, match="EVAD_OPENVINO_CACHE_KEEP=.*whole number >= 1"):
            cache_keep()


def test_the_model_just_loaded_stays_whatever_its_date(tmp_path: Path) -> None:
    """``protect``: a model whose use could not be recorded (an old date) is not removed by the
    prune that follows its own load; keep 0 (room before a build) removes every other."""
    old = _model(tmp_path, "old", 9000, ["1.blob"])
    _model(tmp_path, "new", 10, ["2.blob"])
    prune_cache(tmp_path, keep=1, protect=old, now=NOW)
    assert {p.name for p in tmp_path.glob("*.xml")} == {"evad-old.xml"}
    assert (tmp_path / "1.blob").exists() and not (tmp_path / "2.blob").exists()
    prune_cache(tmp_path, keep=0, now=NOW)
    assert _names(tmp_path) == set()


def test_a_legacy_models_blob_goes_once_old_and_an_orphaned_bin_too(tmp_path: Path) -> None:
    _model(tmp_path, "legacy", None, [])
    _at(tmp_path / "its.blob", STRAY_AGE_S + 60)  # claimed by no use file
    _at(tmp_path / "evad-half.bin", STRAY_AGE_S + 60)  # its .xml never renamed into place
    _at(tmp_path / "evad-saving.bin", 30)  # renamed a moment ago, its .xml next
    _at(tmp_path / ".evad-x.use.abc123.tmp", STRAY_AGE_S + 60)  # an interrupted record_use
    prune_cache(tmp_path, keep=4, now=NOW)
    assert _names(tmp_path) == {"evad-legacy.xml", "evad-legacy.bin", "evad-saving.bin"}


def test_a_file_that_cannot_be_removed_does_not_stop_the_rest(tmp_path: Path) -> None:
    _model(tmp_path, "a", 10, ["1.blob"])
    _model(tmp_path, "b", 9000, ["2.blob"])
    (tmp_path / "evad-b.bin").unlink()
    (tmp_path / "evad-b.bin").mkdir()  # unlink() refuses a folder
    removed = prune_cache(tmp_path, keep=1, now=NOW)
    assert {p.name for p in removed} == {"evad-b.xml", "evad-b.use", "2.blob"}
    assert (tmp_path / "evad-b.bin").is_dir()


def test_a_use_file_names_only_blobs_in_its_own_folder(tmp_path: Path) -> None:
    """What a ``.use`` file claims is trusted only as plain ``*.blob`` names: a path elsewhere
    (or anything not a name) is neither removed with its model nor kept."""
    outside = _at(tmp_path.parent / f"{tmp_path.name}-victim.blob", 10)
    cache = tmp_path / "fp32"
    cache.mkdir()
    _model(cache, "a", 10, ["1.blob"])
    bad = _model(cache, "b", 9000, [])
    bad.with_suffix(".use").write_text(json.dumps(
        {"blobs": [str(outside), "../x.blob", 7, "notes.txt"]}))
    os.utime(bad.with_suffix(".use"), (NOW - 9000, NOW - 9000))
    prune_cache(cache, keep=1, now=NOW)
    assert outside.exists()
    assert {p.name for p in cache.glob("*.xml")} == {"evad-a.xml"}
    record_use(bad, set())  # rewritten with what is valid of it: nothing
    assert json.loads(bad.with_suffix(".use").read_text())["blobs"] == []


def test_an_ir_still_being_built_is_never_dropped(tmp_path: Path) -> None:
    """An IR renamed into place whose compile has not finished has no ``.use`` file yet: a
    prune (keep 0: another process making room) leaves it while it is younger than
    STRAY_AGE_S, and treats it as any old model after."""
    _model(tmp_path, "a", 10, ["1.blob"])
    fresh = _at(tmp_path / "evad-fresh.xml", 30)
    _at(fresh.with_suffix(".bin"), 30)
    prune_cache(tmp_path, keep=0, now=NOW)
    assert _names(tmp_path) == {"evad-fresh.xml", "evad-fresh.bin"}
    prune_cache(tmp_path, keep=0, now=NOW + STRAY_AGE_S)
    assert _names(tmp_path) == set()


def test_blobs_since_counts_by_date_not_by_name(tmp_path: Path) -> None:
    """A model built again at its path gets a blob of the same name: the blobs a compile made
    are those dated from its start."""
    _at(tmp_path / "old.blob", 600)
    _at(tmp_path / "same-name.blob", 0)
    _at(tmp_path / "notes.txt", 0)
    assert blobs_since(tmp_path, NOW - 1) == {"same-name.blob"}
