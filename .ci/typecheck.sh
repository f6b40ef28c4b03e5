#!/usr/bin/env bash
# Type-check the TensorRT layer with basedpyright (pyrightconfig.json: engines/, plugins/__init__.py,
# plugins/python_plugins.py, evad/lazy.py, evad/runner.py, evad/op_contracts.py; mode "standard",
# Python 3.11) against tensorrt-stubs, which the code imports under TYPE_CHECKING. Exits non-zero
# on any error. Run inside the venv after `pip install -e '.[dev]'` (basedpyright comes with the
# dev extra; torch, onnx and numpy must be importable for their imports to resolve).
#
# tensorrt-stubs==10.13.0.35.1 goes in with --no-deps: it depends on the `tensorrt` placeholder
# wheels. With it installed `import tensorrt` succeeds as an empty package; the code tests a real
# attribute (tensorrt.Builder, get_plugin_registry), never ImportError.
#
# pyright cannot follow setuptools' editable finder, and package-dir maps top-level folders into
# evad.* (engines/ is evad.engines), so this script writes build/typecheck/evad/, a tree of
# relative symlinks made from pyproject.toml's package-dir (git ignores build/), which
# pyrightconfig.json's extraPaths names. Without it every evad.<stage> import is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
STUBS_VERSION=10.13.0.35.1
have=$(python -c "from importlib.metadata import version
try:
    print(version('tensorrt-stubs'))
except Exception:
    print('')")
if [ "$have" != "$STUBS_VERSION" ]; then
    python -m pip install -q --no-deps "tensorrt-stubs==$STUBS_VERSION"
fi
if ! command -v basedpyright >/dev/null; then
    echo "typecheck.sh: basedpyright not found: pip install -e '.[dev]'" >&2
    exit 1
fi
python - <<'PY'
import os
import re
import shutil
from pathlib import Path

text = Path("pyproject.toml").read_text()
try:
    import tomllib

    package_dir = tomllib.loads(text)["tool"]["setuptools"]["package-dir"]
except ModuleNotFoundError:  # Python 3.10: the one inline table is simple enough
    line = re.search(r"^package-dir\s*=\s*\{(.*)\}\s*$", text, re.M).group(1)
    package_dir = dict(re.findall(r'"([\w.]+)"\s*=\s*"([^"]+)"', line))
tree = Path("build/typecheck")
shutil.rmtree(tree, ignore_errors=True)
for pkg, folder in sorted(package_dir.items(), key=lambda kv: kv[0].count(".")):
    dest = tree.joinpath(*pkg.split("."))
    dest.parent.mkdir(parents=True, exist_ok=True)
    nested = [p for p in package_dir if p.startswith(pkg + ".")]
    if nested:  # a real folder: link its entries, the mapped subpackages get their own links
        dest.mkdir()
        for entry in sorted(Path(folder).iterdir()):
            if entry.name != "__pycache__" and not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(os.path.relpath(entry.resolve(), dest))
    else:
        if dest.is_symlink():
            dest.unlink()  # a folder of the same name linked from the parent package
        dest.symlink_to(os.path.relpath(Path(folder).resolve(), dest.parent))
PY
basedpyright --pythonpath "$(command -v python)" -p pyrightconfig.json
