"""Where the OpenVINO path's peak memory goes: peak RSS after each step of compiling an export
and running its first clips, each recipe in a fresh process.

    python benchmarks/openvino_memory.py --onnx exports/vit_b_ktp.onnx --precision bf16 \\
        --json benchmarks/results/openvino_memory.json

Recipes: ``weights-in-rewrite`` is how the runner first compiled (the whole export through
the graph rewrite, weights included); ``weights-aside`` with the large initializers taken out
before the rewrite and given back to OpenVINO as Constants, the export's symbolic batch kept;
``static-batch1`` as ``weights-aside`` with every input shape fixed at one clip;
``runner`` is ``OpenVinoRunner`` itself, end to end (one static clip, the rewritten graph
kept as an IR file in the cache and compiled from it, the freed heap trimmed before OpenVINO
compiles: ``evad.export.openvino_runner._compile``); ``torch-fp32`` the torch reference (the
preset the export
names, seed 0), the bar. Every recipe runs the same two seeded clips and reports the SHA-256 of
its outputs: equal hashes, bit-identical outputs. Each
step reports VmHWM (the peak so far) and VmRSS (now). OpenVINO's model cache is
``EVAD_OPENVINO_CACHE`` as for the runner; ``--cold`` uses a fresh empty one (a vit_b_ktp
compile takes minutes on 2 cores), so each recipe compiles once cold and then loads warm.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evad.atomic import write_json_atomic

RECIPES = ("weights-in-rewrite", "weights-aside", "runner", "static-batch1", "torch-fp32")


def _status() -> dict[str, float]:
    """VmHWM and VmRSS of this process, GB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line[:5]] = int(line.split()[1]) * 1024 / 1e9
    return out


def child(recipe: str, onnx_path: str, precision: str) -> None:
    """One recipe: a JSON line per step on stdout, then one with the SHA-256 of its outputs on
    two seeded clips (equal hashes: bit-identical outputs)."""
    t0 = time.perf_counter()

    def step(name: str) -> None:
        s = _status()
        print(json.dumps({"step": name, "peak_gb": round(s["VmHWM"], 3),
                          "rss_gb": round(s["VmRSS"], 3),
                          "t_s": round(time.perf_counter() - t0, 1)}), flush=True)

    run = _open(recipe, onnx_path, precision, step)
    size = np.array([[288, 512]], np.int64)
    digest = hashlib.sha256()
    for seed, name in ((0, "first clip"), (1, "second clip")):
        clip = np.random.default_rng(seed).standard_normal((1, 3, 16, 288, 512), np.float32)
        out = run(clip, size)
        step(name)
        for key in sorted(out):
            digest.update(key.encode() + np.ascontiguousarray(out[key]).tobytes())
    print(json.dumps({"outputs_sha256": digest.hexdigest()}), flush=True)


def _open(recipe: str, onnx_path: str, precision: str,
          step: Callable[[str], None]) -> Callable[..., dict[str, np.ndarray]]:
    """``recipe``'s model, compiled step by step; a call (clip, image_size) -> outputs."""
    if recipe == "torch-fp32":  # the yardstick: the reference's peak, as evad-bench opens it
        from evad import models
        from evad.export.metadata import preset_of
        from evad.metadata import read_metadata
        from evad.runtime import backends
        model, _ = models.load_or_build(None, preset_of(read_metadata(onnx_path)).name, seed=0)
        runner, _ = backends.open_runner("torch", model=model, precision="fp32")
        step("TorchRunner")
        return runner
    import onnx
    import openvino as ov

    from evad.export import openvino_cache as ovc
    from evad.export import openvino_runner as ovr
    from evad.export.openvino_graph import openvino_graph
    step("imports")
    if recipe == "runner":
        runner = ovr.OpenVinoRunner(onnx_path, precision)
        step("OpenVinoRunner()")
        return runner
    core = ov.Core()
    export = onnx.load(onnx_path)
    step("onnx.load")
    weights = {} if recipe == "weights-in-rewrite" else ovr._weights_to_inputs(export)
    if weights:
        step("weights aside")
    graph = openvino_graph(export)
    step("graph rewrite")
    del export
    data = graph.SerializeToString()
    del graph
    step("serialize")
    model = core.read_model(data, ov.Tensor(np.empty(0, np.uint8)))
    del data
    ovr._inputs_to_constants(model, weights)
    del weights
    if recipe == "static-batch1":  # every shape static: OpenVINO plans its buffers once
        model.reshape({"clip": [1, 3, 16, 288, 512], "image_size": [1, 2]})
    step("read_model")
    config = {"INFERENCE_PRECISION_HINT": ovr.precision_hint(precision, precision == "int8", core),
              "CACHE_DIR": ovc.precision_folder(precision)}
    compiled = core.compile_model(model, "CPU", config)
    del model
    step("compile_model")
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(clip: np.ndarray, size: np.ndarray) -> dict[str, np.ndarray]:
        result = request.infer({"clip": clip, "image_size": size})
        return {n: np.array(result[o]) for n, o in zip(names, compiled.outputs, strict=True)}
    return run


def run_child(recipe: str, onnx_path: Path, precision: str, cache: str) -> list[dict[str, Any]]:
    """``recipe`` in a fresh process with ``cache`` as the OpenVINO cache; its steps."""
    env = {**os.environ, "EVAD_OPENVINO_CACHE": cache}
    proc = subprocess.run([sys.executable, __file__, "--child", recipe, "--onnx",
                           str(onnx_path), "--precision", precision],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{recipe} failed: {proc.stderr.strip().splitlines()[-1]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True, help="an evad-export ONNX")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--cold", action="store_true",
                    help="a fresh empty OpenVINO cache: each recipe cold, then warm")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, str(args.onnx), args.precision)
        return

    from evad.export.openvino_cache import openvino_cache_dir
    from evad.runtime.benchmark import cpu_features, cpu_name, package_versions
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
        "cpu_features": cpu_features(), "versions": package_versions(),
        "onnx": args.onnx.name, "onnx_mb": round(args.onnx.stat().st_size / 1e6, 1),
        "precision": args.precision, "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            cache = str(Path(tmp) / recipe) if args.cold else openvino_cache_dir()
            cold = args.cold and recipe != "torch-fp32"
            for state in ("cold", "warm") if cold else ("as found",):
                lines = run_child(recipe, args.onnx, args.precision, cache)
                steps = [x for x in lines if "step" in x]
                peak = max(s["peak_gb"] for s in steps)
                report["runs"].append({"recipe": recipe, "cache": state, "peak_gb": peak,
                                       "outputs_sha256": lines[-1]["outputs_sha256"],
                                       "steps": steps})
                print(f"{recipe} ({state} cache): peak {peak:.2f} GB; " + ", ".join(
                    f"{s['step']} {s['peak_gb']:.2f}/{s['rss_gb']:.2f}" for s in steps))
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
