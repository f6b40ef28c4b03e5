#!/usr/bin/env bash
# The Triton server's own environment (for the tests and evad-serve): NVIDIA's tritonserver 2.51
# from the nvidia-pytriton wheel (server binary, Python-backend stubs, bundled libraries) in a
# venv of its own, with what the evad model imports at run time and nothing more: numpy < 2
# (that stub's pybind11 misreads numpy 2 arrays), onnxruntime, onnx, OpenCV, tqdm, and
# evad-deploy as the wheel built from this checkout, installed with --no-deps (no torch) the way
# NVIDIA's container gets it (docs/environment.md, "Triton Inference Server"). The project's
# own venv keeps numpy 2 and holds only the client (tritonclient).
# Usage: bash .ci/triton_env.sh [--editable] [ENV_DIR]   (default ~/.cache/evad-deploy/triton-env)
#   --editable: install this checkout in place instead of the wheel, so edits to serving/ reach
#   the server without rerunning this script (the wheel is a snapshot: rerun after changes).
set -euo pipefail
cd "$(dirname "$0")/.."
editable=0
if [ "${1:-}" = "--editable" ]; then editable=1; shift; fi
env_dir="${1:-${EVAD_TRITON_ENV:-$HOME/.cache/evad-deploy/triton-env}}"
t0=$SECONDS
if [ ! -x "$env_dir/bin/python" ] || ! "$env_dir/bin/python" -c "import importlib.util as u, numpy, onnxruntime, onnx, cv2, tqdm; assert u.find_spec('pytriton') and numpy.__version__ < '2'" 2>/dev/null; then
  rm -rf "$env_dir"
  python3 -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install -q --upgrade pip
  # the runtime first, then the --no-deps wheels: pip checks the declared requirements of what
  # is already installed on every install, and nvidia-pytriton's (tritonclient, numpy < 2 ...)
  # and evad-deploy's (torch ...) are left out on purpose, which it reported as "ERROR: pip's
  # dependency resolver ..."; a --no-deps install checks nothing
  "$env_dir/bin/python" -m pip install -q 'numpy>=1.24,<2' 'onnxruntime>=1.20' 'onnx>=1.17' \
    'opencv-python-headless>=4.8,<4.12' 'tqdm>=4.60'
  # its Python library is not used (it pins numpy < 2 and more): only the server it ships
  "$env_dir/bin/python" -m pip install -q --no-deps nvidia-pytriton==0.7.0
fi
log="$env_dir/evad-install.log"
if [ "$editable" = 1 ]; then
  "$env_dir/bin/python" -m pip install -q --no-deps -e . > "$log" 2>&1 || { cat "$log"; exit 1; }
  what="this checkout (editable)"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # built from a copy of the files git tracks or would track: an in-tree build reuses build/lib,
  # whose stale files (a module since removed) would land in the wheel
  src=.
  if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    mkdir "$work/src"
    git ls-files -z -co --exclude-standard \
      | tar --null --ignore-failed-read -T - -cf - 2> /dev/null | tar -xf - -C "$work/src"
    src="$work/src"
  fi
  { "$env_dir/bin/python" -m pip wheel -q --no-deps -w "$work/dist" "$src" \
      && "$env_dir/bin/python" -m pip install -q --no-deps --force-reinstall "$work"/dist/*.whl
  } > "$log" 2>&1 || { cat "$log"; exit 1; }
  what="$(basename "$work"/dist/*.whl)"
fi
echo "triton_env.sh: $env_dir ready in $((SECONDS - t0)) s ($what)"
