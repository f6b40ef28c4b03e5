"""Every documented command line parses with its command's own parser.

Command lines are taken from README.md, docs/*.md and plugins/**/README.md (code blocks, with
``\\`` continuations, ``&&`` chains and comments handled, and inline code spans) and from the
``--help`` epilog of every command. Each is parsed by the parser its command builds (and by the
checks the command makes right after parsing, before any work): an unknown flag, a bad value
or a refused combination fails the test with the file, the line and the command. Only parsing
runs: no command body, no file is read or written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from evad.errors import EvadError

ROOT = Path(__file__).resolve().parents[1]


#: each command's parser ("module:function"), imported only when used, so one command's
#: broken import fails its own lines, not every command's
PARSERS: dict[str, str] = {
    "evad-flops": "evad.models.flops:_parser",
    "evad-export": "evad.cli.export:_export_parser",
    "evad-build-engine": "evad.engines.cli:_parser",
    "evad-parity": "evad.cli.parity:_parser",
    "evad-trt-run": "evad.runtime.cli:parser",
    "evad-build-plugins": "evad.plugins.build:_parser",
    "evad-train": "evad.training.cli:parser",
    "evad-eval": "evad.evaluation.cli:parser",
    "evad-tokens": "evad.cli.tokens:_parser",
    "evad-bench": "evad.cli.bench:_parser",
    "evad-triton-repo": "evad.cli.triton_repo:parser",
    "evad-serve": "evad.serving.cli:parser",
}
#: the checks a command's main makes right after parse_args, before any work
CHECKS: dict[str, str] = {
    "evad-parity": "evad.cli.parity:_check_flags",
    "evad-build-plugins": "evad.plugins.build:_check_flags",
    # --engine-batch MIN,OPT,MAX: the first thing their bodies check
    "evad-build-engine": "evad.engines.cli:engine_batch(args.engine_batch)",
    "evad-export": "evad.engines.cli:engine_batch(args.engine_batch)",
}


def resolve(ref: str) -> Callable[..., Any]:
    """"module:function" -> the function; "module:function(args.x)" -> a check calling it
    with that one parsed value."""
    module, name = ref.split(":")
    call = re.fullmatch(r"(\w+)\(args\.(\w+)\)", name)
    fn = getattr(importlib.import_module(module), call[1] if call else name)
    if call:
        return lambda ap, args: fn(getattr(args, call[2]))
    return fn


def build_parser(command: str) -> argparse.ArgumentParser:
    """A fresh parser of ``command`` (tests may relax it)."""
    return resolve(PARSERS[command])()


#: placeholders the docs write in commands, and a value of the right kind for each
PLACEHOLDERS = {"<the runner's compute capability>": "90"}

#: inline code that shows part of a command in prose (its flags and values must still parse,
#: without the command's required arguments and cross-flag checks)
FRAGMENTS = {
    "evad-export --fp16": "the engine step's precision, named in prose",
    "evad-parity --backend openvino --precision bf16": "the options an --onnx parity takes",
    "evad-parity --layerwise": "the option, named in prose",
}
#: inline code naming a flag whose value the prose gives: the flag must exist
FLAG_MENTIONS = {"evad-eval --data"}
#: usage synopses (brackets: optional parts): every --flag in them must exist
SYNOPSES = {"evad-tokens [VIDEO] [--onnx M] [--time S ...]"}


@dataclass(frozen=True)
class Documented:
    """One documented command line."""

    where: str  # file:line
    text: str  # as written (placeholders replaced, continuations joined, comment stripped)
    argv: tuple[str, ...]  # the command and its arguments
    inline: bool  # from an inline code span in prose

    @property
    def command(self) -> str:
        """The command's name, as in [project.scripts]."""
        return self.argv[0]


@cache
def _commands() -> frozenset[str]:
    """The [project.scripts] names of pyproject.toml (tomllib is Python 3.11+; 3.10 is
    supported)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", text, re.M | re.S)
    assert section is not None, "pyproject.toml has no [project.scripts]"
    return frozenset(re.findall(r"^([\w-]+)\s*=", section[1], re.M))


def _split(where: str, line: str, inline: bool) -> Iterator[Documented]:
    """The project's commands in one shell line: ``a && evad-x ...; b | c`` -> evad-x ..."""
    for ph, value in PLACEHOLDERS.items():
        line = line.replace(ph, value)
    lex = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        words = list(lex)
    except ValueError as e:  # an unbalanced quote: fail where it is written
        raise AssertionError(f"{where}: cannot split {line!r}: {e}") from None
    segment: list[str] = []
    for word in [*words, ";"]:
        if word and set(word) <= set("&|;"):
            while segment and re.fullmatch(r"\w+=\S*", segment[0]):  # VAR=value prefixes
                segment.pop(0)
            if segment and segment[0] in _commands():
                yield Documented(where, shlex.join(segment), tuple(segment), inline)
            segment = []
        else:
            segment.append(word)


def from_markdown(path: Path) -> Iterator[Documented]:
    """Command lines of a markdown file: code blocks (not python) and inline code spans."""
    rel = path.relative_to(ROOT)
    lines = path.read_text().splitlines()
    fence: str | None = None
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            i += 1
            continue
        if fence is None:
            prose.append((i + 1, line))
            i += 1
            continue
        start, joined = i + 1, line
        while joined.endswith("\\") and i + 1 < len(lines):
            i += 1
            joined = joined[:-1] + " " + lines[i].strip()
        i += 1
        if fence not in ("python", "py") and any(c in joined for c in _commands()):
            yield from _split(f"{rel}:{start}", joined, inline=False)
    text = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    for m in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)*)`", text):
        span = " ".join(m[1].split())
        if span.split(" ", 1)[0] in _commands() and " " in span:
            line = numbers[text.count("\n", 0, m.start())]
            if span in SYNOPSES or span in FLAG_MENTIONS:
                argv = tuple(span.split())
                yield Documented(f"{rel}:{line}", span, argv, inline=True)
            else:
                yield from _split(f"{rel}:{line}", span, inline=True)


def from_epilog(command: str) -> Iterator[Documented]:
    """Command lines of a command's --help epilog (its examples)."""
    lines = (build_parser(command).epilog or "").splitlines()
    i = 0
    while i < len(lines):
        joined = lines[i].strip()
        start = i + 1
        while joined.endswith("\\") and i + 1 < len(lines):
            i += 1
            joined = joined[:-1] + " " + lines[i].strip()
        i += 1
        if joined.split(" ", 1)[0] in _commands():
            yield from _split(f"{command} --help epilog:{start}", joined, inline=False)


def documented() -> list[Documented]:
    """Every command line of the docs (plugins/build is a build cache) and of the epilogs."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted(p for p in (ROOT / "plugins").rglob("README.md")
                     if "build" not in p.relative_to(ROOT / "plugins").parts)]
    out = [d for f in files for d in from_markdown(f)]
    return out + [d for c in sorted(PARSERS) for d in from_epilog(c)]


def _relaxed(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``ap`` without required arguments: a fragment's own flags and values still parse."""
    for action in ap._actions:
        action.required = False
    for group in ap._mutually_exclusive_groups:
        group.required = False
    return ap


def parse(doc: Documented) -> str | None:
    """Why ``doc`` does not parse (argparse's own message), or None."""
    ap = build_parser(doc.command)
    if doc.text in SYNOPSES or doc.text in FLAG_MENTIONS:
        flags = re.findall(r"--[\w-]+", doc.text)
        unknown = [f for f in flags if f not in ap._option_string_actions]
        return f"unknown flags {unknown}" if unknown or not flags else None
    fragment = doc.inline and doc.text in FRAGMENTS
    if fragment:
        ap = _relaxed(ap)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = ap.parse_args(list(doc.argv[1:]))
            if not fragment and doc.command in CHECKS:
                resolve(CHECKS[doc.command])(ap, args)
    except SystemExit as e:
        return None if e.code == 0 else err.getvalue().strip() or f"exit {e.code}"
    except EvadError as e:  # a check's own refusal (ConfigError), as the command words it
        return f"{type(e).__name__}: {e}"
    return None


def test_every_command_has_its_parser_here() -> None:
    """A new [project.scripts] entry needs its parser in PARSERS, so its docs are checked."""
    assert _commands() == set(PARSERS)


def test_every_documented_command_line_parses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # parsing touches no file; were it to write, it would be here
    docs = documented()
    failures = [f"{d.where}: {d.text}: {why}" for d in docs if (why := parse(d))]
    assert failures == []
    assert list(tmp_path.iterdir()) == []
    # every command is documented somewhere, and the examples blocks were found
    assert {d.command for d in docs} == set(PARSERS)
    assert {d.where.split(" ")[0] for d in docs if "epilog" in d.where} == {
        "evad-bench", "evad-build-engine", "evad-eval", "evad-export", "evad-flops",
        "evad-serve", "evad-train", "evad-tokens", "evad-trt-run", "evad-triton-repo"}


def test_allow_lists_are_in_use() -> None:
    """An allow-list entry whose command left the docs is stale: remove it."""
    texts = {d.text for d in documented()}
    assert sorted((set(FRAGMENTS) | FLAG_MENTIONS | SYNOPSES) - texts) == []
    written = "\n".join(p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
    assert [ph for ph in PLACEHOLDERS if ph not in written] == []


@pytest.mark.parametrize(("line", "message"), [
    ("evad-build-engine m.onnx --batch 1,4,16", "unrecognized arguments: --batch 1,4,16"),
    ("evad-build-engine m.onnx --engine-batch 4,1,16", "ConfigError: --engine-batch '4,1,16'"),
    ("evad-parity --engine e.engine --layerwise-against b.onnx", "--layerwise-against compares"),
    ("evad-build-plugins --tensorrt-lib libnvinfer.so", "only used with --static-registration"),
    ("evad-bench --preset tiny --paths trt,nope", "unknown path(s) nope"),
    ("evad-export --fp16 && evad-flops --height 33.5", "evad-export: error: one of the arguments"),
])
def test_a_wrong_command_line_is_caught(line: str, message: str) -> None:
    """The checker bites: wrong flags, values and combinations give the parser's message."""
    docs = list(_split("t:1", line, inline=False))
    whys = [parse(d) for d in docs]
    assert any(w is not None and message in w for w in whys), whys


def test_shell_lines_split_into_the_commands() -> None:
    line = ("python3 -m venv .venv && EVAD_DEBUG=1 evad-trt-run --render 'a b.mp4' | tee log; "
            "evad-flops --paper  # evad-export in a comment")
    assert [d.argv for d in _split("t:1", line, inline=False)] == [
        ("evad-trt-run", "--render", "a b.mp4"), ("evad-flops", "--paper")]


def test_documented_plugin_library_is_where_evad_build_plugins_puts_it(monkeypatch) -> None:
    from evad.plugins import library_path

    monkeypatch.delenv("EVAD_PLUGIN_LIB_DIR", raising=False)
    where = library_path().relative_to(ROOT).as_posix()
    given = [(d.where, value) for d in documented()
             for flag, value in zip(d.argv, d.argv[1:], strict=False)
             if flag == "--plugins" and value.endswith(".so")]
    assert given and all(path == where for _, path in given), (where, given)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_renders_without_doubled_percent_signs(command: str) -> None:
    """argparse %-formats help strings only (descriptions and epilogs are printed as written),
    so a '%%' outside a help string reaches the user as '%%'."""
    text = build_parser(command).format_help()
    assert "%%" not in text and command in text
