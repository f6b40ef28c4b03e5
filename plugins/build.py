"""``evad-build-plugins``: build libevad_kernels.so and libevad_plugins.so with CMake + nvcc.

TensorRT headers come from ``--tensorrt-include``, ``$TensorRT_INCLUDE_DIR``, ``$TensorRT_ROOT``
or a system install; where there is none (CI, laptops), from the PyPI package
``kernel-lens==2.0.1`` (TensorRT 10.14 headers, Apache-2.0), downloaded with ``pip download
--no-deps`` into the build cache. The libraries land in :func:`evad.plugins.library_dir`, where
:func:`evad.plugins.load` finds them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from evad.command import (
    ArgumentParser,
    check_input_dir,
    check_input_file,
    check_output_dir,
    number,
    run_command,
)
from evad.errors import EvadError
from evad.plugins import library_dir

__all__ = ["DEFAULT_ARCHS", "build_cpu_check_library", "build_libraries", "common_dir",
           "cuda_include_dir", "find_tensorrt_include", "kernel_lens_headers", "main",
           "source_dir"]

DEFAULT_ARCHS = "80;86;89;90"
KERNEL_LENS = "kernel-lens==2.0.1"
_SYSTEM_INCLUDES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu",
                    "/usr/include", "/usr/local/tensorrt/include", "/opt/tensorrt/include")


def source_dir() -> Path:
    """The CMake source tree: this package's own folder, holding CMakeLists.txt, ``common/``
    and one folder per op (``roi_align_3d/``, ``keyframe_topk_prune/``)."""
    return Path(__file__).resolve().parent


def common_dir() -> Path:
    """``common/``: the sources both ops share (evadMath.h, evadKernels.h, the generated
    evadOpContract.h, pluginCommon.h, the CPU check library, the C++ self-test in tests/)."""
    return source_dir() / "common"


def default_build_dir() -> Path:
    """Build cache: ``$EVAD_PLUGIN_BUILD_DIR`` or ``<package>/build`` (git-ignored)."""
    env = os.environ.get("EVAD_PLUGIN_BUILD_DIR")
    return Path(env) if env else source_dir() / "build"


def find_tensorrt_include(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory holding ``NvInferRuntime.h`` of a TensorRT install, or None."""
    cands = [explicit, os.environ.get("TensorRT_INCLUDE_DIR")]
    if os.environ.get("TensorRT_ROOT"):
        cands.append(os.path.join(os.environ["TensorRT_ROOT"], "include"))
    cands += list(_SYSTEM_INCLUDES)
    for c in cands:
        if c and (Path(c) / "NvInferRuntime.h").is_file():
            return Path(c)
    if explicit:
        raise EvadError(f"--tensorrt-include {explicit} has no NvInferRuntime.h")
    return None


def kernel_lens_headers(cache: Path) -> Path:
    """TensorRT headers from the PyPI package kernel-lens==2.0.1 (downloaded once into ``cache``).

    Raises:
        EvadError: pip cannot download the package (no network, no index).
    """
    dest = cache / "kernel-lens-2.0.1"
    inc = dest / "kernel_lens" / "include" / "tensorrt"
    if (inc / "NvInferRuntime.h").is_file():
        return inc
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("kernel_lens-2.0.1-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", KERNEL_LENS,
               "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(cache.glob("kernel_lens-2.0.1-*.whl"))
        if proc.returncode or not wheels:
            raise EvadError(f"no TensorRT headers: install TensorRT (or pass --tensorrt-include), "
                            f"or allow `pip download {KERNEL_LENS}` ({proc.stderr.strip()[-200:]})")
    with zipfile.ZipFile(wheels[0]) as z:
        for name in z.namelist():
            if "/include/tensorrt/" in name:
                z.extract(name, dest)
    return inc


def _find_nvcc() -> str:
    for c in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if c and Path(c).is_file():
            return str(c)
    raise EvadError("nvcc not found: install the CUDA toolkit (12.x or 13.x) or set CUDACXX")


def cuda_include_dir() -> Path:
    """The CUDA toolkit's include directory (cuda_runtime_api.h), for host-compiled code that
    includes TensorRT headers.

    Raises:
        EvadError: no CUDA toolkit found.
    """
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    cands.append(str(Path(_find_nvcc()).resolve().parent.parent))
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime_api.h").is_file():
            return Path(c) / "include"
    raise EvadError("CUDA headers (cuda_runtime_api.h) not found: set CUDA_HOME")


def build_libraries(out_dir: Path | None = None, build_dir: Path | None = None,
                    archs: str = DEFAULT_ARCHS, tensorrt_include: str | None = None,
                    jobs: int | None = None, quiet: bool = False,
                    static_registration: bool = False,
                    tensorrt_library: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Configure and build with CMake (incremental), then copy the libraries to ``out_dir``.

    Args:
        out_dir: where the .so files go (default :func:`evad.plugins.library_dir`).
        build_dir: the build cache (default ``plugins/build``; CMake tree in ``cmake/``, or
            ``cmake-static/`` for the static-registration variant).
        archs: CMAKE_CUDA_ARCHITECTURES, ``;``-separated (default sm_80/86/89/90).
        tensorrt_include: directory with NvInferRuntime.h; default: a TensorRT install, else the
            kernel-lens headers.
        jobs: parallel compile jobs (default: CPU count).
        quiet: hide CMake's output unless it fails.
        static_registration: build the variant that registers its creators (namespace
            ``evad``) when loaded and exports no ``getCreators`` (links libnvinfer: the headers
            must be of the same TensorRT major version as that library).
        tensorrt_library: the libnvinfer (or libnvinfer_lean) to link for ``static_registration``
            (default: CMake's search under ``$TensorRT_ROOT`` and the system paths).

    Returns:
        ``{"kernels": path, "plugins": path, "kernels_cpu": path}`` of the copied libraries.

    Raises:
        EvadError: cmake/nvcc missing or the build failed (with the tail of its log).
    """
    out_dir = Path(out_dir) if out_dir else library_dir()
    build_dir = Path(build_dir) if build_dir else default_build_dir()
    if shutil.which("cmake") is None:
        raise EvadError("cmake not found: pip install cmake (>= 3.24) or install it with apt")
    nvcc = _find_nvcc()
    inc = find_tensorrt_include(tensorrt_include) or kernel_lens_headers(build_dir / "deps")
    tree = build_dir / ("cmake-static" if static_registration else "cmake")
    configure = ["cmake", "-S", str(source_dir()), "-B", str(tree),
                 f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
                 f"-DTensorRT_INCLUDE_DIR={inc}", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DEVAD_STATIC_REGISTRATION={'ON' if static_registration else 'OFF'}",
                 f"-DTensorRT_LIBRARY={tensorrt_library or ''}"]
    if shutil.which("ninja") and not (tree / "Makefile").exists():
        configure += ["-G", "Ninja"]
    steps = [configure, ["cmake", "--build", str(tree), "-j", str(jobs or os.cpu_count() or 2)]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode:
            tail = (proc.stdout or "")[-2000:] + (proc.stderr or "")[-2000:] if quiet else ""
            raise EvadError(f"plugin build failed: {' '.join(cmd[:3])} ... exit "
                            f"{proc.returncode}\n{tail}")
    out_dir.mkdir(parents=True, exist_ok=True)
    got = {}
    for key, name in (("kernels", "libevad_kernels.so"), ("plugins", "libevad_plugins.so"),
                      ("kernels_cpu", "libevad_kernels_cpu.so")):
        src = tree / name
        if not src.is_file():
            raise EvadError(f"the build did not produce {name} (see the CMake output)")
        tmp = out_dir / (name + ".tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, out_dir / name)  # atomic: a loaded library is never half-written
        got[key] = out_dir / name
    return got


def build_cpu_check_library(out_dir: Path) -> Path:
    """Build ``libevad_kernels_cpu.so`` (evadMath.h with the host compiler, ~1 s) into out_dir.

    This is the library CI checks against the torch reference; it needs only g++ (or $CXX).
    """
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EvadError("no host C++ compiler: install g++")
    kdir = common_dir()
    out = Path(out_dir) / "libevad_kernels_cpu.so"
    cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
           f"-I{kdir}", f"-I{source_dir() / 'keyframe_topk_prune'}",
           str(kdir / "evadKernelsCpu.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise EvadError(f"CPU check library failed to compile:\n{proc.stderr[-3000:]}")
    return out


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="evad-build-plugins", description="Build the evad CUDA kernels "
        "(libevad_kernels.so) and TensorRT plugins (libevad_plugins.so) with CMake and nvcc, "
        "and install them where evad.plugins.load() finds them.")
    ap.add_argument("--archs", default=DEFAULT_ARCHS,
                    help=f"CUDA architectures, ';'-separated (default {DEFAULT_ARCHS})")
    ap.add_argument("--tensorrt-include", default=None,
                    help="directory holding NvInferRuntime.h (default: a TensorRT install, else "
                    f"the headers of {KERNEL_LENS} from PyPI)")
    ap.add_argument("--build-dir", type=Path, default=None,
                    help="build cache (default plugins/build or $EVAD_PLUGIN_BUILD_DIR)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the libraries go (default: evad.plugins.library_dir())")
    ap.add_argument("-j", "--jobs", type=number(1, 1024, integer=True), default=None,
                    help="parallel compile jobs")
    ap.add_argument("--static-registration", action="store_true",
                    help="build libevad_plugins.so that registers its creators (namespace evad) "
                    "when loaded instead of exporting getCreators; links libnvinfer, whose major "
                    "version must be the headers' (see --tensorrt-lib)")
    ap.add_argument("--tensorrt-lib", default=None,
                    help="the libnvinfer (or libnvinfer_lean) to link with --static-registration")
    return ap


def _check_flags(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The combination argparse cannot express, refused before any work (exit 2)."""
    if args.tensorrt_lib and not args.static_registration:
        ap.error("--tensorrt-lib is only used with --static-registration")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    _check_flags(ap, args)
    t0 = time.perf_counter()

    def body() -> int:
        if args.out is not None:
            check_output_dir(args.out, "--out")
        if args.build_dir is not None:
            check_output_dir(args.build_dir, "--build-dir")
        if args.tensorrt_include is not None:
            check_input_dir(args.tensorrt_include, "--tensorrt-include")
        if args.tensorrt_lib is not None:
            check_input_file(args.tensorrt_lib, "--tensorrt-lib")
        got = build_libraries(args.out, args.build_dir, args.archs, args.tensorrt_include,
                              args.jobs, static_registration=args.static_registration,
                              tensorrt_library=args.tensorrt_lib)
        for path in got.values():
            print(f"plugins: wrote {path}")
        print(f"plugins: built for sm {args.archs.replace(';', ', ')} in "
              f"{time.perf_counter() - t0:.1f} s")
        return 0

    return run_command("evad-build-plugins", body)


if __name__ == "__main__":
    sys.exit(main())
