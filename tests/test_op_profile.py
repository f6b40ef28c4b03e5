"""benchmarks/op_profile.py's grouping of OpenVINO layers into the model's parts, on layer names
and types OpenVINO 2026.4 reported for vit_b_ktp's INT8 export (2026-12-07)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("op_profile", ROOT / "benchmarks" / "op_profile.py")
assert _spec is not None and _spec.loader is not None
op_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(op_profile)


def test_layers_fall_in_their_parts() -> None:
    part = op_profile.part_of
    linear = op_profile.LINEAR_PART
    # an int8 product OpenVINO named after the Multiply it fused (dequantization or a
    # SmoothQuant scale) is a linear layer, not "other"
    assert part("Multiply_80970", "FullyConnectedQuantizedLegacy") == linear
    assert part("node_MatMul_244/DequantizationMultiply",
                "FullyConnectedQuantizedLegacy") == linear
    assert part("node_MatMul_323", "FullyConnected") == linear
    # named parts win over the layer type
    assert part("_patch5_product", "FullyConnected").startswith("patch embedding")
    assert part("_clippool2182_xbins", "MatMul") == "RoIAlign3D"
    assert part("node_MultiHeadAttention_283/MatMul_9", "Subgraph").startswith("attention")
    assert part("Reorder_1234", "Reorder") == "reorders / converts"
    assert part("node_permute_5", "Transpose") == "other"
    assert part("ReduceMax_69666", "ReduceMax") == "other"
