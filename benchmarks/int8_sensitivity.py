"""Which of the INT8 export's roundings move the pruning decisions: the calibrated Q/DQ file run
in ONNX Runtime with chosen products taken back to float, judged as ``evad-parity`` judges it.

    python benchmarks/int8_sensitivity.py --int8-onnx vitb/vit_b_ktp_random0.int8.onnx \\
        --json benchmarks/results/int8_sensitivity_vit_b_ktp_288x512.json

A variant names what goes back to float, by regular expressions over keys (full match):

- ``ACT``: the activation ``QuantizeLinear`` / ``DequantizeLinear`` pairs whose tensor a node
  with that key produced are removed (the tensor reaches its consumers unrounded);
- ``|W``: the quantized products with that key get their fp32 weights back (from the fp32
  export, ``--fp32-onnx``, beside the INT8 file by default).

A node's key is ``block<i>.<part>`` inside the backbone's block ``i``, where part is what the
tensor is: ``norm1`` (the qkv product's input), ``qkv_out``, ``attn_in`` (the output
projection's input), ``proj_out``, ``norm2`` (fc1's input), ``fc1_out``, ``gelu`` (fc2's
input), ``fc2_out``; elsewhere ``other.<module scope>``. Keys come from the module scopes torch's
exporter writes into each node (``evad.export.int8.name_scopes``).

Taking a tensor's Q/DQ out is what ``quantize(exclude=...)`` would write for it, without
calibrating again: each activation's range is calibrated on the fp32 graph, so the others do
not change. Every run judges the file with ``evad.export.parity.compare`` on
``evad-parity``'s seeded clips (without the float64 oracle: the kept-token Jaccard and the
action probability error against the fp32 reference forced to the backend's decisions). The
first row is the file as it is; a control row takes every backbone product back to float and
must reproduce the fp32 decisions (Jaccard 1 in every block) or the surgery is wrong.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from evad import models
from evad.atomic import write_json_atomic
from evad.export import metadata as export_metadata
from evad.export import parity
from evad.export.int8 import INT8_SUFFIX, name_scopes
from evad.hashing import file_sha256
from evad.metadata import read_metadata
from evad.runtime.backends import open_runner
from evad.runtime.benchmark import cpu_features, cpu_name, package_versions

#: what a backbone block's quantized tensor is, by the module scope (relative to the block)
#: and the node name of its producer
PARTS = (("norm1", "norm1", ""), ("qkv_out", "attn", "linear"), ("attn_in", "attn", "view"),
         ("proj_out", "attn.proj", ""), ("norm2", "norm2", ""), ("fc1_out", "mlp.fc1", ""),
         ("gelu", "mlp.act", ""), ("fc2_out", "mlp.fc2", ""))
#: the study's variants (name, ACT[|W]): each backbone block, then each part across blocks 0-8
#: (those before the last pruning block, whose decisions the rows judge), then both kinds of
#: rounding apart
STUDY = (
    *((f"block {i}, activations", rf"block{i}\..*") for i in range(9)),
    *((f"{p} of blocks 0-8", rf"block[0-8]\.{p}") for p, _, _ in PARTS),
    ("activations of blocks 0-8", r"block[0-8]\..*"),
    ("weights of blocks 0-8", r"|block[0-8]\..*"),
    ("blocks 6-8, activations and weights", r"block[6-8]\..*|block[6-8]\..*"),
    ("blocks 0-2, activations and weights", r"block[0-2]\..*|block[0-2]\..*"),
)
CONTROL = ("control: blocks 0-8 float (must give Jaccard 1)", r"block[0-8]\..*|block[0-8]\..*")


def key_of(node: onnx.NodeProto) -> str:
    """The node's key (module docstring): ``block<i>.<part>``, ``other.<scope>`` or ``none``."""
    scopes = name_scopes(node)
    if not scopes:
        return "none"
    block = next((s for s in scopes if re.fullmatch(r"model\.blocks\.\d+", s)), None)
    module = scopes[-2] if len(scopes) > 1 else ""
    if block is None:
        return f"other.{module}"
    inner, leaf = module[len(block) + 1:], scopes[-1]
    for part, scope, leaf_prefix in PARTS:
        if inner == scope and leaf.startswith(leaf_prefix):
            return f"block{block.rsplit('.', 1)[1]}.{part}"
    return f"block{block.rsplit('.', 1)[1]}.{inner}:{leaf}"


def with_float(model: onnx.ModelProto, fp32: dict[str, onnx.TensorProto], activations: str,
               weights: str) -> tuple[onnx.ModelProto, int, int]:
    """A copy of the Q/DQ ``model`` with the activation Q/DQ pairs whose tensor's producer
    matches ``activations`` removed and the products matching ``weights`` given their fp32
    weights (``fp32``: the fp32 export's initializers by name). Returns (model, pairs removed,
    weights restored)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    initializers = {i.name for i in m.graph.initializer}
    dropped = {n.output[0]: n.input[0] for n in m.graph.node
               if n.op_type == "QuantizeLinear" and activations and n.input[0] in producer
               and re.fullmatch(activations, key_of(producer[n.input[0]]))}
    dequantized = {n.output[0]: dropped[n.input[0]] for n in m.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in dropped}
    kept = [n for n in m.graph.node
            if n.output[0] not in dropped and n.output[0] not in dequantized]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = dequantized.get(name, name)
    restored = 0
    weight_dq = {n.output[0]: n for n in kept
                 if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
    for n in kept:
        if weights and n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 \
                and n.input[1] in weight_dq and re.fullmatch(weights, key_of(n)):
            # the quantizer names a weight's DequantizeLinear output after the weight
            name = n.input[1].removesuffix("_DequantizeLinear_Output")
            if name not in fp32:
                raise SystemExit(f"int8_sensitivity: {n.name}'s weight {name} is not in the "
                                 "fp32 export: pass the export the INT8 file was made from")
            if name not in initializers:
                m.graph.initializer.append(fp32[name])
                initializers.add(name)
            n.input[1] = name
            restored += 1
    del m.graph.node[:]
    m.graph.node.extend(kept)
    return m, len(dropped), restored


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8-onnx", type=Path, required=True, help="the calibrated Q/DQ export")
    ap.add_argument("--fp32-onnx", type=Path, default=None,
                    help="the fp32 export it was made from (default: beside it, without "
                         f"{INT8_SUFFIX!r})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 3],
                    help="evad-parity's clip seeds (default 0 3)")
    ap.add_argument("--clips", type=int, default=2, help="clips per seed (default 2)")
    ap.add_argument("--variant", action="append", default=None, metavar="NAME=ACT[|W]",
                    help="a variant (module docstring); repeat it; default: the study's")
    ap.add_argument("--seed", type=int, default=None,
                    help="the random weights' seed (default: the export's metadata)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    fp32_path = args.fp32_onnx or args.int8_onnx.with_name(
        args.int8_onnx.name.removesuffix(INT8_SUFFIX) + ".onnx")
    variants = [("as calibrated", "")] + (
        [tuple(v.split("=", 1)) for v in args.variant] if args.variant else list(STUDY)) + \
        [CONTROL]
    meta = read_metadata(args.int8_onnx)
    preset = export_metadata.preset_of(meta)
    seed = meta.get("random_seed") if args.seed is None else args.seed
    if seed is None:
        raise SystemExit("int8_sensitivity: the export records no random seed (a checkpoint's "
                         "weights?): this benchmark rebuilds the reference from random weights; "
                         "pass --seed if they were drawn")
    reference, _ = models.load_or_build(preset=preset, seed=seed)
    h, w = meta["input_size"]
    inputs = {s: parity.seeded_inputs(args.clips, 1, preset.num_frames, h, w, s)
              for s in args.seeds}
    thresholds = parity.thresholds_for("int8")
    model = onnx.load(str(args.int8_onnx))
    fp32 = {i.name: i for i in onnx.load(str(fp32_path)).graph.initializer}
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "benchmarks/int8_sensitivity.py",
                               *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(), "versions": package_versions(),
        "int8_onnx": args.int8_onnx.name, "int8_onnx_sha256": file_sha256(args.int8_onnx),
        "calibration": {k: meta.get("quantization", {}).get(k)
                        for k in ("method", "calibration_clips", "calibration_sha256")},
        "backend": "onnxruntime (CPU), the float rest at fp32",
        "judge": "evad.export.parity.compare without the oracle; bar: Jaccard >= "
                 f"{thresholds.min_jaccard} per block", "seeds": args.seeds,
        "clips_per_seed": args.clips, "rows": rows}
    with tempfile.TemporaryDirectory(prefix="int8_sensitivity_") as tmp:
        for name, spec in variants:
            activations, _, weights = spec.partition("|")
            variant, pairs, restored = with_float(model, fp32, activations, weights)
            path = Path(tmp) / "variant.onnx"
            onnx.save(variant, str(path))
            t0 = time.perf_counter()
            row: dict[str, Any] = {"variant": name, "activations_float": activations,
                                   "weights_float": weights, "qdq_pairs_removed": pairs,
                                   "weights_restored": restored, "seeds": {}}
            runner, _ = open_runner("ort", onnx=path, precision="int8")
            with runner:
                for seed, (clips, sizes) in inputs.items():
                    report = parity.compare(reference, runner, clips, sizes, thresholds,
                                            oracle_clips=0, twins=0)
                    row["seeds"][str(seed)] = {
                        "min_jaccard": {str(b): round(j, 4)
                                        for b, j in report.min_jaccard().items()},
                        "action_prob_max_abs": round(report.prob_max_abs, 4)}
            row["s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            shown = "; ".join(f"seed {s}: " + " / ".join(f"{j:.4f}" for j in
                                                          r["min_jaccard"].values())
                              for s, r in row["seeds"].items())
            print(f"{name}: {pairs} Q/DQ pairs out, {restored} weights fp32; Jaccard min "
                  f"blocks 3 / 6 / 9, {shown}", flush=True)
            if args.json:
                write_json_atomic(args.json, out)
    control = rows[-1]["seeds"]
    if any(j != 1.0 for r in control.values() for j in r["min_jaccard"].values()):
        raise SystemExit("int8_sensitivity: the control (every backbone product float) did not "
                         "reproduce the fp32 decisions: the graph surgery is wrong")


if __name__ == "__main__":
    main()
