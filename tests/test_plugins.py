"""The TensorRT plugins on a CPU machine: libevad_plugins.so builds with CMake + nvcc against
TensorRT headers and registers both creators in the runtime-only TensorRT; the Python plugins
register too; both sets declare the same names, version, namespace and fields, and create
plugins from the design's attributes.

The runtime-only TensorRT (tensorrt-lean-cu13-libs/-bindings) and nvcc/cmake are installed by
.ci/plugins.sh; outside CI a missing one skips with the reason, in CI (CI=true) it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from evad.plugins import NAMESPACE, PLUGIN_FIELDS, VERSION, build, library_path

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ATTRS = {"RoIAlign3D": {"output_height": 7, "output_width": 7, "spatial_scale": 1 / 16,
                        "sampling_ratio": 2, "aligned": 1},
         "KeyframeTopKPrune": {"keep_num": 7, "keep_den": 10, "keyframe_weight": 1.0}}


def _skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must run this test: {reason} (see .ci/plugins.sh)")
    pytest.skip(reason)


def _lean_available() -> bool:
    try:
        import tensorrt_lean_bindings  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def plugin_library() -> str:
    """libevad_plugins.so built by CMake (incremental, in the build cache) for sm_80 and sm_90:
    this is also the proof that every .cu compiles with nvcc for both."""
    if shutil.which("cmake") is None:
        _skip_or_fail("cmake is not installed")
    try:
        build._find_nvcc()
    except Exception as e:  # noqa: BLE001
        _skip_or_fail(str(e))
    got = build.build_libraries(archs="80;90", quiet=True,
                                jobs=int(os.environ.get("EVAD_BUILD_JOBS", "2")))
    return str(got["plugins"])


def _probe(kind: str, library: str | None = None) -> dict:
    """Register one plugin set in a fresh interpreter (one set per process) and report each
    creator's name, version, namespace, fields, and whether it creates a plugin from ATTRS."""
    code = textwrap.dedent(f"""
        import json, numpy as np
        from evad.plugins import load, PLUGIN_FIELDS
        trt = load({kind!r}, {library!r})
        reg = trt.get_plugin_registry()
        attrs = {ATTRS!r}
        out = {{}}
        for name, fields in PLUGIN_FIELDS.items():
            c = reg.get_creator(name, "1", "evad")
            keep = []
            pf = []
            for f, kind in fields:
                a = np.array([attrs[name][f]], np.int32 if kind == "int" else np.float32)
                keep.append(a)
                t = trt.PluginFieldType.INT32 if kind == "int" else trt.PluginFieldType.FLOAT32
                pf.append(trt.PluginField(f, a, t))
            p = c.create_plugin(name, trt.PluginFieldCollection(pf), trt.TensorRTPhase.BUILD)
            bad = c.create_plugin(name, trt.PluginFieldCollection(pf[:1]),
                                  trt.TensorRTPhase.BUILD)
            core = p.get_capability_interface(trt.PluginCapabilityType.CORE) if p else None
            ser, round_trip, cloned = None, None, None
            if {kind!r} == "python":
                # The bindings expose clone/serialization of Python plugins only; the C++ ones
                # are checked by the C++ self-test (test_cpp_plugin_self_test).
                ser = [(f.name, np.array(f.data).reshape(-1)[:1].tolist())
                       for f in p.get_fields_to_serialize()]
                pf2 = []
                for f, kind in fields:
                    a = np.array(dict(ser)[f], np.int32 if kind == "int" else np.float32)
                    keep.append(a)
                    t = (trt.PluginFieldType.INT32 if kind == "int"
                         else trt.PluginFieldType.FLOAT32)
                    pf2.append(trt.PluginField(f, a, t))
                p2 = c.create_plugin(name, trt.PluginFieldCollection(pf2),
                                     trt.TensorRTPhase.RUNTIME)
                ser2 = [(f.name, np.array(f.data).reshape(-1)[:1].tolist())
                        for f in p2.get_fields_to_serialize()]
                round_trip, cloned = ser == ser2, p.clone() is not None
            out[name] = {{"name": c.name, "version": c.plugin_version,
                         "namespace": c.plugin_namespace,
                         "fields": [[f.name, str(f.type).split(".")[-1]] for f in c.field_names],
                         "created": p is not None, "missing_field_refused": bad is None,
                         "serialized": ser, "round_trip": round_trip, "clone": cloned,
                         "plugin": [core.plugin_name, core.plugin_version,
                                    core.plugin_namespace] if core else None}}
        print("JSON" + json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("JSON")][-1]
    import json

    return json.loads(line[4:])


def _expected(kind: str) -> dict:
    kinds = {"int": "INT32", "float": "FLOAT32"}
    py = kind == "python"
    return {name: {"name": name, "version": VERSION, "namespace": NAMESPACE,
                   "fields": [[f, kinds[k]] for f, k in fields], "created": True,
                   "missing_field_refused": True, "plugin": [name, VERSION, NAMESPACE],
                   "serialized": [[f, [pytest.approx(ATTRS[name][f])]] for f, _ in fields]
                   if py else None, "round_trip": True if py else None,
                   "clone": True if py else None}
            for name, fields in PLUGIN_FIELDS.items()}


@pytest.fixture(scope="module")
def lean():
    if not _lean_available():
        _skip_or_fail("the runtime-only TensorRT is not installed (pip install "
                      "tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings)")


def test_cpp_creators_register_in_lean_tensorrt(lean, plugin_library) -> None:
    assert _probe("cpp", plugin_library) == _expected("cpp")


def test_python_creators_register_in_lean_tensorrt(lean) -> None:
    assert _probe("python") == _expected("python")


def test_fields_are_the_onnx_attributes() -> None:
    """The plugin fields are the ONNX schema's attributes, in order (export/ops.py)."""
    from evad.export.ops import SCHEMAS

    for schema in SCHEMAS:
        assert set(schema.attributes) == {f for f, _ in PLUGIN_FIELDS[schema.name]}


def test_cpp_field_names_in_source_match() -> None:
    """Cheap guard without a build: each C++ creator's field names appear in its source."""
    src = build.source_dir() / "csrc"
    text = {"RoIAlign3D": (src / "roi_align_3d" / "roiAlign3dPlugin.cpp").read_text(),
            "KeyframeTopKPrune": (src / "keyframe_topk_prune" /
                                  "keyframeTopkPrunePlugin.cpp").read_text()}
    for name, fields in PLUGIN_FIELDS.items():
        assert f'kNAME = "{name}"' in text[name]
        for f, kind in fields:
            t = "kINT32" if kind == "int" else "kFLOAT32"
            assert f'PluginField("{f}", nullptr, PluginFieldType::{t}, 1)' in text[name]


def test_load_errors_are_clear(tmp_path) -> None:
    from evad.plugins import PluginError, load

    with pytest.raises(PluginError, match="'cpp' or 'python'"):
        load("rust")
    if _lean_available():
        with pytest.raises(PluginError, match="evad-build-plugins"):
            load("cpp", tmp_path / "libevad_plugins.so")


def test_kernels_library_exports_c_abi(plugin_library) -> None:
    """libevad_kernels.so exports the C ABI (what ctypes and the GPU tests call)."""
    out = subprocess.run(["nm", "-D", "--defined-only",
                          str(library_path("libevad_kernels.so"))],
                         capture_output=True, text=True).stdout
    for sym in ("evad_roi_align_3d", "evad_keyframe_topk_prune",
                "evad_keyframe_topk_prune_workspace_size"):
        assert f" T {sym}\n" in out + "\n"


def test_cpp_plugin_self_test(plugin_library, tmp_path) -> None:
    """The C++ plugins' logic without TensorRT's runtime (whose Python bindings cannot clone or
    serialize a C++ plugin): plugins/csrc/tests/pluginSelfTest.cpp takes the creators through
    getCreators and checks creation, refusal of a missing field, clone, the serialization round
    trip, output types and format/type support for fp32, fp16 and bf16."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        _skip_or_fail("no host C++ compiler (g++)")
    inc = build.find_tensorrt_include() or build.kernel_lens_headers(
        build.default_build_dir() / "deps")
    cuda_inc = build.cuda_include_dir()
    exe = tmp_path / "pluginSelfTest"
    src = build.source_dir() / "csrc" / "tests" / "pluginSelfTest.cpp"
    proc = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wno-deprecated-declarations",
                           "-isystem", str(inc), "-isystem", str(cuda_inc), str(src), "-ldl",
                           "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = subprocess.run([str(exe), plugin_library], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("PASS") >= 40 and "FAIL" not in run.stdout
