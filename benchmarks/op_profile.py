"""Where a clip's time goes on the CPU, op by op: OpenVINO's per-layer performance counters
(bf16, the fast path, and fp32 beside it) and torch's profiler on the reference (bf16 autocast).

    python benchmarks/op_profile.py --onnx exports/vit_b_ktp.onnx \\
        --json benchmarks/results/op_profile_vit_b_ktp_288x512.json

Without ``--onnx`` it exports ``--preset`` (random calmed weights, ``--seed``) at
``--height`` x ``--width`` into a temporary folder first, as evad-bench does. Each OpenVINO
layer's time is its ``real_time`` from ``request.get_profiling_info()`` after one warm-up clip
(summed over ``--runs`` profiled clips, reported per clip); torch's is each op's self CPU time
(``key_averages``). The time is grouped by layer type, by OpenVINO's exec type (the kernel:
``brgemm_avx512_amx`` is AMX, ``jit_*`` vector code, ``ref_*`` plain C++) and by the model's
parts, read from the layer names (the export names its nodes after the torch modules).
"""

from __future__ import annotations

import argparse
import datetime
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from evad.atomic import write_json_atomic
from evad.export.openvino_runner import OpenVinoRunner
from evad.runtime.benchmark import cpu_features, cpu_name, package_versions

#: OpenVINO layer types that are matrix products (the products the GEMM rate measures)
OV_MATRIX = ("FullyConnected", "MatMul")
#: torch ops (self time) that are matrix products; attention's fused kernel and the patch
#: embedding's convolution are counted apart
TORCH_MATRIX = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                "aten::linear")

#: the part the linear layers are counted in
LINEAR_PART = "linear layers (qkv, proj, MLP, heads)"

#: the model's parts, by layer name: the first pattern that matches names the part. The names
#: are the export's (the dynamo exporter names nodes after the aten op: ``node_linear_12``,
#: ``node_MultiHeadAttention_184``, ``node_layer_norm_3``), the unrolled pruning's
#: (``_prune<i>_``), the patch product's (``_patch<i>_``) and the action pooler's products
#: (``_clippool<i>_``); OpenVINO keeps them in its layer
#: names, suffixed where a pass split or fused a node (the fused attention becomes one
#: ``Subgraph``). The export's names do not tell the MLP's linear layers from qkv / proj / the
#: heads': they are one part.
PARTS = (
    ("pruning importance / TopK / gathers", r"_prune\d+_|keyframe_topk"),
    ("attention (MatMul, Softmax, MatMul)", r"MultiHeadAttention"),
    ("RoIAlign3D", r"roi_align|ROIAlign|_clippool\d+_"),
    ("LayerNorm", r"layer_norm|LayerNorm|MVN"),
    (LINEAR_PART, r"node_linear|node_Gemm|node_MatMul|node_bmm"),
    ("GELU", r"gelu|Erf"),
    ("patch embedding (its Conv, or the patch product OpenVINO is given)",
     r"_patch\d+_|node_conv3d"),
    ("convolutions (the heads)", r"node_conv"),
)


def part_of(name: str, layer_type: str) -> str:
    """The model part a layer belongs to (``PARTS``), ``reorders / converts`` for layout and
    precision changes OpenVINO inserted, else ``other``. A fully connected layer of no part by
    name is a linear layer: OpenVINO names an int8 product after the ``Multiply`` it fused in
    (``Multiply_80970``: the dequantization, or a SmoothQuant scale)."""
    if layer_type in ("Reorder", "Convert"):
        return "reorders / converts"
    for part, pattern in PARTS:
        if re.search(pattern, f"{name} {layer_type}"):
            return part
    if layer_type.startswith("FullyConnected"):
        return LINEAR_PART
    return "other"


def _share(groups: dict[str, float], total: float, top: int = 0) -> list[dict[str, Any]]:
    """``groups`` (name -> ms) as rows, largest first, with their share of ``total``."""
    rows = sorted(groups.items(), key=lambda kv: -kv[1])
    rows = rows[:top] if top else rows
    return [{"name": k, "ms": round(v, 2), "share": round(v / total, 4)} for k, v in rows]


def profile_openvino(onnx: Path, precision: str, clip: np.ndarray, size: np.ndarray,
                     runs: int) -> dict[str, Any]:
    """OpenVINO's per-layer counters for ``runs`` clips at ``precision``, grouped."""
    with OpenVinoRunner(onnx, precision, perf_count=True) as runner:
        runner(clip, size)  # warm-up: the first run allocates and packs
        by_type: dict[str, float] = defaultdict(float)
        by_exec: dict[str, float] = defaultdict(float)
        by_part: dict[str, float] = defaultdict(float)
        other: dict[str, float] = defaultdict(float)  # the layers of no part, by type
        per_layer: dict[tuple[str, str, str], float] = defaultdict(float)
        wall = []
        for _ in range(runs):
            t0 = time.perf_counter()
            runner(clip, size)
            wall.append(time.perf_counter() - t0)
            for p in runner.request.get_profiling_info():
                if p.status != p.Status.EXECUTED:
                    continue
                ms = p.real_time.total_seconds() * 1e3 / runs
                by_type[p.node_type] += ms
                by_exec[f"{p.node_type}: {p.exec_type}"] += ms
                part = part_of(p.node_name, p.node_type)
                by_part[part] += ms
                if part == "other":
                    other[p.node_type] += ms
                per_layer[(p.node_name, p.node_type, p.exec_type)] += ms
    total = sum(by_type.values())
    matrix = sum(by_type.get(t, 0.0) for t in OV_MATRIX)
    non_matrix = {k: v for k, v in by_type.items() if k not in OV_MATRIX}
    return {
        "precision": precision, "wall_s_per_clip": round(float(np.median(wall)), 3),
        "layers_ms_per_clip": round(total, 1),
        "matmul_fc_share": round(matrix / total, 4),
        "top_non_matmul": _share(non_matrix, total, 8),
        "by_layer_type": _share(by_type, total),
        "by_exec_type": _share(by_exec, total, 25),
        "by_model_part": _share(by_part, total),
        "other_by_layer_type": _share(other, total, 10),
        "top_layers": [{"name": n, "type": t, "exec": e, "ms": round(v, 2)} for (n, t, e), v in
                       sorted(per_layer.items(), key=lambda kv: -kv[1])[:25]],
    }


def profile_torch(preset: str, seed: int, clip: np.ndarray, size: np.ndarray,
                  precision: str) -> dict[str, Any]:
    """torch's profiler on the reference at ``precision`` (bf16: autocast), one clip after a
    warm-up, each op's self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from evad import models
    from evad.runtime import backends

    model, _ = models.load_or_build(None, preset, seed=seed)
    runner, _ = backends.open_runner("torch", model=model, model_name=f"preset {preset}",
                                     cuda=False, precision=precision)
    with runner:
        runner(clip, size)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner(clip, size)
        wall = time.perf_counter() - t0
    ops = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    total = sum(ops.values())
    matrix = sum(v for k, v in ops.items() if k in TORCH_MATRIX)
    return {
        "precision": precision, "threads": torch.get_num_threads(),
        "wall_s_profiled": round(wall, 3), "self_cpu_ms": round(total, 1),
        "matmul_share": round(matrix / total, 4),
        "top_non_matmul": _share({k: v for k, v in ops.items() if k not in TORCH_MATRIX},
                                 total, 8),
        "by_op": _share(ops, total, 30),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, default=None, help="an evad-export ONNX (default: "
                    "export --preset at --height x --width into a temporary folder)")
    ap.add_argument("--preset", default="vit_b_ktp")
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", default="bf16,fp32", help="OpenVINO precisions, in order")
    ap.add_argument("--runs", type=int, default=2, help="profiled clips after one warm-up")
    ap.add_argument("--no-torch", action="store_true", help="skip torch's profiler")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        onnx = args.onnx
        if onnx is None:
            from evad.export.exporter import Exporter
            onnx = Exporter(args.height, args.width, made_by="op_profile")(
                Path(tmp) / f"{args.preset}.onnx", preset=args.preset, seed=args.seed).path
        rng = np.random.default_rng(args.seed)
        clip = rng.standard_normal((1, 3, 16, args.height, args.width), dtype=np.float32)
        size = np.array([[args.height, args.width]], np.int64)
        report: dict[str, Any] = {
            "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
            "cpu_features": cpu_features(), "versions": package_versions(),
            "model": {"preset": args.preset, "height": args.height, "width": args.width,
                      "source": f"random weights, seed {args.seed} (calmed)"},
            "openvino": [], "torch": None,
        }
        for precision in args.precisions.split(","):
            r = profile_openvino(onnx, precision, clip, size, args.runs)
            report["openvino"].append(r)
            print(f"OpenVINO {precision}: {r['wall_s_per_clip']:.2f} s/clip, layers "
                  f"{r['layers_ms_per_clip']:.0f} ms, MatMul/FullyConnected "
                  f"{r['matmul_fc_share']:.0%}; by part: " + ", ".join(
                      f"{x['name']} {x['share']:.0%}" for x in r["by_model_part"]))
            print("  top non-matmul: " + ", ".join(
                f"{x['name']} {x['ms']:.0f} ms" for x in r["top_non_matmul"]))
        if not args.no_torch:
            r = profile_torch(args.preset, args.seed, clip, size, "bf16")
            report["torch"] = r
            print(f"torch bf16: {r['wall_s_profiled']:.2f} s profiled, matrix products "
                  f"{r['matmul_share']:.0%}; top non-matmul: " + ", ".join(
                      f"{x['name']} {x['ms']:.0f} ms" for x in r["top_non_matmul"]))
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
