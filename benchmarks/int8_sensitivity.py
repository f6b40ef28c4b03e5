"""Which of the INT8 export's roundings move the pruning decisions: the calibrated Q/DQ file run
in ONNX Runtime with chosen products taken back to float, judged as ``evad-parity`` judges it.

    python benchmarks/int8_sensitivity.py --int8-onnx vitb/vit_b_ktp_random0.int8.onnx \\
        --json benchmarks/results/int8_sensitivity_vit_b_ktp_288x512.json

A variant (``--variant NAME ACT W``) names what goes back to float, by two regular
expressions over keys (full match; ``-``: nothing):

- ``ACT``: the activation ``QuantizeLinear`` / ``DequantizeLinear`` pairs whose tensor a node
  with that key produced are removed (the tensor reaches its consumers unrounded);
- ``W``: the quantized products with that key get their fp32 weights back (from the fp32
  export, ``--fp32-onnx``, beside the INT8 file by default).

A pattern that matches nothing stops the run: a key scheme that does not fit the graph would
otherwise measure the file as it is, row after row.

A node's key is ``block<i>.<part>`` inside the backbone's block ``i``, where part is what the
tensor is: ``norm1`` (the qkv product's input), ``qkv_out``, ``attn_in`` (the output
projection's input), ``proj_out``, ``norm2`` (fc1's input), ``fc1_out``, ``gelu`` (fc2's
input), ``fc2_out``; elsewhere ``other.<module scope>``. Keys come from the module scopes torch's
exporter writes into each node (``evad.export.int8.name_scopes``).

No calibration runs again: each activation's range was calibrated on the fp32 graph, so the
tensors left quantized keep the ranges they have. Every run judges the file with
``evad.export.parity.compare`` on ``evad-parity``'s seeded clips (without the float64 oracle:
the kept-token Jaccard and the action probability error against the fp32 reference forced to
the backend's decisions). A control runs first: every product of blocks 0-8 back to float must
reproduce the fp32 decisions (Jaccard 1 in every block) or the surgery is wrong and the run
stops; then the file as it is, then the variants.
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

import numpy as np
import onnx
from onnx import numpy_helper

from evad import models
from evad.atomic import write_json_atomic
from evad.export import metadata as export_metadata
from evad.export import parity
from evad.export.int8 import INT8_SUFFIX, name_scopes
from evad.hashing import file_sha256
from evad.metadata import read_metadata
from evad.runtime.backends import open_runner
from evad.runtime.benchmark import cpu_features, cpu_name, package_versions

#: what a backbone block's quantized tensor is: (key part, its producer's module scope relative
#: to the block, the prefix of the producer's node name). In the ``attn`` scope the exporter
#: names the qkv product ``linear`` and the reshape in front of the output projection ``view_*``,
#: the only view there whose output is quantized
PARTS = (("norm1", "norm1", ""), ("qkv_out", "attn", "linear"), ("attn_in", "attn", "view"),
         ("proj_out", "attn.proj", ""), ("norm2", "norm2", ""), ("fc1_out", "mlp.fc1", ""),
         ("gelu", "mlp.act", ""), ("fc2_out", "mlp.fc2", ""))
#: the study's variants (name, ACT, W): each backbone block, then each part across blocks 0-8
#: (those before the last pruning block, whose decisions the rows judge), then both kinds of
#: rounding apart
STUDY: tuple[tuple[str, str, str], ...] = (
    *((f"block {i}, activations", rf"block{i}\..*", "") for i in range(9)),
    *((f"{p} of blocks 0-8", rf"block[0-8]\.{p}", "") for p, _, _ in PARTS),
    ("activations of blocks 0-8", r"block[0-8]\..*", ""),
    ("weights of blocks 0-8", "", r"block[0-8]\..*"),
    ("blocks 6-8, activations and weights", r"block[6-8]\..*", r"block[6-8]\..*"),
    ("blocks 0-2, activations and weights", r"block[0-2]\..*", r"block[0-2]\..*"),
)
CONTROL = ("control: blocks 0-8 float (must give Jaccard 1)", r"block[0-8]\..*",
           r"block[0-8]\..*")
AS_CALIBRATED = ("as calibrated", "", "")


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
    weights (``fp32``: the fp32 export's initializers by name; "" matches nothing). A pair is
    left in place where its QuantizeLinear feeds anything but DequantizeLinear nodes or a
    DequantizeLinear output is a graph output. Returns (model, pairs removed, weights
    restored).

    Raises:
        SystemExit: a weight to restore is missing from ``fp32`` or has another shape there.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in m.graph.output}
    initializers = {i.name: i for i in m.graph.initializer}

    def removable(q: onnx.NodeProto) -> bool:
        dqs = consumers.get(q.output[0], [])
        return q.output[0] not in graph_outputs and bool(dqs) and all(
            d.op_type == "DequantizeLinear" and d.output[0] not in graph_outputs for d in dqs)

    dropped = {n.output[0]: n.input[0] for n in nodes
               if n.op_type == "QuantizeLinear" and activations and n.input[0] in producer
               and re.fullmatch(activations, key_of(producer[n.input[0]])) and removable(n)}
    dequantized = {d.output[0]: x for q, x in dropped.items() for d in consumers[q]}
    kept = [n for n in nodes if n.output[0] not in dropped and n.output[0] not in dequantized]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = dequantized.get(name, name)
    restored = 0
    weight_dq = {n.output[0]: n for n in kept
                 if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
    for n in kept:
        if weights and n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 \
                and n.input[1] in weight_dq and re.fullmatch(weights, key_of(n)):
            # ONNX Runtime's quantizer names a weight's DequantizeLinear output after the weight
            name = n.input[1].removesuffix("_DequantizeLinear_Output")
            quantized = initializers[weight_dq[n.input[1]].input[0]]
            if name not in fp32 or list(fp32[name].dims) != list(quantized.dims):
                raise SystemExit(f"int8_sensitivity: {n.name}'s weight {name} is not in the "
                                 f"fp32 export with the shape {list(quantized.dims)}: pass "
                                 "the export the INT8 file was made from (--fp32-onnx)")
            if name not in initializers:
                m.graph.initializer.append(fp32[name])
                initializers[name] = fp32[name]
            n.input[1] = name
            restored += 1
    # a product left with a float input and its int8 weight's DequantizeLinear is what ONNX
    # Runtime's extended optimizations fuse into MatMulNBits, whose kernel does not compute
    # the graph's arithmetic (1 % off on a 4 x 3 product): its weight goes in as the float
    # values the DequantizeLinear gives
    for n in kept:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and \
                n.input[1] in weight_dq and (producer.get(n.input[0]) is None
                 or producer[n.input[0]].op_type != "DequantizeLinear"):
            name = f"{n.input[1]}_float"
            if name not in initializers:
                initializers[name] = _dequantized(weight_dq[n.input[1]], initializers, name)
                m.graph.initializer.append(initializers[name])
            n.input[1] = name
    del m.graph.node[:]
    m.graph.node.extend(kept)
    return m, len(dropped), restored


def _dequantized(dq: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                 name: str) -> onnx.TensorProto:
    """The float tensor ``name`` that ``dq`` (a DequantizeLinear of initializers, per tensor
    or per axis) computes."""
    q, scale = (numpy_helper.to_array(initializers[i]) for i in dq.input[:2])
    zero = numpy_helper.to_array(initializers[dq.input[2]]) if len(dq.input) > 2 and \
        dq.input[2] else np.zeros_like(scale)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.ndim:
        shape[axis] = -1
    value = (q.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * \
        scale.astype(np.float32).reshape(shape)
    return numpy_helper.from_array(value.astype(np.float32), name)


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
    ap.add_argument("--variant", nargs=3, action="append", default=None,
                    metavar=("NAME", "ACT", "W"),
                    help="a variant (module docstring; '-' for no pattern); repeat it; "
                         "default: the study's")
    ap.add_argument("--weights-seed", type=int, default=None,
                    help="the seed the random weights were drawn with (default: the export's "
                         "metadata)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    fp32_path = args.fp32_onnx or args.int8_onnx.with_name(
        args.int8_onnx.name.removesuffix(INT8_SUFFIX) + ".onnx")
    chosen = [(n, "" if a == "-" else a, "" if w == "-" else w) for n, a, w in args.variant] \
        if args.variant else list(STUDY)
    variants = [CONTROL, AS_CALIBRATED, *chosen]
    meta = read_metadata(args.int8_onnx)
    preset = export_metadata.preset_of(meta)
    weights_seed = meta.get("random_seed") if args.weights_seed is None else args.weights_seed
    if weights_seed is None:
        raise SystemExit("int8_sensitivity: the export records no random seed (a checkpoint's "
                         "weights?): this benchmark rebuilds the reference from random weights; "
                         "pass --weights-seed if they were drawn")
    reference, _ = models.load_or_build(preset=preset, seed=weights_seed)
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
        for name, activations, weights in variants:
            variant, pairs, restored = with_float(model, fp32, activations, weights)
            if (activations and not pairs) or (weights and not restored):
                raise SystemExit(f"int8_sensitivity: variant {name!r} takes nothing back to "
                                 "float: its patterns match no key of this graph (module "
                                 "docstring)")
            path = Path(tmp) / "variant.onnx"
            onnx.save(variant, str(path))
            t0 = time.perf_counter()
            row: dict[str, Any] = {"variant": name, "activations_float": activations,
                                   "weights_float": weights, "qdq_pairs_removed": pairs,
                                   "weights_restored": restored, "seeds": {}}
            runner, _ = open_runner("ort", onnx=path, precision="int8")
            with runner:
                for clip_seed, (clips, sizes) in inputs.items():
                    report = parity.compare(reference, runner, clips, sizes, thresholds,
                                            oracle_clips=0, twins=0)
                    row["seeds"][str(clip_seed)] = {
                        "min_jaccard": {str(b): round(j, 4)
                                        for b, j in report.min_jaccard().items()},
                        "action_prob_max_abs": round(report.prob_max_abs, 4)}
            row["s"] = round(time.perf_counter() - t0, 1)
            if (name, activations, weights) == CONTROL and any(
                    j != 1.0 for r in row["seeds"].values() for j in r["min_jaccard"].values()):
                raise SystemExit("int8_sensitivity: the control (every product of blocks 0-8 "
                                 "float) did not reproduce the fp32 decisions: the graph "
                                 f"surgery is wrong ({row['seeds']})")
            rows.append(row)
            blocks = " / ".join(next(iter(row["seeds"].values()))["min_jaccard"])
            shown = "; ".join(f"seed {s}: " + " / ".join(f"{j:.4f}" for j in
                                                          r["min_jaccard"].values())
                              for s, r in row["seeds"].items())
            print(f"{name}: {pairs} Q/DQ pairs out, {restored} weights fp32; Jaccard min "
                  f"blocks {blocks}, {shown}", flush=True)
            if args.json:
                write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()
