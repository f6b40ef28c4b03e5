"""One concept, one place: the clip path and the detection step are each defined in one module
and their low-level pieces are called only there, so a second implementation (a decoder, a
resize, a normalisation, a keyframe rule, a person threshold of its own) fails this test instead
of drifting apart from the first. Read from the code (AST); tests hold their own oracles and are
not scanned."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("evad", "models", "export", "engines", "plugins", "runtime", "datasets", "training",
           "evaluation", "serving", "cli", "benchmarks", "examples")

#: name -> the one module that defines it (a def or class of that name anywhere else fails)
DEFINED_IN = {
    # the clip path: decode -> keyframe frames -> resize, normalise, pad
    "open_video": "evad/video.py", "open_live": "evad/video.py", "iter_frames": "evad/video.py",
    "iter_live": "evad/live.py", "probe_live": "evad/live.py",
    "clip_offsets": "evad/sampling.py", "clip_indices": "evad/sampling.py",
    "frame_at": "evad/sampling.py", "KeyframeSelector": "evad/sampling.py",
    "resized_size": "evad/preprocess.py", "Preprocessor": "evad/preprocess.py",
    # the detection step: clips -> runner -> people
    "detect_clips": "runtime/detection.py", "PersonRule": "runtime/detection.py",
    "keyframe_people": "runtime/postprocess.py",
    # what an input is (a file, frame folder, live source, or a job of many videos)
    "Source": "runtime/source.py",
}

#: a call of this (function or attribute name) -> the only modules that may make it
CALLED_ONLY_IN = {
    "VideoCapture": {"evad/video.py", "evad/live.py"},  # decoding
    "keyframe_people": {"runtime/detection.py"},  # the person rule and boxes back to frames
    "create": {"evad/preprocess.py"},  # Preprocessor.create: callers use for_model(spec)
    "frame_at": {"datasets/clips.py"},  # annotated keyframes -> frames (the runtime streams)
    "clip_indices": {"runtime/pipeline.py", "datasets/clips.py"},  # the one clamp
    "live_source": {"runtime/source.py"},  # an input is classified once
    "open_live": {"runtime/source.py"},
}


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/build/" in rel or "/__pycache__/" in rel:
                continue
            out.append((rel, ast.parse(path.read_text(encoding="utf-8"), rel)))
    return out


MODULES = _modules()


def _called_name(node: ast.Call) -> str | None:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


@pytest.mark.parametrize("name", sorted(DEFINED_IN))
def test_defined_once(name):
    where = [rel for rel, tree in MODULES for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and node.name == name]
    assert where == [DEFINED_IN[name]], f"{name} is defined in {where}"


@pytest.mark.parametrize("name", sorted(CALLED_ONLY_IN))
def test_called_only_in_its_place(name):
    allowed = CALLED_ONLY_IN[name]
    where = sorted({rel for rel, tree in MODULES for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and _called_name(node) == name
                    and rel not in allowed})
    assert where == [], f"{name}(...) is called outside {sorted(allowed)}: {where}"


def test_normalisation_and_person_threshold_have_one_home():
    """``x / 255`` against a mean or std, and reading a model's person threshold, happen in one
    module each (the token picture undoes the normalisation to draw it)."""
    scaled, thresholds = set(), set()
    for rel, tree in MODULES:
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and any(
                    isinstance(v, ast.Constant) and v.value in (255, 255.0)
                    for v in (node.left, node.right)):
                text = ast.unparse(node)
                if "mean" in text or "std" in text:
                    scaled.add(rel)
            if isinstance(node, ast.Attribute) and node.attr == "person_threshold" and \
                    "spec" in ast.unparse(node.value):
                thresholds.add(rel)
    assert scaled <= {"evad/preprocess.py", "runtime/tokens.py"}, scaled
    assert thresholds <= {"runtime/detection.py"}, thresholds


def test_the_scan_sees_the_tree():
    """The walk is not vacuous: it finds the modules and the calls it polices."""
    names = {rel for rel, _ in MODULES}
    assert {"evad/video.py", "runtime/detection.py", "datasets/clips.py"} <= names
    calls = {_called_name(n) for _, t in MODULES for n in ast.walk(t) if isinstance(n, ast.Call)}
    assert {"VideoCapture", "keyframe_people", "clip_indices", "frame_at"} <= calls
