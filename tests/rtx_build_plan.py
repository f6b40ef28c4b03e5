"""Run ``evad.engines.builder.build_plan`` with TensorRT-RTX (parser and builder on the CPU) on
one ONNX file at one precision, and print the plan's summary as one JSON line.

A script, run in a subprocess by tests/test_engines_rtx.py: TensorRT-RTX ends the process
(``std::terminate``) on errors it cannot report, so the test process must not host it.
Usage: python tests/rtx_build_plan.py MODEL.onnx PRECISION WORKDIR
"""

from __future__ import annotations

import json
import sys
import time

import onnx
import tensorrt_rtx_bindings as trt

from evad.engines.builder import build_plan, parser_graph, strongly_typed
from evad.metadata import read_metadata


def main() -> None:
    path, precision, workdir = sys.argv[1:4]
    meta = read_metadata(path)
    model = onnx.load(path)
    logs: list[str] = []
    graph = parser_graph(model, precision, strongly_typed(trt), tuple(meta["input_size"]),
                         log=lambda m: None)
    t0 = time.perf_counter()
    plan = build_plan(trt, model, meta, precision, (1, 1, 2), workdir=workdir,
                      log=logs.append)
    print(json.dumps({
        "seconds": round(time.perf_counter() - t0, 1),
        "plan_bytes": len(plan.serialized),
        "layers": plan.layers,
        "modes": plan.modes,
        "graph_nodes": len(graph.graph.node),
        "graph_casts": sum(n.op_type == "Cast" for n in graph.graph.node),
        "strongly_typed": strongly_typed(trt),
        "logs": logs,
    }))


if __name__ == "__main__":
    main()
