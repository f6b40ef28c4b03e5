"""A Triton Inference Server model repository made from an export.

``write_repository`` lays out, in a new folder (written beside it and renamed into place, so a
failure leaves nothing half-made)::

    DIR/evad_onnx/config.pbtxt, 1/model.onnx   platform "onnxruntime_onnx", dynamic batching
    DIR/evad_plan/config.pbtxt, 1/model.plan   platform "tensorrt_plan" (only with an engine)
    DIR/evad/config.pbtxt, 1/model.py          Python backend: a video or a clip in, detections
                                               out (``evad.serving.triton_model``)
    DIR/launch.sh                              the tritonserver command for this repository
    DIR/evad-repository.json                   what was written from what (sizes, SHA-256)

The detector models' inputs and outputs (names, data types, dims) are read from the ONNX graph;
a symbolic batch dimension becomes ``max_batch_size`` and dynamic batching, a fixed one a
model without batching. Every ``evad.*`` metadata entry of the export is carried in the
config's ``parameters``. The engine's plugin library (our RoIAlign3D / KeyframeTopKPrune) is
copied beside it and named in ``launch.sh`` through ``--backend-config=tensorrt,plugins=...``,
as Triton's TensorRT backend documents.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from evad.command import check_input_file, check_output_dir
from evad.engines.metadata import read_engine_metadata
from evad.errors import ConfigError
from evad.hashing import file_sha256
from evad.metadata import load_detector

__all__ = ["DETECTOR_ONNX", "DETECTOR_PLAN", "VIDEO_INSTANCES", "VIDEO_LIMITS", "VIDEO_MODEL",
           "config_text",
           "python_config_text", "write_repository"]

DETECTOR_ONNX, DETECTOR_PLAN, VIDEO_MODEL = "evad_onnx", "evad_plan", "evad"
MANIFEST = "evad-repository.json"

_TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                 onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.INT64: "TYPE_INT64",
                 onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.BOOL: "TYPE_BOOL",
                 onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT8: "TYPE_INT8"}

#: the Python model's shim: the logic lives in the installed package, so the repository
#: carries no copy of it that could go stale
_MODEL_PY = '''"""EVAD detections for Triton's Python backend.

The logic is evad.serving.triton_model: the evad-deploy wheel installed in the backend's Python
(launch.sh --install WHEEL does it; the wheel is `pip wheel --no-deps .` in the repository)."""

from evad.serving.triton_model import TritonPythonModel  # noqa: F401
'''


def _tensors(values: Any) -> list[tuple[str, str, list[int]]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in _TRITON_TYPES:
            raise ConfigError(f"ONNX tensor {v.name!r} has element type "
                              f"{onnx.TensorProto.DataType.Name(t.elem_type)}, which this "
                              "repository writer does not map to a Triton type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append((v.name, _TRITON_TYPES[t.elem_type], dims))
    return out


def _io_block(kind: str, tensors: list[tuple[str, str, list[int]]], batched: bool) -> str:
    items = []
    for name, dtype, dims in tensors:
        d = dims[1:] if batched else dims
        items.append(f'  {{ name: "{name}" data_type: {dtype} dims: [ '
                     f'{", ".join(str(x) for x in d)} ] }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: {json.dumps(k)} value: {{ string_value: '
                   f'{json.dumps(v)} }} }}\n' for k, v in params.items())


def config_text(name: str, platform: str, model: onnx.ModelProto, meta: dict[str, Any], *,
                max_batch_size: int = 8, queue_delay_us: int = 2000, gpu: bool = True) -> str:
    """A detector's ``config.pbtxt`` (Triton ``ModelConfig`` in protobuf text format).

    Args:
        name: the model's name (its folder).
        platform: ``onnxruntime_onnx`` or ``tensorrt_plan``.
        model: the ONNX graph (weights not needed): inputs and outputs are read from it.
        meta: the export's ``evad.*`` metadata (carried as string parameters).
        max_batch_size: clips per batch Triton may form (used only when the graph's batch
            dimension is symbolic).
        queue_delay_us: how long (µs) dynamic batching waits to fill a batch.
        gpu: ``KIND_GPU`` instances, else ``KIND_CPU``.
    """
    ins, outs = _tensors(model.graph.input), _tensors(model.graph.output)
    batched = all(dims and dims[0] == -1 for _, _, dims in ins + outs)
    text = (f'name: "{name}"\nplatform: "{platform}"\n'
            f"max_batch_size: {max_batch_size if batched else 0}\n"
            + _io_block("input", ins, batched) + _io_block("output", outs, batched))
    if batched:
        text += (f"dynamic_batching {{ preferred_batch_size: [ {max_batch_size} ] "
                 f"max_queue_delay_microseconds: {queue_delay_us} }}\n")
    text += f"instance_group [ {{ count: 1 kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]\n"
    return text + _parameters({f"evad.{k}": v if isinstance(v, str) else json.dumps(v)
                               for k, v in meta.items()})


#: the default bounds of one request to the evad model (its config's parameters): a VIDEO of
#: at most 120 s and 3600 frames (120 s at 30 fps), a VIDEO or FRAMES of at most 4096 x 4096
#: pixels; a larger one is refused in one line before any detection. One request holds a model
#: instance until it is answered: 10,000 frames held it for 130 s on a CPU (13 ms a frame), past
#: a client's 60 s timeout for the clips behind it; 3600 frames take about 47 s there
VIDEO_LIMITS = {"max_video_seconds": 120.0, "max_video_frames": 3600, "max_video_width": 4096,
                "max_video_height": 4096}

#: the evad model's default instance count: a long VIDEO request holds one, clip requests are
#: answered by the other
VIDEO_INSTANCES = 2


def python_config_text(detector_file: str, backend: str, meta: dict[str, Any],
                       instances: int = VIDEO_INSTANCES) -> str:
    """The Python-backend model's ``config.pbtxt``: a request carries either ``VIDEO`` (an
    encoded video file's bytes) or ``FRAMES`` (one clip: the model's ``num_frames`` frames,
    uint8 H x W x 3 BGR as OpenCV decodes them); the answer is ``DETECTIONS`` (one JSON object
    per keyframe, as ``detections.jsonl``) and ``AVA_CSV`` (the AVA rows, as
    ``detections.csv``).

    Its ``parameters`` hold the detection settings and the bounds of one request
    (:data:`VIDEO_LIMITS`: a VIDEO's seconds and frames, a VIDEO's or FRAMES' width and height
    in pixels); an operator may edit them before starting the server. ``instances`` (default
    :data:`VIDEO_INSTANCES`): requests answered at once, each instance a process with its own
    detector (memory, on a GPU its engine, times ``instances``)."""
    t = int(meta.get("num_frames", 16))
    params = {"detector": detector_file, "backend": backend, "keyframe_stride": "1.0",
              "action_threshold": "0.5", "top_k": "5", "csv_min_score": "0.0",
              **{k: str(v) for k, v in VIDEO_LIMITS.items()}}
    return (f'name: "{VIDEO_MODEL}"\nbackend: "python"\nmax_batch_size: 0\n'
            "# one request's bounds (max_video_*): a larger VIDEO or FRAMES is refused (HTTP 400,\n"
            "# gRPC INVALID_ARGUMENT); a request holds an instance until answered, so with\n"
            f"# {instances} instances a long VIDEO does not hold up the clips behind it\n"
            "input [\n"
            '  { name: "VIDEO" data_type: TYPE_UINT8 dims: [ -1 ] optional: true },\n'
            f'  {{ name: "FRAMES" data_type: TYPE_UINT8 dims: [ {t}, -1, -1, 3 ] '
            "optional: true }\n]\n"
            "output [\n"
            '  { name: "DETECTIONS" data_type: TYPE_STRING dims: [ -1 ] },\n'
            '  { name: "AVA_CSV" data_type: TYPE_STRING dims: [ -1 ] }\n]\n'
            f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
            + _parameters(params))


#: what the evad model imports at run time, besides evad-deploy itself (docs/environment.md,
#: "Triton Inference Server"): no torch
SERVE_REQUIREMENTS = ("numpy>=1.24", "onnxruntime>=1.20", "onnx>=1.17",
                      "opencv-python-headless>=4.8", "tqdm>=4.60")


def _launch_script(with_plan: bool) -> str:
    plugins = ('  --backend-config=tensorrt,plugins="$here/evad_plan/libevad_plugins.so" \\\n'
               if with_plan else "")
    needs = " ".join(f"'{r}'" for r in SERVE_REQUIREMENTS if not r.startswith("numpy"))
    return ("#!/usr/bin/env sh\n"
            "# Serve this repository with NVIDIA Triton Inference Server. In its container:\n"
            "#   docker run --gpus all -p 127.0.0.1:8001:8001 \\\n"
            "#     -v \"$PWD\":/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\\n"
            "#     sh /models/launch.sh /models --host 0.0.0.0\n"
            "# Inside a container it needs --host 0.0.0.0: docker's -p forwards to the\n"
            "# container's own interface, which a server on the container's 127.0.0.1 never\n"
            "# sees; the 127.0.0.1: prefix of -p keeps the published port on this host.\n"
            "# The evad model (Python backend) needs evad-deploy in the backend's Python,\n"
            "# python3: add --install WHEEL (the wheel from pip wheel --no-deps . in a\n"
            "# checkout) or bake it into an image (docs/environment.md).\n"
            "# Usage: launch.sh [REPOSITORY] [--host ADDR] [--http] [--install WHEEL]\n"
            "#                  [--skip-check] [tritonserver options...]\n"
            "#   --host ADDR      where gRPC (port 8001), metrics (8002) and HTTP listen\n"
            "#                    (default 127.0.0.1: this machine only; 0.0.0.0 serves other\n"
            "#                    hosts, with no authentication)\n"
            "#   --http           serve HTTP/JSON too (port 8000). Off by default: the HTTP/JSON\n"
            "#                    front of tritonserver 2.51 can be crashed by one request (an\n"
            "#                    input shape of 10^12 elements aborts it); gRPC answers that\n"
            "#                    request with an error\n"
            "#   --install WHEEL  pip install the wheel and what the evad model needs into\n"
            "#                    python3\n"
            "#   --skip-check     start without checking that python3 imports evad (to serve the\n"
            "#                    detector models alone)\n"
            'here="$(dirname "$0")"\n'
            'case "${1:-}" in ""|-*) ;; *) here="$1"; shift ;; esac\n'
            'here="$(cd "$here" && pwd)"\n'
            "host=127.0.0.1\n"
            "http=false\n"
            "check=1\n"
            'while [ $# -gt 0 ]; do\n'
            '  case "$1" in\n'
            '    --host) host="${2:?launch.sh: --host needs an address}"; shift 2 ;;\n'
            '    --host=*) host="${1#--host=}"; shift ;;\n'
            '    --http) http=true; shift ;;\n'
            '    --install)\n'
            '      wheel="${2:?launch.sh: --install needs the evad-deploy wheel}"; shift 2\n'
            "      # its runtime first, keeping the numpy the backend's stub was built with, then\n"
            "      # the wheel without its torch and export dependencies\n"
            "      numpy=\"$(python3 -c 'import numpy; print(\"numpy==\" + numpy.__version__)' "
            "2>/dev/null || echo 'numpy>=1.24')\"\n"
            f'      python3 -m pip install "$numpy" {needs} \\\n'
            '        && python3 -m pip install --no-deps --force-reinstall "$wheel" || exit 1 ;;\n'
            '    --skip-check) check=0; shift ;;\n'
            '    *) break ;;\n'
            '  esac\n'
            'done\n'
            'if [ "$check" = 1 ] && ! err="$(python3 -c "import evad.serving.triton_model" '
            '2>&1)"; then\n'
            '  echo "launch.sh: python3 ($(command -v python3)) cannot import evad.serving.'
            'triton_model, which the evad model needs ($(printf "%s\\n" "$err" | tail -n 1)): '
            'add --install evad_deploy-<version>-py3-none-any.whl" >&2\n'
            "  exit 1\n"
            "fi\n"
            + ('export LD_LIBRARY_PATH="$here/evad_plan${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n'
               '# the evad model (with --python-backend trt) loads its plugins from here too\n'
               'export EVAD_PLUGIN_LIB_DIR="$here/evad_plan"\n' if with_plan else "")
            + "exec tritonserver --model-repository=\"$here\" \\\n"
            + plugins +
            '  --grpc-address="$host" --metrics-address="$host" --allow-http="$http" \\\n'
            '  --http-address="$host" \\\n'
            "  --disable-auto-complete-config --strict-readiness=true \"$@\"\n")


def _copy(src: Path, dst: Path) -> dict[str, Any]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return {"from": str(src.resolve()), "bytes": dst.stat().st_size,
            "sha256": file_sha256(dst)}


def write_repository(out: str | os.PathLike, onnx_path: str | os.PathLike, *,
                     engine: str | os.PathLike | None = None,
                     plugins: str | os.PathLike | None = None, max_batch_size: int = 8,
                     gpu: bool = True, python_backend: str = "ort",
                     overwrite: bool = False) -> Path:
    """Write the Triton model repository for an export (see the module docstring).

    Args:
        out: the repository folder (must not exist unless ``overwrite``).
        onnx_path: the ONNX model from ``evad-export`` (its weights are copied, not read).
        engine: a TensorRT engine built from it (adds ``evad_plan``); needs ``plugins``.
        plugins: the plugin library the engine was built with (``libevad_plugins.so``).
        max_batch_size: the detectors' largest dynamic batch (clips); the ``tensorrt_plan``
            model's is at most the engine's profile maximum.
        gpu: detector instances on the GPU (``KIND_GPU``) or the CPU.
        python_backend: the runner the ``evad`` model uses in-process: ``ort`` (the ONNX, ONNX
            Runtime) or ``trt`` (the engine; needs TensorRT in the Python backend's env).

    Returns:
        The repository folder.

    Raises:
        EvadError / ConfigError: a missing or unreadable input, an existing ``out``, an engine
            without its plugin library, an ONNX tensor type Triton has no name for.
    """
    out = Path(out)
    onnx_path = check_input_file(onnx_path, "ONNX model")
    if engine is not None:
        engine = check_input_file(engine, "TensorRT engine")
        if plugins is None:
            raise ConfigError("a TensorRT engine needs its plugin library in the repository: "
                              "pass --plugins build/libevad_plugins.so (evad-build-plugins)")
        plugins = check_input_file(plugins, "plugin library")
    if python_backend not in ("ort", "trt"):
        raise ConfigError(f"python backend {python_backend!r}: choose ort or trt")
    if python_backend == "trt" and engine is None:
        raise ConfigError("--python-backend trt runs the engine: pass --engine FILE")
    if not 1 <= max_batch_size <= 1024:
        raise ConfigError(f"max batch size {max_batch_size}: use 1 to 1024")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists: remove it or pass --overwrite")
    check_output_dir(out.parent if str(out.parent) else Path("."), "repository folder")
    # a readable export with valid metadata and the detector's signature, or one line
    graph, meta, _ = load_detector(onnx_path)
    plan_batch = max_batch_size
    if engine is not None:  # a file that is not one of our engines is refused here
        profile = read_engine_metadata(engine).get("batch_profile") or [1, 1, max_batch_size]
        plan_batch = min(max_batch_size, int(profile[2]))  # the engine runs no larger batch
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: dict[str, Any] = {}
        files[f"{DETECTOR_ONNX}/1/model.onnx"] = _copy(onnx_path, tmp / DETECTOR_ONNX / "1" /
                                                       "model.onnx")
        data = onnx_path.with_name(onnx_path.name + ".data")
        if data.is_file():  # external weights travel with the graph, under the name it uses
            files[f"{DETECTOR_ONNX}/1/{data.name}"] = _copy(data, tmp / DETECTOR_ONNX / "1" /
                                                            data.name)
        (tmp / DETECTOR_ONNX / "config.pbtxt").write_text(config_text(
            DETECTOR_ONNX, "onnxruntime_onnx", graph, meta, max_batch_size=max_batch_size,
            gpu=gpu))
        if engine is not None and plugins is not None:
            files[f"{DETECTOR_PLAN}/1/model.plan"] = _copy(engine, tmp / DETECTOR_PLAN / "1" /
                                                           "model.plan")
            files[f"{DETECTOR_PLAN}/1/model.plan.json"] = _copy(
                Path(str(engine) + ".json"), tmp / DETECTOR_PLAN / "1" / "model.plan.json")
            # the plugin library and the kernel library beside it that it links
            for lib in sorted({plugins, *Path(plugins).parent.glob("libevad_*.so")}):
                files[f"{DETECTOR_PLAN}/{lib.name}"] = _copy(lib, tmp / DETECTOR_PLAN /
                                                             lib.name)
            if Path(plugins).name != "libevad_plugins.so":
                os.replace(tmp / DETECTOR_PLAN / Path(plugins).name,
                           tmp / DETECTOR_PLAN / "libevad_plugins.so")
                files[f"{DETECTOR_PLAN}/libevad_plugins.so"] = files.pop(
                    f"{DETECTOR_PLAN}/{Path(plugins).name}")
            (tmp / DETECTOR_PLAN / "config.pbtxt").write_text(config_text(
                DETECTOR_PLAN, "tensorrt_plan", graph, meta, max_batch_size=plan_batch,
                gpu=True))
        detector = (f"../../{DETECTOR_PLAN}/1/model.plan" if python_backend == "trt"
                    else f"../../{DETECTOR_ONNX}/1/model.onnx")
        (tmp / VIDEO_MODEL / "1").mkdir(parents=True)
        (tmp / VIDEO_MODEL / "1" / "model.py").write_text(_MODEL_PY)
        (tmp / VIDEO_MODEL / "config.pbtxt").write_text(
            python_config_text(detector, python_backend, meta))
        launch = tmp / "launch.sh"
        launch.write_text(_launch_script(engine is not None))
        launch.chmod(0o755)
        (tmp / MANIFEST).write_text(json.dumps(
            {"models": [DETECTOR_ONNX, *([DETECTOR_PLAN] if engine else []), VIDEO_MODEL],
             "evad_metadata": meta, "files": files}, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
