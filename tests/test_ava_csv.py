"""The AVA CSV format in one module (``evad.ava_csv``) and IoU in one (``evad.boxes``): the
writers' bytes, write -> read round trips, the reader's one-line errors, the resume path reading
a staged CSV back with that reader, and an AST check that no other module formats or parses AVA
rows or defines an IoU."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evad.ava_csv import (
    CsvRow,
    TruthRow,
    format_csv_row,
    format_truth_row,
    parse_rows,
    read_excluded,
    read_rows,
    write_csv_atomic,
    write_truth_csv_atomic,
)
from evad.boxes import box_iou
from evad.errors import EvadError
from evad.runtime.outputs import DetectionWriter
from evad.runtime.postprocess import keyframe_people
from evad.sampling import Keyframe

ROOT = Path(__file__).resolve().parents[1]
#: the project's code (tests read CSVs to check them, so they are not scanned)
CODE = ["evad", "models", "export", "engines", "plugins", "runtime", "datasets", "training",
        "evaluation", "serving", "cli", "benchmarks", "examples"]
CSV_MODULE = ROOT / "evad" / "ava_csv.py"
BOX_MODULE = ROOT / "evad" / "boxes.py"
#: what the CSV module alone may define
CSV_NAMES = {"format_csv_row", "format_truth_row", "format_time", "by_score", "parse_rows",
             "read_rows", "read_excluded", "write_csv_atomic", "write_truth_csv_atomic",
             "CsvRow", "TruthRow"}
#: ``.split(",")`` outside the CSV module, each over a command-line option, not a CSV line:
#: (file, enclosing function) -> what it splits
OPTION_SPLITS = {("engines/cli.py", "engine_batch"): "--batch MIN,OPT,MAX",
                 ("cli/bench.py", "_rates"): "--keep-rates 0.7,0.5",
                 ("cli/bench.py", "_paths"): "--paths torch,ort",
                 ("benchmarks/op_profile.py", "main"): "--precisions bf16,fp32",
                 ("benchmarks/openvino_memory.py", "main"): "--recipes runner,torch-fp32"}


def test_detection_row_bytes() -> None:
    """Whole seconds as integers, boxes to 4 decimals, scores to 6, ``\\n``: the bytes every
    ``detections.csv`` has had."""
    assert format_csv_row(("v1", 902.0, (0.1, 0.23456, 0.999999, 1.0), 3, 0.123456789)) == \
        "v1,902,0.1000,0.2346,1.0000,1.0000,3,0.123457\n"
    assert format_csv_row(("v", 1.5, (0.0, 0.00005, 0.5, 0.75), 80, 1e-9)) == \
        "v,1.5,0.0000,0.0001,0.5000,0.7500,80,0.000000\n"
    assert format_csv_row(("v", 12.3456, (0, 0, 1, 1), 2, 0.5)) == \
        "v,12.346,0.0000,0.0000,1.0000,1.0000,2,0.500000\n"


def test_truth_row_bytes() -> None:
    """The synthetic generator's bytes (``csv.writer``'s): the 4-decimal box as its shortest
    repr, ``\\r\\n``, an absent person id empty, a video id with a comma quoted."""
    assert format_truth_row(("syn000007", 1, (0.0, 0.12044, 0.15151, 0.885249), 2, 0)) == \
        "syn000007,1,0.0,0.1204,0.1515,0.8852,2,0\r\n"
    assert format_truth_row(("a,b", 3.0, (0.5, 0.25, 0.938, 1.0), 7, None)) == \
        '"a,b",3,0.5,0.25,0.938,1.0,7,\r\n'


def test_round_trip_detections(tmp_path: Path) -> None:
    rows: list[CsvRow] = [("v1", 0.0, (0.0, 0.1, 0.5, 0.9), 1, 0.75),
                          ("v1", 1.5, (0.25, 0.125, 1.0, 1.0), 80, 0.001),
                          ("clip-2", 902.0, (0.5, 0.5, 0.5625, 0.75), 3, 1.0)]
    path = tmp_path / "det.csv"
    write_csv_atomic(rows, path)
    assert read_rows(path, True) == rows  # values exact at 4 / 6 decimals
    assert [p.name for p in tmp_path.iterdir()] == ["det.csv"]  # no temporary file left
    write_csv_atomic([], path)
    assert path.read_bytes() == b"" and read_rows(path, True) == []  # no detections


def test_round_trip_ground_truth(tmp_path: Path) -> None:
    rows: list[TruthRow] = [("syn000001", 1.0, (0.0, 0.1204, 0.1515, 0.8852), 2, 0),
                            ("syn000001", 1.0, (0.0, 0.1204, 0.1515, 0.8852), 5, 0),
                            ("syn000001", 2.0, (0.4344, 0.1193, 0.6135, 0.8857), 1, None)]
    path = tmp_path / "gt.csv"
    write_truth_csv_atomic(rows, path)
    assert read_rows(path, False) == rows


@pytest.mark.parametrize(("text", "words"), [
    ("v,1,0,0,0.5,0.5,1,0.9\nv,1,0,0,nan,0.5,1,0.8\n",
     ("det.csv:2:", "column 5 (x2)", "'nan'", "finite number")),
    ("v,1,0,0,0.5,0.5,1,0.9\n\nv,2,0,0,0.5,0.5,1\n",
     ("det.csv:3:", "7 column(s)", "has 8", "score")),
    ("video,seconds,x1,y1,x2,y2,action,score\n",
     ("det.csv:1:", "column 2 (seconds)", "a header row?")),
    ("v,1,0,0,0.5,0.5,walk,0.9\n", ("det.csv:1:", "column 7 (action id)", "not an integer")),
    (',1,0,0,0.5,0.5,1,0.9\n', ("det.csv:1:", "column 1 (video) is empty")),
])
def test_reader_refuses_in_one_line_with_the_line_number(tmp_path: Path, text: str,
                                                         words: tuple[str, ...]) -> None:
    path = tmp_path / "det.csv"
    path.write_text(text)
    with pytest.raises(EvadError) as e:
        read_rows(path, True)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_reader_of_ground_truth_and_exclusions(tmp_path: Path) -> None:
    """Ground truth must have rows (a person id is optional); exclusions are ``video, seconds``
    and an empty file excludes nothing."""
    gt = tmp_path / "gt.csv"
    gt.write_text("\n\n")
    with pytest.raises(EvadError, match="has no rows"):
        read_rows(gt, False)
    gt.write_text("v,1,0,0,0.5,0.5,4\n")
    assert read_rows(gt, False) == [("v", 1.0, (0.0, 0.0, 0.5, 0.5), 4, None)]
    ex = tmp_path / "ex.csv"
    ex.write_text("")
    assert read_excluded(ex) == set() and read_excluded(None) == set()
    ex.write_text("v,902\nw,1.5\n")
    assert read_excluded(ex) == {("v", 902.0), ("w", 1.5)}
    ex.write_text("v,902\nw\n")
    with pytest.raises(EvadError, match=r"ex\.csv:2: 1 column\(s\)"):
        read_excluded(ex)


def test_text_reader_names_its_source() -> None:
    with pytest.raises(EvadError, match=r"^staged x\.csv:2: column 8 \(score\) is 'inf'"):
        parse_rows("v,0,0,0,1,1,1,0.5\nv,0,0,0,1,1,1,inf\n", "staged x.csv", True)


def _staged_run(out: Path) -> tuple[DetectionWriter, Path]:
    """A run of two keyframes, stopped (closed, not finished): one person of two classes each."""
    w = DetectionWriter(out, "v", ["a", "b"], {"video": "v"})
    w.open()
    people = keyframe_people(np.array([[0, 0, 4, 4]], np.float32), np.array([0.9], np.float32),
                             np.array([[0.6, 0.1]], np.float32), (1, 1), (8, 8), 0.5)
    w.write_batch([(Keyframe(0, 0.0, 0, 0.0), people), (Keyframe(1, 1.5, 15, 1.5), people)])
    w.close()
    return w, out / ".evad-staging" / "detections.csv"


def test_resume_reads_the_staged_csv_with_the_one_reader(tmp_path: Path) -> None:
    """A cut last line is dropped, every kept row stays byte for byte; a whole line that is not
    a row (changed by hand) refuses the resume in one line naming it."""
    _, csv_part = _staged_run(tmp_path)
    written = csv_part.read_bytes()
    assert written.count(b"\n") == 4
    csv_part.write_bytes(written + b"v,2,0.0000,0.00")  # a kill in the middle of a row
    w = DetectionWriter(tmp_path, "v", ["a", "b"], {"video": "v"}, resume=True)
    w.open()
    w.close()
    assert w.done == {0, 1}
    assert csv_part.read_bytes() == written
    csv_part.write_bytes(written + b"v,2,0.0000,oops,0.5000,0.5000,1,0.600000\n")
    with pytest.raises(EvadError) as e:
        DetectionWriter(tmp_path, "v", ["a", "b"], {"video": "v"}, resume=True).open()
    assert str(e.value).startswith(f"cannot resume: staged detections {csv_part}:5: column 4 "
                                   "(y1) is 'oops'")


def test_box_iou_values() -> None:
    a = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5]])
    b = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0], [2.0, 2.0, 3.0, 3.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0], [0.5, 0.25 / 1.25, 0.0]])
    flat = np.array([[10.0, 0.0, 10.0, 5.0]])  # clipped flat against an image edge
    near = np.array([[10.2, 0.0, 10.2, 5.3]])
    assert box_iou(flat, near)[0, 0] == 0.0  # no area, no overlap
    assert box_iou(flat, near, flat_match=0.5)[0, 0] == 1.0
    assert box_iou(flat, near + 1.0, flat_match=0.5)[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def _modules() -> list[Path]:
    return [p for d in CODE for p in sorted((ROOT / d).rglob("*.py"))
            if "build" not in p.relative_to(ROOT).parts[:-1]]


def _enclosing(tree: ast.AST) -> dict[ast.AST, str]:
    """Each node -> the name of the function it is in ("" at module level)."""
    out: dict[ast.AST, str] = {}

    def walk(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef,
                                                     ast.AsyncFunctionDef)) else name
            out[child] = inner
            walk(child, inner)
    walk(tree, "")
    return out


def test_only_the_csv_module_formats_or_parses_ava_rows_and_only_boxes_has_an_iou() -> None:
    """A second writer or reader of the format, or a second IoU, fails here: no other module
    imports ``csv``, splits text at commas (outside the listed command-line options), or
    defines a name of the CSV module; no module but ``evad/boxes.py`` defines an IoU (the
    training loss's ``box_giou`` is another measure, in torch for its gradients)."""
    bad = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        where = _enclosing(tree)
        for node in ast.walk(tree):
            line = getattr(node, "lineno", 0)
            if path != CSV_MODULE:
                if isinstance(node, ast.Import) and any(a.name == "csv" for a in node.names) \
                        or isinstance(node, ast.ImportFrom) and node.module == "csv":
                    bad.append(f"{rel}:{line}: imports csv")
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in CSV_NAMES:
                    bad.append(f"{rel}:{line}: defines {node.name}")
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id in CSV_NAMES for t in node.targets):
                    bad.append(f"{rel}:{line}: defines {ast.unparse(node.targets[0])}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "split" and node.args
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value == ","
                        and (rel, where.get(node, "")) not in OPTION_SPLITS):
                    bad.append(f"{rel}:{line}: splits at commas in {where.get(node) or 'module'}")
            if path != BOX_MODULE and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and "iou" in node.name.lower().split("_"):  # _iou, box_iou, iou_matrix
                bad.append(f"{rel}:{line}: defines an IoU ({node.name}): use evad.boxes.box_iou")
    assert not bad, "\n".join(bad)


def test_the_csv_and_box_modules_need_no_torch() -> None:
    """A CPU deployment writes and reads detections without torch or any heavy package."""
    blocked = ["torch", "cv2", "onnx", "onnxruntime", "tensorrt", "av"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "import evad.ava_csv, evad.boxes\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
