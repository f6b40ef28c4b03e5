#!/usr/bin/env bash
# The Python-backend environment for the Triton tests: NVIDIA's tritonserver 2.51 from the
# nvidia-pytriton wheel (server binary, Python-backend stubs, bundled libraries) in a venv of its
# own, with numpy < 2 (that stub's pybind11 misreads numpy 2 arrays) and what the evad model
# needs to run there: onnxruntime, onnx, OpenCV, and this checkout (no torch). The project's own venv
# keeps numpy 2 and holds only the client (tritonclient).
# Usage: bash .ci/triton_env.sh [ENV_DIR]   (default ~/.cache/evad-deploy/triton-env)
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir="${1:-${EVAD_TRITON_ENV:-$HOME/.cache/evad-deploy/triton-env}}"
t0=$SECONDS
if [ ! -x "$env_dir/bin/python" ] || ! "$env_dir/bin/python" -c "import importlib.util as u, onnxruntime, onnx, cv2; assert u.find_spec('pytriton')" 2>/dev/null; then
  rm -rf "$env_dir"
  python3 -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install -q --upgrade pip
  # its Python library is not used (it pins numpy < 2 and more): only the server it ships
  "$env_dir/bin/python" -m pip install -q --no-deps nvidia-pytriton==0.7.0
  "$env_dir/bin/python" -m pip install -q 'numpy>=1.24,<2' 'onnxruntime>=1.20' 'onnx>=1.17' \
    'opencv-python-headless>=4.8,<4.12' 'tqdm>=4.60' 'pyyaml>=6.0'
fi
# this checkout, without its dependencies (torch, onnx): the runtime it needs is torch-free
"$env_dir/bin/python" -m pip install -q --no-deps -e . > "$env_dir/evad-install.log" 2>&1 || { cat "$env_dir/evad-install.log"; exit 1; }
echo "triton_env.sh: $env_dir ready in $((SECONDS - t0)) s"
