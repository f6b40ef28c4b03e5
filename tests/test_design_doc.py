"""docs/design.md is true to the code where a machine can tell: the stage table's "may import"
column is the import rule tests/test_stage_imports.py enforces, and every concept of "One path per
concept" lives in the module the table names, defined there and nowhere else. (The backend table
is checked against ``BACKEND_TABLE`` in tests/test_backend_table.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_stage_imports import ALLOWED, STAGES

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
SOURCES = ("evad", "models", "export", "engines", "plugins", "runtime", "datasets", "training",
           "evaluation", "serving", "cli")


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``## heading`` (cells stripped, header dropped)."""
    section = DESIGN.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


STAGE_ROWS = _table("Stages and the direction of imports")
CONCEPT_ROWS = _table("One path per concept")


def test_the_stage_table_is_the_enforced_import_rule():
    stages = set(STAGES.values())
    doc = {}
    for folder, _, _, may in STAGE_ROWS:
        stage = STAGES[folder.strip("`/")]
        if may == "nothing of the stages":
            doc[stage] = set()
        elif may == "everything":
            doc[stage] = stages - {stage}
        else:
            doc[stage] = {m.strip() for m in may.split(",")}
    assert set(doc) == stages
    for stage, allowed in ALLOWED.items():
        assert doc[stage] == allowed - {stage}, stage


def _definitions() -> dict[str, list[tuple[str, str]]]:
    """name -> [(module path, enclosing class or "")] for every def and class in the package."""
    out: dict[str, list[tuple[str, str]]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/build/" in rel:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), rel)
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    out.setdefault(node.name, []).append((rel, ""))
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            out.setdefault(f"{node.name}.{item.name}", []).append((rel, node.name))
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Name):
                            out.setdefault(t.id, []).append((rel, ""))
    return out


DEFINITIONS = _definitions()


@pytest.mark.parametrize("row", CONCEPT_ROWS, ids=[r[0][:40] for r in CONCEPT_ROWS])
def test_each_concept_lives_where_the_table_says(row):
    concept, place, _ = row
    ticked = re.findall(r"`([^`]+)`", place)
    module = ticked[0]
    assert (ROOT / module).is_file(), f"{concept}: {module} does not exist"
    names = ticked[1:]
    if not module.endswith("ava_csv.py"):  # the CSV module is named whole
        assert names, f"{concept}: the table names no function"
    for name in names:
        if name.endswith(".py"):  # a second module of the concept (live sources)
            assert (ROOT / name).is_file(), name
            continue
        where = {rel for rel, _ in DEFINITIONS.get(name, [])}
        assert where == {module}, f"{concept}: {name} is defined in {sorted(where)}, " \
                                  f"not only in {module}"


def test_the_concept_table_is_not_empty():
    assert len(CONCEPT_ROWS) >= 10 and len(STAGE_ROWS) == len(STAGES)
