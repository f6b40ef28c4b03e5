"""One exporter entry (issue #25): ``evad-export``, ``evad-bench``'s ONNX paths and the demo
model export through ``evad.export.exporter.Exporter`` alone, and the model they export comes
from ``evad.models.load_or_build`` alone.

The export itself (``export_onnx``, ~25 s per call on the 2-core VM) is made once per weights,
size and opset here and handed to every later call with the same arguments: the graph is a
function of those, and what this file checks is what each command records and where its files
go, not the graph (``tests/test_export_model.py`` checks that)."""

from __future__ import annotations

import argparse
import ast
import hashlib
from pathlib import Path

import onnx
import pytest

from evad.cli import bench as cli_bench
from evad.cli import export as cli_export
from evad.errors import ConfigError
from evad.export import onnx_export
from evad.export.demo import DEMO_INPUT, demo_onnx
from evad.export.exporter import Exporter, ParityCheck, export_formats
from evad.export.metadata import PROVENANCE_KEYS
from evad.export.sizes import DEFAULT_OPSET
from evad.hashing import file_sha256
from evad.metadata import read_metadata
from evad.models import load_or_build
from evad.models.demo import demo_checkpoint
from evad.runtime.backends import open_runner

ROOT = Path(__file__).resolve().parents[1]
H, W = DEMO_INPUT


@pytest.fixture(scope="module", autouse=True)
def _export_once():
    """``export_onnx`` made once per (weights, preset, size, opset, options); a copy of the
    proto for each later call (the exporter writes its metadata into the proto it gets)."""
    real = onnx_export.export_onnx
    made: dict[tuple, onnx.ModelProto] = {}

    def once(model, height=288, width=512, opset=DEFAULT_OPSET, *args, log=None, **kwargs):
        sd = model.state_dict()
        weights = hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd)))
        key = (weights.hexdigest(), repr(model.preset), height, width, opset, args,
               tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = real(model, height, width, opset, *args, log=log, **kwargs)
        copy = onnx.ModelProto()
        copy.CopyFrom(made[key])
        return copy

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "export_onnx", once)
        yield


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The demo checkpoint at the demo input size and the default opset, exported by each
    command: ``made_by`` -> the ONNX."""
    tmp = tmp_path_factory.mktemp("entry")
    ckpt = demo_checkpoint()
    assert cli_export.main(["--ckpt", str(ckpt), "--height", str(H), "--width", str(W),
                            "--out", str(tmp / "export"), "--onnx-only", "--quiet"]) == 0
    bench_args = argparse.Namespace(ckpt=ckpt, preset=None, seed=0, height=H, width=W)
    bench = cli_bench._export(bench_args, None, tmp / "bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVAD_CACHE", str(tmp / "cache"))
        demo = demo_onnx()
    return {"evad-export": tmp / "export" / "demo.onnx", "evad-bench": bench,
            "evad.export.demo": demo}


def test_every_command_records_the_same_metadata(exports) -> None:
    """Bar 4: the same checkpoint, size and opset give the same metadata, whichever command
    exported it, except the keys that say where the file came from."""
    metas = {who: read_metadata(path) for who, path in exports.items()}
    what = {who: {k: v for k, v in m.items() if k not in PROVENANCE_KEYS}
            for who, m in metas.items()}
    first = what["evad-export"]
    for who, m in what.items():
        assert m == first, (who, {k for k in m.keys() | first.keys()
                                  if m.get(k) != first.get(k)})
    assert first["input_size"] == [H, W] and first["opset"] == DEFAULT_OPSET
    assert first["preset_name"] == "demo" and first["precision"] == "fp32"
    sha = file_sha256(demo_checkpoint())
    for who, m in metas.items():  # the provenance each one records
        assert m["checkpoint_sha256"] == sha, who
        assert m["exporter"].startswith(f"{who}: torch.onnx dynamo (torch "), m["exporter"]
        assert "random_seed" not in m


def test_evad_export_writes_its_parity_report_beside_the_onnx(exports) -> None:
    """The ONNX passed parity in ONNX Runtime (one clip, the default) and its report came
    into place with it; the staging folder is gone."""
    folder = exports["evad-export"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["demo.onnx", "demo.parity.json"]
    assert sorted(p.name for p in exports["evad-bench"].parent.iterdir()) == ["rhomodel.onnx"]


def test_a_preset_records_its_seed_and_rebuilds_the_same_weights() -> None:
    """``load_or_build``: a preset's weights are a function of the seed (``evad-parity``
    rebuilds them from the ONNX's random_seed); a checkpoint's come from the file."""
    a, meta = load_or_build(preset="tiny", seed=3, keep_rate=0.6)
    b, _ = load_or_build(preset=meta["preset"], seed=3)
    c, _ = load_or_build(preset="tiny", seed=4, keep_rate=0.6)
    assert meta["preset_source"] == "random" and meta["seed"] == 3 and meta["sha256"] is None
    assert meta["preset"].keep_rates == {3: 0.6, 6: 0.6, 9: 0.6}
    assert meta["trained_keep_rates"] == {3: 0.7, 6: 0.7, 9: 0.7}
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(sa[k].equal(sb[k]) for k in sa)
    assert not all(sa[k].equal(sc[k]) for k in sa)
    assert not a.training
    _, cmeta = load_or_build(demo_checkpoint())
    assert cmeta["preset_source"] == "cfg" and cmeta["seed"] is None
    assert cmeta["sha256"] == file_sha256(demo_checkpoint())


def test_failed_parity_leaves_nothing(tmp_path, monkeypatch, capsys) -> None:
    """evad-export against a backend that is not the model (other weights): exit 1 with the
    reason, and the output folder holds no ONNX, no report and no staging folder."""
    wrong, _ = load_or_build(preset="demo", seed=1)
    monkeypatch.setattr(cli_export, "_open_ort", lambda staged: open_runner(
        "torch", model=wrong, model_name="other weights", cuda=False)[0])
    out = tmp_path / "out"
    assert cli_export.main(["--ckpt", str(demo_checkpoint()), "--height", str(H), "--width",
                            str(W), "--out", str(out), "--onnx-only", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "failed parity" in err[-1] and f"{out / 'demo.onnx'} was not written" in err[-1]
    assert list(out.iterdir()) == []


def test_exporter_refusals_come_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match="multiples of 32"):
        Exporter(100, 256, made_by="tests")
    with pytest.raises(ConfigError, match="opset >= 17"):
        Exporter(H, W, made_by="tests", opset=16)
    with pytest.raises(ConfigError, match=r"\.onnx file"):
        Exporter(H, W, made_by="tests")(tmp_path / "m.engine", preset="tiny")
    with pytest.raises(ConfigError, match="a checkpoint or a preset"):
        Exporter(H, W, made_by="tests")(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    check = ParityCheck(0, 0, lambda p: open_runner("ort", onnx=p)[0])
    assert Exporter(H, W, made_by="tests", parity=check).parity is None  # 0 clips: no step
    assert [f.name for f in export_formats()] == ["onnx", "engine"]


# -- one path: no second export sequence, no second "checkpoint or calmed preset" ------------

#: folders of Python that ships or is run by hand (tests build their fixtures as they need)
_SOURCE = ["evad", "models", "export", "engines", "plugins", "runtime", "datasets", "training",
           "evaluation", "serving", "cli", "benchmarks", "examples"]
#: each step, and the only modules that may call it
_CALLERS = {
    "export_onnx": {"export/exporter.py"},
    "build_metadata": {"export/exporter.py"},
    "write_metadata": {"export/exporter.py"},
    "Staging": {"export/exporter.py", "export/onnx_export.py"},  # and save_model, its shortcut
    "save_model": set(),  # the staging's shortcut, for tests; the exporter stages itself
    "calm": {"models/checkpoint.py"},  # random weights are made in load_or_build alone
}


def _sources() -> list[Path]:
    return [p for folder in _SOURCE for p in sorted((ROOT / folder).rglob("*.py"))
            if "build" not in p.relative_to(ROOT).parts[1:-1]]


def _calls(tree: ast.AST) -> list[tuple[str, int]]:
    """Calls of the steps by name (``f(...)``, ``module.f(...)``); ``onnx.save_model`` is
    onnx's own, ``ov.save_model`` OpenVINO's (an IR file, not an export)."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            name = f.id
        elif isinstance(f, ast.Attribute):
            if isinstance(f.value, ast.Name) and f.value.id in ("onnx", "ov", "openvino"):
                continue
            name = f.attr
        else:
            continue
        if name in _CALLERS:
            out.append((name, node.lineno))
    return out


def test_the_scan_sees_calls_by_name_and_through_modules() -> None:
    tree = ast.parse("export_onnx(m)\nonnx_export.save_model(p, x)\nonnx.save_model(p, x)\n"
                     "build_model('tiny').eval().calm()\nov.save_model(m, p)\n")
    assert _calls(tree) == [("export_onnx", 1), ("save_model", 2), ("calm", 4)]


def test_only_the_exporter_runs_the_export_sequence() -> None:
    bad = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for name, line in _calls(ast.parse(path.read_text(), rel)):
            if rel not in _CALLERS[name]:
                bad.append(f"{rel}:{line} calls {name} (allowed in: "
                           f"{', '.join(sorted(_CALLERS[name])) or 'tests only'})")
    assert not bad, "a second export sequence or model source:\n" + "\n".join(bad)


def test_benchmarks_and_examples_use_no_command_module() -> None:
    """The demo assets are library code (``evad.export.demo``, ``evad.datasets.demo``):
    benchmarks and examples import them, and run commands as commands."""
    bad = []
    for folder in ("benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                        if n == "evad.cli" or n.startswith("evad.cli.")]
    assert not bad, bad
