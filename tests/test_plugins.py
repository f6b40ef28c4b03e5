"""The TensorRT plugins on a CPU machine: libevad_plugins.so builds with CMake + nvcc against
TensorRT headers and registers both creators in the runtime-only TensorRT; the Python plugins
register too; both sets implement the op contracts (evad/op_contracts.py): the same names,
version, namespace and fields, creation from the contract's defaults, and the same refusals of
bad fields with the same one-line message. The plugins stage imports no other evad stage.

The runtime-only TensorRT (tensorrt-lean-cu13-libs/-bindings) and nvcc/cmake are installed by
.ci/plugins.sh; outside CI a missing one skips with the reason, in CI (CI=true) it fails.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import skip_or_fail

from evad.op_contracts import CONTRACTS, NAMESPACE, PLUGIN_VERSION, ContractError
from evad.plugins import build, library_path, python_plugins

PLUGINS_DIR = build.source_dir()

#: Bad field collections, fed alike to the C++ and the Python creators: (op, changes to the
#: contract's defaults as {field: [value or values, TensorRT field type] or None to drop it},
#: the expected problem text, or None where the contract words it from the plain values).
REFUSALS = [
    ("RoIAlign3D", {"output_height": [0, "INT32"]}, None),
    ("RoIAlign3D", {"output_width": [7.0, "FLOAT32"]}, None),
    ("RoIAlign3D", {"spatial_scale": [-1.0, "FLOAT64"]}, None),
    ("RoIAlign3D", {"spatial_scale": [0.0625, "INT32"]},
     "spatial_scale must be a number, not a field of type INT32"),
    ("RoIAlign3D", {"sampling_ratio": [2**31, "INT64"]}, None),
    ("RoIAlign3D", {"aligned": [2, "INT8"], "output_height": None}, None),
    ("RoIAlign3D", {"output_width": [[7, 7], "INT32"]},
     "output_width must be an integer, not 2 values"),
    ("KeyframeTopKPrune", {"keep_num": [11, "INT16"]}, None),
    ("KeyframeTopKPrune", {"keep_den": [0, "INT32"], "keep_num": [11, "INT32"]}, None),
    ("KeyframeTopKPrune", {"keyframe_weight": [math.nan, "FLOAT32"]}, None),
    ("KeyframeTopKPrune", {"keyframe_weight": [1e300, "FLOAT64"]},
     "keyframe_weight must be finite, not inf"),
    ("KeyframeTopKPrune", {"keyframe_weight": [1, "INT64"]},
     "keyframe_weight must be a number, not a field of type INT64"),
]
#: Accepted: every int type for int fields, FLOAT64 for float fields, fields outside the contract.
ACCEPTED = [
    ("RoIAlign3D", {"output_height": [7, "INT8"], "output_width": [7, "INT64"],
                    "spatial_scale": [0.0625, "FLOAT64"], "sampling_ratio": [2, "INT16"],
                    "plugin_version": [[49], "CHAR"]}),
    ("KeyframeTopKPrune", {"keep_num": [10, "INT64"], "keyframe_weight": [4.0, "FLOAT64"],
                           "plugin_namespace": [[101, 118, 97, 100], "CHAR"]}),
]


def _expected_refusal(op: str, changes: dict, text: str | None) -> str:
    """The one stderr line both creator sets print for a refused collection."""
    c = CONTRACTS[op]
    if text is None:
        values = {**c.defaults, **{k: v[0] for k, v in changes.items() if v is not None}}
        for k, v in changes.items():
            if v is None:
                del values[k]
        with pytest.raises(ContractError) as info:
            c.validate(values)
        text = str(info.value)
    else:
        text = f"{c.domain}::{op}: {text}"
    return f"[evad plugin] {op}::createPlugin: {text}"



def _lean_available() -> bool:
    try:
        import tensorrt_lean_bindings  # noqa: F401
    except ImportError:
        return False
    return True


_PROBE = textwrap.dedent("""
    import json, os, sys, tempfile
    import numpy as np
    from evad.op_contracts import CONTRACTS
    from evad.plugins import load

    kind, library, cases, accepted = json.loads(sys.argv[1])
    trt = load(kind, library)
    reg = trt.get_plugin_registry()
    dtypes = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
              "FLOAT32": np.float32, "FLOAT64": np.float64, "CHAR": np.int8}
    keep = []

    def collection(op, changes=None):
        c = CONTRACTS[op]
        spec = {f.name: [f.default, "INT32" if f.kind == "int" else "FLOAT32"] for f in c.fields}
        for name, v in (changes or {}).items():
            if v is None:
                del spec[name]
            else:
                spec[name] = v
        fields = []
        for name, (value, ftype) in spec.items():
            a = np.array(value if isinstance(value, list) else [value], dtypes[ftype])
            keep.append(a)
            fields.append(trt.PluginField(name, a, getattr(trt.PluginFieldType, ftype)))
        return trt.PluginFieldCollection(fields)

    def create(creator, op, fc, phase=trt.TensorRTPhase.BUILD):
        # what the creator writes to fd 2 (C++ fprintf and Python print alike)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                plugin = creator.create_plugin(op, fc, phase)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            return plugin, tmp.read().decode()

    def fields_of(fc):
        return [(f.name, np.array(f.data).reshape(-1)[:1].tolist()) for f in fc]

    out = {"creators": {}, "refusals": [], "accepted": []}
    for op, c in CONTRACTS.items():
        cr = reg.get_creator(op, c.plugin_version, c.domain)
        p, err = create(cr, op, collection(op))
        core = p.get_capability_interface(trt.PluginCapabilityType.CORE) if p else None
        ser, round_trip, cloned = None, None, None
        if kind == "python":
            # The bindings expose clone/serialization of Python plugins only; the C++ ones are
            # checked by the C++ self-test (test_cpp_plugin_self_test).
            ser = fields_of(p.get_fields_to_serialize())
            p2, _ = create(cr, op, p.get_fields_to_serialize(), trt.TensorRTPhase.RUNTIME)
            round_trip = p2 is not None and fields_of(p2.get_fields_to_serialize()) == ser
            cloned = p.clone() is not None
        out["creators"][op] = {
            "name": cr.name, "version": cr.plugin_version, "namespace": cr.plugin_namespace,
            "fields": [[f.name, f.type.name] for f in cr.field_names],
            "created": p is not None, "stderr": err, "serialized": ser,
            "round_trip": round_trip, "clone": cloned,
            "plugin": [core.plugin_name, core.plugin_version, core.plugin_namespace]
            if core else None}
    for op, changes, _ in cases:
        p, err = create(reg.get_creator(op, "1", "evad"), op, collection(op, changes))
        out["refusals"].append([p is None, err])
    for op, changes in accepted:
        p, err = create(reg.get_creator(op, "1", "evad"), op, collection(op, changes))
        out["accepted"].append([p is not None, err])
    print("JSON" + json.dumps(out))
""")


def _probe(kind: str, library: str | None = None) -> dict:
    """Register one plugin set in a fresh interpreter (one set per process) and report each
    creator's name, version, namespace and fields, whether it creates a plugin from the
    contract's defaults, and what it does with REFUSALS and ACCEPTED."""
    arg = json.dumps([kind, library, REFUSALS, ACCEPTED])
    proc = subprocess.run([sys.executable, "-c", _PROBE, arg], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("JSON")][-1]
    return json.loads(line[4:])


def _expected_creators(kind: str) -> dict:
    kinds = {"int": "INT32", "float": "FLOAT32"}
    py = kind == "python"
    return {name: {"name": name, "version": PLUGIN_VERSION, "namespace": NAMESPACE,
                   "fields": [[f.name, kinds[f.kind]] for f in c.fields], "created": True,
                   "stderr": "", "plugin": [name, PLUGIN_VERSION, NAMESPACE],
                   "serialized": [[f.name, [pytest.approx(f.default)]] for f in c.fields]
                   if py else None, "round_trip": True if py else None,
                   "clone": True if py else None}
            for name, c in CONTRACTS.items()}


def _check_probe(got: dict, kind: str) -> None:
    assert got["creators"] == _expected_creators(kind)
    want = [[True, _expected_refusal(*case) + "\n"] for case in REFUSALS]
    assert got["refusals"] == want
    assert got["accepted"] == [[True, ""]] * len(ACCEPTED)


@pytest.fixture(scope="module")
def lean():
    if not _lean_available():
        skip_or_fail("the runtime-only TensorRT is not installed (pip install "
                      "tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings)")


def test_cpp_creators_register_in_lean_tensorrt(lean, plugin_library) -> None:
    _check_probe(_probe("cpp", plugin_library), "cpp")


def test_python_creators_register_in_lean_tensorrt(lean) -> None:
    _check_probe(_probe("python"), "python")


def test_fields_are_the_onnx_attributes() -> None:
    """The plugin fields are the ONNX schema's attributes (export/ops.py)."""
    from evad.export.ops import SCHEMAS

    for schema in SCHEMAS:
        assert set(schema.attributes) == set(CONTRACTS[schema.name].field_names)


def test_cpp_creators_read_the_contract_header() -> None:
    """Cheap guard without a build: each C++ plugin takes its fields from evadOpContract.h (no
    field name or type written by hand) and validates through readContractFields."""
    sources = {"RoIAlign3D": PLUGINS_DIR / "roi_align_3d" / "roiAlign3dPlugin.cpp",
               "KeyframeTopKPrune": PLUGINS_DIR / "keyframe_topk_prune" /
               "keyframeTopkPrunePlugin.cpp"}
    assert set(sources) == set(CONTRACTS)
    for name, path in sources.items():
        text = path.read_text()
        assert f"contract::k{name}Name" in text and f"contract::k{name}Fields" in text
        assert "readContractFields(" in text and "contractFieldNames(" in text
        assert 'PluginField("' not in text and "PluginFieldType::" not in text
        for f in CONTRACTS[name].fields:  # names only in the static_asserts on the order
            assert text.count(f'"{f.name}"') == 1, f.name
    assert "readContractFields" in (PLUGINS_DIR / "common" / "pluginCommon.h").read_text()


class _Field(SimpleNamespace):
    """A stand-in PluginField (name, type.name, size, data) for tests without TensorRT."""

    def __init__(self, name: str, data: list, type_name: str) -> None:
        import numpy as np

        dtype = {"INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32,
                 "FLOAT64": np.float64, "CHAR": np.int8, "FLOAT16": np.float16}[type_name]
        super().__init__(name=name, data=np.array(data, dtype), size=len(data),
                         type=SimpleNamespace(name=type_name))


def test_python_creators_read_fields_by_kind() -> None:
    c = CONTRACTS["RoIAlign3D"]
    got = python_plugins.read_fields(c, [
        _Field("output_height", [7], "INT8"), _Field("output_width", [7.0], "FLOAT32"),
        _Field("spatial_scale", [0.1], "FLOAT64"), _Field("sampling_ratio", [2, 2], "INT32"),
        _Field("aligned", [1], "FLOAT16"), _Field("aligned", [0], "INT32"),
        _Field("plugin_version", [49], "CHAR")])
    assert got["output_height"] == 7 and type(got["output_height"]) is int
    assert got["output_width"] == 7.0 and type(got["output_width"]) is float
    assert got["spatial_scale"] == float(__import__("numpy").float32(0.1))  # float32 storage
    assert repr(got["sampling_ratio"]) == "2 values"
    assert repr(got["aligned"]) == "a field of type FLOAT16"  # the first of a repeated name
    assert "plugin_version" not in got
    with pytest.raises(ContractError, match="output_width must be an integer, not 7.0; "
                       "sampling_ratio must be an integer, not 2 values; aligned must be an "
                       "integer, not a field of type FLOAT16"):
        c.validate(got)


def test_python_plugins_need_triton() -> None:
    """No torch fallback: without Triton the Python plugins refuse to load, saying what to
    install (a fresh interpreter where `import triton` fails)."""
    code = textwrap.dedent("""
        import importlib.util, sys
        lean = importlib.util.find_spec("tensorrt_lean_bindings") is not None
        sys.modules["triton"] = None  # import triton -> ImportError
        from evad.lazy import MissingDependency
        from evad.plugins import load, python_plugins
        for step in [python_plugins.kernels] + ([lambda: load("python")] if lean else []):
            try:
                step()
            except MissingDependency as e:
                print("REFUSED", e.package, e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == (2 if _lean_available() else 1), proc.stdout
    for line in lines:
        assert line.startswith("REFUSED triton ") and "pip install triton" in line
    assert not hasattr(python_plugins, "_ops")  # the per-enqueue torch/Triton choice is gone


_ALLOWED_FIRST_PARTY = ("evad.errors", "evad.lazy", "evad.op_contracts", "evad.command",
                        "evad.plugins")


def test_plugins_import_no_other_stage() -> None:
    """plugins/ imports only evad.errors, evad.lazy, evad.op_contracts, evad.command (the
    build command's one-line errors) and itself from evad,
    anywhere (module level, functions, TYPE_CHECKING blocks, lazy_import names)."""
    found = []
    for path in sorted(PLUGINS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_import"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]
            found += [(path.name, n) for n in names]
    evad = [(f, n) for f, n in found if n == "evad" or n.startswith("evad.")]
    assert evad, "the scan found no evad import at all"
    bad = [(f, n) for f, n in evad
           if not any(n == a or n.startswith(a + ".") for a in _ALLOWED_FIRST_PARTY)]
    assert bad == []


def test_no_heavy_import_on_import() -> None:
    """`import evad.plugins` (and its build module) loads neither TensorRT, Triton nor torch."""
    code = ("import sys, evad.plugins, evad.plugins.build, evad.plugins.python_plugins; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'triton', 'tensorrt', 'tensorrt_lean_bindings')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_load_errors_are_clear(tmp_path) -> None:
    from evad.plugins import PluginError, load

    with pytest.raises(PluginError, match="'cpp' or 'python'"):
        load("rust")
    if _lean_available():
        with pytest.raises(PluginError, match="evad-build-plugins"):
            load("cpp", tmp_path / "libevad_plugins.so")


def test_sources_ship_with_the_package() -> None:
    """pyproject's package-data globs for evad.plugins cover every source a build needs."""
    import fnmatch

    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or not (root / "plugins").is_dir():
        pytest.skip("not a source checkout")
    # the one line of [tool.setuptools.package-data] (a TOML string array is a Python literal;
    # tomllib needs Python 3.11)
    line = next(x for x in pyproject.read_text().splitlines()
                if x.startswith('"evad.plugins" = ['))
    globs = ast.literal_eval(line.split("=", 1)[1].strip())
    sources = [p.relative_to(PLUGINS_DIR).as_posix() for p in PLUGINS_DIR.rglob("*")
               if p.is_file() and p.suffix in (".h", ".cpp", ".cu", ".txt", ".md")
               and "build" not in p.relative_to(PLUGINS_DIR).parts]
    assert len(sources) > 15
    missing = [s for s in sources if not any(
        fnmatch.fnmatchcase(s, g) and s.count("/") == g.count("/") for g in globs)]
    assert missing == []


def test_kernels_library_exports_c_abi(plugin_library) -> None:
    """libevad_kernels.so exports the C ABI (what ctypes and the GPU tests call)."""
    out = subprocess.run(["nm", "-D", "--defined-only",
                          str(library_path("libevad_kernels.so"))],
                         capture_output=True, text=True).stdout
    for sym in ("evad_roi_align_3d", "evad_keyframe_topk_prune",
                "evad_keyframe_topk_prune_workspace_size",
                "evad_keyframe_topk_prune_workspace_query"):
        assert f" T {sym}\n" in out + "\n"


def test_workspace_query_reports_its_failure(plugin_library) -> None:
    """The KeyframeTopKPrune workspace size checks CUB's size query: where it fails (here, on a
    machine without a CUDA device, CUB cannot ask the device for its PTX version) the query
    returns the error and leaves the size alone, and the plain size function returns 0, never a
    size without CUB's temporary storage. Where it works, both give the same size."""
    import ctypes

    lib = ctypes.CDLL(str(library_path("libevad_kernels.so")))
    i64, size_t = ctypes.c_int64, ctypes.c_size_t
    lib.evad_keyframe_topk_prune_workspace_query.argtypes = [i64] * 4 + [ctypes.POINTER(size_t)]
    lib.evad_keyframe_topk_prune_workspace_size.argtypes = [i64] * 4
    lib.evad_keyframe_topk_prune_workspace_size.restype = size_t
    out = size_t(12345)
    code = lib.evad_keyframe_topk_prune_workspace_query(2, 12, 480, 384, ctypes.byref(out))
    size = lib.evad_keyframe_topk_prune_workspace_size(2, 12, 480, 384)
    if code != 0:
        assert (out.value, size) == (12345, 0)
    else:
        without_cub = sum((x + 255) // 256 * 256 for x in (
            4 * 2 * 12 * 480, 4 * 2 * 12 * 384, 4 * 2 * 384, 4 * 2 * 384, 4 * 2 * 384,
            4 * 2 * 384, 4 * 3))
        assert size == out.value > without_cub
    assert lib.evad_keyframe_topk_prune_workspace_query(-1, 1, 10, 5, ctypes.byref(out)) == 1


# --- one registration path per build ------------------------------------------------------------

def _exports(path: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def _needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


_REGISTRATION_PROBE = textwrap.dedent("""
    import json, sys
    from evad.op_contracts import CONTRACTS
    from evad.plugins import PluginError, load, tensorrt

    trt = tensorrt()
    reg = trt.get_plugin_registry()
    try:
        load("cpp", sys.argv[1])
        error = None
    except PluginError as e:
        error = str(e)
    found = {ns or "(empty)": sorted(c.name for c in CONTRACTS.values()
                                     if reg.get_creator(c.name, c.plugin_version, ns) is not None)
             for ns in ("evad", "")}
    print("JSON" + json.dumps({"error": error, "found": found}))
""")


def _register(path: Path) -> tuple[dict, str]:
    """Load one build with evad.plugins.load("cpp") into the runtime-only TensorRT in a fresh
    interpreter: which creators are found under (name, "1", "evad") and under the empty
    namespace, the load error if any, and what the library printed."""
    proc = subprocess.run([sys.executable, "-c", _REGISTRATION_PROBE, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("JSON")][-1]
    return json.loads(line[4:]), proc.stderr


_ALL = sorted(CONTRACTS)
_REGISTRY_ENTRY_POINTS = {"getCreators", "getPluginCreators", "setLoggerFinder"}


def test_default_build_registers_through_get_creators_only(lean, plugin_library) -> None:
    """The default build: loadLibrary's entry points, no link against libnvinfer, no
    registration of its own; both creators under (name, "1", "evad"), none under ""."""
    path = Path(plugin_library)
    assert _exports(path) & _REGISTRY_ENTRY_POINTS == {"getCreators", "setLoggerFinder"}
    assert not [n for n in _needed(path) if n.startswith("libnvinfer")]
    got, err = _register(path)
    assert got == {"error": None, "found": {"evad": _ALL, "(empty)": []}}, err


def _lean_library() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_lean_libs")
    libs = sorted(Path(spec.submodule_search_locations[0]).glob("libnvinfer_lean.so.*")) \
        if spec and spec.submodule_search_locations else []
    if not libs:
        skip_or_fail("no libnvinfer_lean in the runtime-only TensorRT "
                      "(pip install tensorrt-lean-cu13-libs)")
    return libs[0]


def _headers_major(include: Path) -> int:
    import re

    text = (include / "NvInferVersion.h").read_text()
    m = re.search(r"#define (?:TRT_MAJOR_ENTERPRISE|NV_TENSORRT_MAJOR) (\d+)", text)
    assert m, include
    return int(m.group(1))


def _build_static(name: str, include: Path | None) -> Path:
    lean = _lean_library()
    got = build.build_libraries(
        out_dir=build.default_build_dir() / name / "lib",
        build_dir=build.default_build_dir() / name,
        archs="80", tensorrt_include=str(include) if include else None, quiet=True,
        jobs=int(os.environ.get("EVAD_BUILD_JOBS", "2")), static_registration=True,
        tensorrt_library=str(lean))
    return got["plugins"]


def test_static_registration_build_has_one_path(lean, plugin_library) -> None:
    """-DEVAD_STATIC_REGISTRATION=ON links here (against the runtime-only libnvinfer_lean, which
    exports getPluginRegistry) and exports none of loadLibrary's entry points, so loading it can
    never register a creator twice. With the CI headers (kernel-lens, TensorRT 10) and this
    libnvinfer_lean (TensorRT 11) the majors differ: the registrar says so, one line per
    creator, instead of calling IPluginRegistry through the wrong virtual slot, and registers
    nothing."""
    inc = build.find_tensorrt_include() or build.kernel_lens_headers(
        build.default_build_dir() / "deps")
    path = _build_static("static-registration", None)
    assert _exports(path) & _REGISTRY_ENTRY_POINTS == set()
    assert _lean_library().name in _needed(path)
    got, err = _register(path)
    lean_major = int(_lean_library().name.rsplit(".", 1)[1])
    if _headers_major(inc) == lean_major:
        assert got == {"error": None, "found": {"evad": _ALL, "(empty)": []}}, err
    else:
        assert got["found"] == {"evad": [], "(empty)": []} and "static-registration" in got["error"]
        lines = [x for x in err.splitlines() if x.startswith("[evad plugin] ")]
        assert lines == [f"[evad plugin] evad static registration: not registering {op}: built "
                         f"against TensorRT {_headers_major(inc)} headers, loaded with libnvinfer "
                         f"of TensorRT {lean_major}" for op in ("RoIAlign3D", "KeyframeTopKPrune")]


def test_static_registration_registers_under_evad(lean, plugin_library) -> None:
    """The static-registration build, compiled against headers of the linked libnvinfer's major
    version, registers both creators when loaded, under (name, "1", "evad") and not under "".
    Headers: $EVAD_STATIC_TENSORRT_INCLUDE, else the build's own when their major matches."""
    lean = _lean_library()
    lean_major = int(lean.name.rsplit(".", 1)[1])
    env = os.environ.get("EVAD_STATIC_TENSORRT_INCLUDE")
    inc = Path(env) if env else build.find_tensorrt_include() or build.kernel_lens_headers(
        build.default_build_dir() / "deps")
    if _headers_major(inc) != lean_major:
        pytest.skip(f"static registration links libnvinfer, and the only one here is {lean.name} "
                    f"(TensorRT {lean_major}, from tensorrt-lean-cu13-libs), while the headers "
                    f"are TensorRT {_headers_major(inc)} ({inc}); IPluginRegistry's virtual table "
                    f"differs between the two majors, so that build cannot register (see "
                    f"test_static_registration_build_has_one_path). Set "
                    f"EVAD_STATIC_TENSORRT_INCLUDE to TensorRT {lean_major} headers to run it")
    path = _build_static("static-registration-matching", inc)
    assert _exports(path) & _REGISTRY_ENTRY_POINTS == set()
    got, err = _register(path)
    assert got == {"error": None, "found": {"evad": _ALL, "(empty)": []}}, err
    assert "[evad plugin]" not in err


# --- the Python plugins' enqueue never waits for the device -------------------------------------

#: calls that wait for the device (or copy to the host): CUDA graphs cannot capture them
_HOST_SYNCS = {"item", "nonzero", "cpu", "tolist", "numpy", "synchronize", "masked_select",
               "unique", "unique_consecutive", "argwhere", "bincount", "repeat_interleave",
               "any", "all", "equal", "allclose", "__bool__", "__int__", "__float__"}


def _enqueue_path() -> dict[str, ast.AST]:
    """The host code the Python plugins run in enqueue: EvadPlugin.enqueue, _tensor and
    _DevicePointer (python_plugins.py) and every host function of triton_kernels.py."""
    nodes: dict[str, ast.AST] = {}
    pp = ast.parse((PLUGINS_DIR / "python_plugins.py").read_text())
    for node in ast.walk(pp):
        if isinstance(node, ast.FunctionDef) and node.name in ("enqueue", "_tensor"):
            nodes[f"python_plugins.{node.name}"] = node
        if isinstance(node, ast.ClassDef) and node.name == "_DevicePointer":
            nodes["python_plugins._DevicePointer"] = node
    tk = ast.parse((PLUGINS_DIR / "triton_kernels.py").read_text())
    for node in tk.body:
        if isinstance(node, ast.FunctionDef) and not any(
                "jit" in ast.unparse(d) for d in node.decorator_list):
            nodes[f"triton_kernels.{node.name}"] = node
    return nodes


def _host_syncs(node: ast.AST) -> list[str]:
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in _HOST_SYNCS:
                found.append(f"{ast.unparse(n)} (line {n.lineno})")
            # int()/float()/bool() of anything but a plain name or constant may read a tensor
            if name in ("int", "float", "bool") and n.args and not isinstance(
                    n.args[0], (ast.Name, ast.Constant)):
                found.append(f"{ast.unparse(n)} (line {n.lineno})")
    return found


def test_python_plugin_enqueue_never_syncs_with_the_host() -> None:
    """The Python plugins' enqueue (and the Triton host functions it calls) never waits for the
    device: no .item(), .nonzero(), .cpu(), .tolist(), synchronize, data-dependent shapes, or
    int()/float()/bool() of a tensor expression; the batch-index rule and the tie order are
    decided on the device. A CUDA graph captures it (tests/test_kernels_gpu.py captures the
    kernels on a GPU)."""
    nodes = _enqueue_path()
    assert {"python_plugins.enqueue", "python_plugins._tensor", "triton_kernels.importance_triton",
            "triton_kernels.keyframe_topk_prune_triton",
            "triton_kernels.roi_align_3d_triton"} <= set(nodes)
    found = {name: syncs for name, node in nodes.items() if (syncs := _host_syncs(node))}
    assert found == {}
    # the check itself sees a sync when there is one
    bad = ast.parse("def f(x):\n    n = x.nonzero()\n    return int(x.sum()) + x.max().item()")
    assert len(_host_syncs(bad)) == 3


def test_cpp_plugin_self_test(plugin_library, tmp_path) -> None:
    """The C++ plugins' logic without TensorRT's runtime (whose Python bindings cannot clone or
    serialize a C++ plugin): plugins/common/tests/pluginSelfTest.cpp takes the creators through
    getCreators and checks them against the contract header: getFieldNames, creation from the
    defaults, the field types accepted, refusal of each bad field with one message line, clone,
    the serialization round trip, output types and format/type support (fp32, fp16, bf16)."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        skip_or_fail("no host C++ compiler (g++)")
    inc = build.find_tensorrt_include() or build.kernel_lens_headers(
        build.default_build_dir() / "deps")
    cuda_inc = build.cuda_include_dir()
    exe = tmp_path / "pluginSelfTest"
    src = build.common_dir() / "tests" / "pluginSelfTest.cpp"
    proc = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra",
                           "-Wno-deprecated-declarations", "-isystem", str(inc), "-isystem",
                           str(cuda_inc), f"-I{build.common_dir()}", str(src), "-ldl", "-o",
                           str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = subprocess.run([str(exe), plugin_library], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("PASS") >= 140 and "FAIL" not in run.stdout
    refusals = [x for x in run.stdout.splitlines() if " refuses " in x and " | " in x]
    assert len(refusals) >= 60
    for line in refusals:  # every refusal names its op and speaks the contract's words
        op = line.split()[1]
        assert f"| [evad plugin] {op}::createPlugin: evad::{op}: " in line, line
