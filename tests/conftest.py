"""Shared test helpers: small seeded models and data, made in the test."""

from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from evad.models import EVAD, build_model

ROOT = Path(__file__).resolve().parents[1]
#: the runtime tests' export: short side 96, so 16:9 video fits (171 x 96)
TINY_H, TINY_W = 96, 192


def _examples():
    spec = importlib.util.spec_from_file_location("make_sample_video",
                                                  ROOT / "examples" / "make_sample_video.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: make_video(path, seconds, width, height, fps) -> path: synthetic moving figures (mp4v)
make_video = _examples().make_video

def read_frames(path) -> list:
    """Every frame of a video as OpenCV decodes it: (H, W, 3) uint8 BGR arrays."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


#: in CI a missing tool or extra fails its tests instead of skipping them
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def server_env() -> Path:
    """The Triton server's environment (``bash .ci/triton_env.sh``): skipped without one,
    except in CI, which must have it."""
    from evad.serving.triton_server import triton_env

    env = triton_env()
    if not (env / "bin" / "python").exists():
        if IN_CI:
            pytest.fail(f"CI: no Triton server environment at {env} (bash .ci/triton_env.sh)")
        pytest.skip(f"no Triton server environment at {env}: bash .ci/triton_env.sh")
    return env


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose tool is missing, except in CI, where the tool must be there."""
    if IN_CI:
        pytest.fail(f"CI must run this test: {reason} (see .ci/plugins.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def plugin_library() -> str:
    """libevad_plugins.so built by CMake (incremental, in the build cache) for sm_80 and sm_90:
    this is also the proof that every .cu compiles with nvcc for both."""
    from evad.plugins import build

    if shutil.which("cmake") is None:
        skip_or_fail("cmake is not installed")
    try:
        build._find_nvcc()
    except Exception as e:  # noqa: BLE001
        skip_or_fail(str(e))
    got = build.build_libraries(archs="80;90", quiet=True,
                                jobs=int(os.environ.get("EVAD_BUILD_JOBS", "2")))
    return str(got["plugins"])


def require(module: str, extra: str):
    """``module``, imported; skip the test module (with the extra to install) when it is
    missing, except in CI, where it must be there."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is missing: pip install "
                               f"'evad-deploy[{extra}]'")


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache_in_tmp(tmp_path_factory):
    """OpenVINO's compiled-model cache in a session folder, not the user's ~/.cache (child
    processes, such as evad-bench's, inherit it)."""
    old = os.environ.get("EVAD_OPENVINO_CACHE")
    os.environ["EVAD_OPENVINO_CACHE"] = str(tmp_path_factory.mktemp("openvino-cache"))
    yield
    if old is None:
        os.environ.pop("EVAD_OPENVINO_CACHE", None)
    else:
        os.environ["EVAD_OPENVINO_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model() -> EVAD:
    """Random tiny weights, calmed (``EVAD.calm``): attention logits of order 1, so importance
    scores do not tie within float noise (docs/design.md, "Precision and parity")."""
    torch.manual_seed(0)
    return build_model("tiny").eval().calm()


@pytest.fixture
def clip_small() -> torch.Tensor:
    """One seeded normalised (1, 3, 16, 96, 160) clip."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 16, 96, 160, generator=g)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_model) -> Path:
    """The calmed tiny model exported at 96 x 192 (~20 s, once per session)."""
    from evad.export import build_metadata, export_onnx, save_model
    from evad.metadata import write_metadata

    proto = export_onnx(tiny_model, TINY_H, TINY_W)
    write_metadata(proto, build_metadata(tiny_model.preset, TINY_H, TINY_W, 18))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["evad.input_size"]) == [TINY_H, TINY_W]
    return save_model(proto, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_int8_onnx(tmp_path_factory, tiny_onnx) -> Path:
    """The tiny export's calibrated INT8 export, as evad-export --int8 writes it: 16 clips of
    4 synthetic 320 x 180 videos (seed 100), once per session (~5 s)."""
    from evad.datasets.synthetic import generate_dataset
    from evad.export import int8
    from evad.export.exporter import write_int8
    from evad.runtime.calibration import calibration_clips

    root = tmp_path_factory.mktemp("tiny_int8")
    calib = generate_dataset(root / "calib", 4, seed=100, width=320, height=180, fps=10.0,
                             duration=4.0, progress=False)
    out = root / "tiny.int8.onnx"
    write_int8(tiny_onnx, out, int8.Calibration(int8.plan_calibration(calib / "videos", 16),
                                                calibration_clips))
    return out


@pytest.fixture(scope="session")
def exported_onnx(tmp_path_factory):
    """``(preset, height, width) -> Path``: that preset, random weights (seed 0) calmed, exported
    at that size with its metadata, once per session (vit_b_ktp: ~75 s and 5.6 GB peak each;
    tests that ask for it are marked slow)."""
    from evad.export import build_metadata, export_onnx, save_model
    from evad.metadata import write_metadata

    made: dict[tuple[str, int, int], Path] = {}

    def get(preset: str, height: int, width: int) -> Path:
        key = (preset, height, width)
        if key not in made:
            torch.manual_seed(0)
            model = build_model(preset).eval().calm()
            proto = export_onnx(model, height, width)
            write_metadata(proto, build_metadata(model.preset, height, width, 18))
            made[key] = save_model(proto, tmp_path_factory.mktemp("onnx")
                                   / f"{preset}_{height}x{width}.onnx")
            del proto, model
        return made[key]

    return get


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory) -> Path:
    """4 s of 320 x 180 synthetic video at 10 fps (40 frames: fewer than one clip's 64)."""
    return make_video(tmp_path_factory.mktemp("video") / "sample.mp4", 4.0, 320, 180, 10.0)


class MjpegStream:
    """A loopback MJPEG server (standard library only) sending ``frames`` (JPEG bytes, or any
    bytes in their place) at ``fps`` to each client, then closing: how a dropped stream looks
    to the client. ``sessions``: one entry per connection, with when its first and last frame
    were sent."""

    def __init__(self, frames: list[bytes], fps: float) -> None:
        self.frames, self.fps = frames, fps
        # one entry per connection, in order (evad-trt-run probes the stream, then reconnects)
        self.sessions: list[dict[str, float]] = []
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                t0 = time.monotonic()
                session = {"first_sent": 0.0, "last_sent": float("inf")}
                stream.sessions.append(session)
                try:
                    for i, jpg in enumerate(stream.frames):
                        time.sleep(max(0.0, t0 + i / stream.fps - time.monotonic()))
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(jpg) + jpg + b"\r\n")
                        self.wfile.flush()
                        if i == 0:
                            session["first_sent"] = time.monotonic()
                    session["last_sent"] = time.monotonic()
                except (BrokenPipeError, ConnectionResetError):  # the probe hangs up early
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a query string, as many IP cameras need: a live URL, not a glob
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cam/front.mjpg?res=320"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MjpegStream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def container_path(folder: Path, server_env: Path,
                   options: str = "--allow-metrics=false") -> str:
    """A ``PATH`` like NVIDIA's Triton container's: ``folder/container-bin/tritonserver`` (the
    server environment's tritonserver wrapped with its backend folder, libraries and
    ``options``) and a ``python3`` that has evad (the server environment's)."""
    import subprocess

    probe = ("import importlib.util, sys, sysconfig; "
             "print(importlib.util.find_spec('pytriton').submodule_search_locations[0]); "
             "print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_config_var('LIBDIR'))")
    pytriton, version, libdir = subprocess.run(
        [str(server_env / "bin" / "python"), "-c", probe], capture_output=True, text=True,
        check=True).stdout.split()
    ts = Path(pytriton) / "tritonserver"
    backend = folder / "backends" / "python"
    backend.mkdir(parents=True)
    for f in (ts / "backends" / "python" / "libtriton_python.so",
              ts / "backends" / "python" / "triton_python_backend_utils.py",
              ts / "python_backend_stubs" / version / "triton_python_backend_stub"):
        (backend / f.name).symlink_to(f)
    bin_ = folder / "container-bin"
    bin_.mkdir()
    shim = bin_ / "tritonserver"
    shim.write_text(
        "#!/bin/sh\n"
        f'export LD_LIBRARY_PATH="{libdir}:{Path(pytriton).parent / "nvidia_pytriton.libs"}"\n'
        f'exec "{ts / "bin" / "tritonserver"}" --backend-directory="{backend.parent}" '
        f'--cache-directory="{ts / "caches"}" {options} --exit-timeout-secs=5 "$@"\n')
    shim.chmod(0o755)
    return f"{bin_}{os.pathsep}{server_env / 'bin'}{os.pathsep}{os.environ['PATH']}"
