#!/usr/bin/env bash
# CI for the TensorRT plugins on a clean CPU machine (no GPU, no full TensorRT):
#   1. installs what the plugin tests need into the active Python environment:
#      the runtime-only TensorRT (plugin registry), TensorRT-RTX (CPU ONNX parse/build check
#      through engines/builder.py), Triton (the Python
#      plugins' kernels, required by them: run here under TRITON_INTERPRET=1 and compiled to
#      cubin), cmake if missing;
#   2. when evad is installed (as in the README's test command): builds libevad_kernels.so, libevad_plugins.so and the CPU check
#      library with CMake + nvcc for sm_80 and sm_90 from plugins/CMakeLists.txt, which links
#      the object libraries of plugins/common/ and of each op folder (plugins/roi_align_3d/,
#      plugins/keyframe_topk_prune/; TensorRT headers: kernel-lens==2.0.1 from PyPI, cached
#      under plugins/build/, which git ignores); otherwise the tests' session fixture builds
#      them;
#   3. with --test: runs the op contract, plugin, kernel and engine tests (the GPU ones skip
#      with a reason); tests/test_op_contracts.py fails when plugins/common/evadOpContract.h
#      drifts from evad/op_contracts.py (regenerate: python -m evad.op_contracts --header).
#      tests/test_plugins.py also builds the EVAD_STATIC_REGISTRATION variant (sm_80 only,
#      linked against the runtime-only libnvinfer_lean.so.11) and checks it exports none of
#      loadLibrary's entry points; registering it needs TensorRT 11 headers (the kernel-lens ones
#      are TensorRT 10): set EVAD_STATIC_TENSORRT_INCLUDE to run that test, else it skips and
#      says why.
# Part of the README's test command (after `pip install -e '.[dev]'`, inside its venv). Needs
# nvcc (CUDA 12.x/13.x) on PATH or in /usr/local/cuda/bin to build the plugins; without it, it
# says so and the plugin tests skip with that reason, except with CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
python -m pip install -q tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings \
    tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116 \
    triton==3.9.0
if ! command -v cmake >/dev/null; then
    python -m pip install -q 'cmake>=3.24'
fi
if ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    # A CPU laptop without the CUDA toolkit still runs the rest: the tests that compile the
    # plugins skip with this reason. CI must compile them, so there it is an error.
    echo "plugins.sh: nvcc not found, so the C++/CUDA plugins are not built and their tests" \
        "skip; install the CUDA toolkit (12.x or 13.x, no GPU needed) to build them" >&2
    if [ "${CI:-}" = "true" ]; then
        exit 1
    fi
    exit 0
fi
export CUDACXX="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
# Before `pip install -e .` (as in .ci/run) only the installs happen: the tests build the
# libraries themselves (a session fixture, incremental in plugins/build/).
if python -c "import evad.plugins.build" 2>/dev/null; then
    evad-build-plugins --archs "80;90" -j "$(nproc)"
fi
echo "plugins.sh: done in $(( $(date +%s) - t0 )) s"
if [ "${1:-}" = "--test" ]; then
    pytest -q tests/test_op_contracts.py tests/test_kernels_cpu.py tests/test_plugins.py \
        tests/test_plugins_triton.py tests/test_engines.py \
        tests/test_kernels_gpu.py tests/test_engines_gpu.py
fi
