"""Every measured figure in README.md equals its JSON under ``benchmarks/results/``.

``FIGURES`` pairs each figure (a regex whose one group is the number as the README prints it)
with the JSON that measured it and the key (or the derivation: ratios, sums, differences) that
gives it; the JSON value is rounded half-up to the figure's printed precision and the two texts
must be equal, so a change on either side fails. The figure tables (the bench table, the
Benchmarks table, the FLOPs table) are checked cell by cell and a number in them without an
entry fails; in a paragraph that names a JSON, every number is a checked figure or listed in
``NOT_FIGURES`` with the reason it is none. Each figure's paragraph (or table caption / row)
must name its JSON. The test-suite figures are the suite as ``test_suite_cost.json`` measured
it on its date, not the live suite.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

N = r"([\d.]+)"  # a figure as printed


def _sensitivity_range(d: Any) -> tuple[float, float]:
    """Block 9's lowest and highest Jaccard min over the one-group rows of
    ``benchmarks/int8_sensitivity.py`` (commit c09a575: one block's, or one kind's, activations
    in float)."""
    one_block, one_kind = r"block\d\\\.\.\*", r"block\[0-8\]\\\.[a-z0-9_]+"
    rows = [r for r in d["rows"] if not r["weights_float"]
            and re.fullmatch(f"{one_block}|{one_kind}", r["activations_float"])]
    assert len(rows) == 17
    values = [s["min_jaccard"]["9"] for r in rows for s in r["seeds"].values()]
    return min(values), max(values)


@dataclass(frozen=True)
class Fig:
    """One README figure and where it comes from.

    pattern: regex matching exactly once in README.md; its one group is the figure.
    json: the file under benchmarks/results/ that measured it.
    key: "a/b/0/k=v/c" into that JSON (``k=v``: the list item whose k is v), or a function
        of the JSON for a derived figure.
    fmt: decimals (rounded half-up), "e1" / "e2" (significant digits, written 1.6e-3), or
        None (the value's own text: counts, dates, names).
    """

    pattern: str
    json: str
    key: str | Callable[[Any], Any]
    fmt: int | str | None = None


def get(obj: Any, path: str) -> Any:
    """``path`` ("a/b/0/k=v/c") into a loaded JSON."""
    for part in path.split("/"):
        if isinstance(obj, list):
            if "=" in part:
                k, v = part.split("=", 1)
                hits = [x for x in obj if str(x.get(k)) == v]
                assert len(hits) == 1, f"{path}: {len(hits)} items with {part}"
                obj = hits[0]
            else:
                obj = obj[int(part)]
        else:
            obj = obj[part]
    return obj


def render(value: Any, fmt: int | str | None) -> str:
    """``value`` as the README prints it at ``fmt`` (see :class:`Fig`)."""
    if fmt is None:
        return str(value)
    d = Decimal(str(value))
    if isinstance(fmt, int):
        return f"{d.quantize(Decimal(1).scaleb(-fmt), rounding=ROUND_HALF_UP):f}"
    sig = int(fmt[1:])
    step = Decimal(1).scaleb(-(sig - 1))
    exp = d.adjusted()
    mant = d.scaleb(-exp).quantize(step, rounding=ROUND_HALF_UP)
    if abs(mant) >= 10:  # 9.96 -> 10.0: one more power of ten
        mant, exp = (mant / 10).quantize(step, rounding=ROUND_HALF_UP), exp + 1
    return f"{mant:f}e{exp}"


def ratio(a: str, b: str) -> Callable[[Any], float]:
    """The figure a / b, from the unrounded values at two key paths."""
    return lambda d: get(d, a) / get(d, b)


def major_minor(path: str) -> Callable[[Any], str]:
    """"2.13.0+cpu" at ``path`` -> "2.13"."""
    return lambda d: ".".join(get(d, path).split("+")[0].split(".")[:2])


def cpu_family(path: str) -> Callable[[Any], str]:
    """The CPU a JSON names, as the README's device columns say it."""
    def family(d: Any) -> str:
        text = get(d, path)
        for name in ("AMD EPYC", "Xeon"):
            if name in text:
                return name
        raise AssertionError(f"{path}: no known CPU family in {text!r}")
    return family


def stage_at(d: Any, start: str) -> float:
    """Elapsed seconds of the export's first stage line starting with ``start``."""
    return next(s["at_s"] for s in d["stages"] if s["line"].startswith(start))


def stage(a: str, b: str) -> Callable[[Any], float]:
    """Seconds between two export stage lines."""
    return lambda d: stage_at(d, b) - stage_at(d, a)


def blocks(d: Any, name: str, block: int) -> list[dict]:
    """A parity report's entries for one pruning block (one per clip)."""
    return [b for b in d["vit_b_ktp_parity"][name]["report"]["blocks"] if b["block"] == block]


def videos(command: str) -> int:
    """The ``--videos N`` of a recorded command."""
    return int(re.search(r"--videos (\d+)", command)[1])


def bench(path: str, keep: float, key: str) -> Callable[[Any], Any]:
    """A keep-rate sweep's value for one path at one keep rate."""
    return lambda d: next(r[key] for r in d["results"]
                          if r["path"] == path and r["keep_rate"] == keep)


def kr_ratio(path: str) -> Callable[[Any], float]:
    """Throughput at keep rate 0.7 over 1.0, from the medians (not the JSON's rounded ratio)."""
    return lambda d: bench(path, 1.0, "median_s")(d) / bench(path, 0.7, "median_s")(d)


SUITE, EXPORT, VENV = "test_suite_cost.json", "export_vit_b_ktp_288x512.json", "dev_venv_size.json"
TOKENS, SCALE, DEMO = "tokens_demo.json", "scale_out_demo.json", "demo_model_heldout.json"
FWD, ORT = "cpu_forward_vit_b_ktp_288x512.json", "cpu_ort_vs_torch_vit_b_ktp_288x512.json"
BENCH, KEEP = "bench_vit_b_ktp_288x512.json", "bench_keep_rate_vit_b_ktp_288x512.json"
OFFICIAL, ACC = "official_vs_fast_vit_b_ktp_288x512.json", "cpu_precision_accuracy.json"
FLOPS, INT8 = "flops_paper.json", "int8_accuracy.json"
STATIC = "bench_static_int8_vit_b_ktp_288x512.json"
OFFICIAL_XEON = "official_vs_fast_xeon_vit_b_ktp_288x512.json"
EPYC = "bench_epyc_vit_b_ktp_288x512.json"
PARITY8 = "parity_int8_vit_b_ktp_288x512.json"
CALIB_MEM = "int8_calibration_memory.json"
SENS = "int8_sensitivity_vit_b_ktp_288x512.json"
OV, INT8W = "openvino_bf16", "openvino_bf16-int8w"
ACC_REPORT = f"vit_b_ktp_parity/{OV}/report"

FIGURES: list[Fig] = [
    # Install and test: the suite as measured on the JSON's date
    Fig(r"pytest took about\s+(\d+) minutes when measured", SUITE,
        lambda d: d["pytest_s"] / 60, 0),
    Fig(r"minutes when measured on ([\d-]+) \(", SUITE, "date"),
    Fig(r"\((\d+) s; \d+ passed, \d+ skipped: the suite", SUITE, "pytest_s", 0),
    Fig(r"s; (\d+) passed, \d+ skipped: the suite", SUITE, "passed"),
    Fig(r"passed, (\d+) skipped: the suite", SUITE, "skipped"),
    Fig(r"grown since\) at " + N + r" GB peak memory", SUITE, "peak_rss_gb", 1),
    Fig(r"takes (\d+) s at [\d.]+ GB \(`benchmarks/results/test_suite_cost", SUITE,
        "subset/wall_s", 0),
    Fig(r"takes \d+ s at " + N + r" GB \(`benchmarks/results/test_suite_cost", SUITE,
        "subset/peak_rss_gb", 1),
    Fig(r"which alone is the " + N + " GB peak", EXPORT, "peak_rss_gb", 1),
    Fig(r"command's venv is " + N + " GB", VENV, "total_gb", 2),
    Fig(r"plugins' kernels\) " + N + " GB", VENV, "largest_gb/triton", 2),
    Fig(r"GB, torch " + N + " GB, Ray", VENV, "largest_gb/torch", 2),
    Fig(r"GB, Ray " + N + " GB and", VENV, "largest_gb/ray", 2),
    Fig(r"and TensorRT-RTX " + N + r" GB\s+\(`benchmarks/results/dev_venv", VENV,
        "largest_gb/tensorrt_rtx_libs", 2),
    # What token dropout keeps
    Fig(r"Over the demo\s+video's (\d+) keyframes", TOKENS, lambda d: len(d["keyframes"])),
    Fig(r"median motion ratio is " + N + " at block 2", TOKENS, "median_motion_ratio/2", 2),
    Fig(r"at block 2, " + N + " at block 4", TOKENS, "median_motion_ratio/4", 2),
    Fig(r"at block 4 and " + N + r" at\s+block 6", TOKENS, "median_motion_ratio/6", 2),
    # Serving: benchmarks/scale_out.py
    Fig(r"\(demo model, (\d+x\d+) clips, this", SCALE,
        lambda d: "{2}x{1}".format(*d["triton"]["clip_size"])),
    Fig(r"server ready in " + N + " s", SCALE, "triton/ready_s", 1),
    Fig(r"s; (\d+) / \d+ / \d+ clients", SCALE, "triton/load/0/clients"),
    Fig(r"s; \d+ / (\d+) / \d+ clients", SCALE, "triton/load/1/clients"),
    Fig(r"s; \d+ / \d+ / (\d+) clients", SCALE, "triton/load/2/clients"),
    Fig(r"clients \(gRPC\): " + N + r" / [\d.]+ / [\d.]+ requests/s", SCALE,
        "triton/load/0/requests_per_s", 1),
    Fig(r"clients \(gRPC\): [\d.]+ / " + N + r" / [\d.]+ requests/s", SCALE,
        "triton/load/1/requests_per_s", 1),
    Fig(r"clients \(gRPC\): [\d.]+ / [\d.]+ / " + N + " requests/s", SCALE,
        "triton/load/2/requests_per_s", 1),
    Fig(r"p50 (\d+) / \d+ / \d+ ms", SCALE, "triton/load/0/latency_ms_p50", 0),
    Fig(r"p50 \d+ / (\d+) / \d+ ms", SCALE, "triton/load/1/latency_ms_p50", 0),
    Fig(r"p50 \d+ / \d+ / (\d+) ms", SCALE, "triton/load/2/latency_ms_p50", 0),
    Fig(r"a video request \((\d+) keyframes\)", SCALE, "triton/video_request/keyframes"),
    Fig(r"video request \(\d+ keyframes\) " + N + " s", SCALE, "triton/video_request/seconds", 2),
    Fig(r"a (\d+)-video job", SCALE, "jobs/videos"),
    Fig(r"-video job " + N + " s locally", SCALE, "jobs/local_s", 1),
    Fig(r"s locally and " + N + " s on a fresh local Ray", SCALE, "jobs/ray_s", 1),
    # Demo model
    Fig(r"\(training: (\d+) min and", DEMO, lambda d: d["train_wall_s"] / 60, 0),
    Fig(r"min and " + N + r" GB peak memory\s+on the 2-core CPU", DEMO, "train_peak_rss_gb", 1),
    Fig(r"Frame mAP@0.5 on the (\d+) held-out videos", DEMO, "heldout/videos"),
    Fig(r"held-out videos \((\d+) keyframes\)", DEMO, "heldout/keyframes"),
    Fig(r"keyframes\):\s+" + N + " in torch", DEMO, "mAP_torch", 3),
    Fig(r"in torch and " + N + r" in ONNX Runtime \(difference", DEMO, "mAP_onnxruntime", 3),
    Fig(r"in ONNX Runtime \(difference ([\de.-]+)\)", DEMO, "abs_diff", "e1"),
    *[Fig(rf"\b{c} " + r"(\d\.\d+)[,\s(]", DEMO, f"per_class_torch/{c}", 3)
      for c in ("walk", "run", "jump", "wave", "sit", "crouch", "spin", "carry")],
    Fig(r"On (\d+) of its\s+training videos", DEMO,
        lambda d: int(re.search(r"the first (\d+) training videos", d["train_subset"])[1])),
    Fig(r"training videos it scores " + N + ":", DEMO, "train_subset_mAP_torch", 3),
    Fig(r"recipe on (\d+) training videos", DEMO, "previous_model/train_videos"),
    Fig(r"training videos scored " + N + " there", DEMO, "previous_model/train_subset_mAP_torch",
        3),
    Fig(r"there\s+and " + N + " held out", DEMO, "previous_model/mAP_torch", 3),
    Fig(r"so the (\d+) videos are what closed", DEMO, lambda d: videos(d["data_commands"][0])),
    Fig(r"so the (\d+)\s+decoded videos", DEMO, lambda d: videos(d["data_commands"][0])),
    Fig(r"decoded videos fit in " + N + " GB", DEMO, "train_peak_rss_gb", 1),
    # FLOPs at the released 16:9 size
    Fig(r"16:9 video\): ([\d >-]+?)\s+tokens", FWD, lambda d: " -> ".join(map(str, d["tokens"]))),
    Fig(r"tokens, " + N + r" GFLOPs \(`evad-flops`", FWD, "gflops_per_clip", 1),
    # Speed on a CPU: the bench table's caption
    Fig(r"clip, random calmed weights, (\d+)-core", BENCH, "machine/cores"),
    Fig(r"clip, random calmed weights, \d+-core ([A-Za-z ]+?) \(AVX512", BENCH,
        cpu_family("machine/cpu")),
    Fig(r"one 16 x (\d+) x \d+ clip", BENCH, "model/height"),
    Fig(r"one 16 x \d+ x (\d+) clip", BENCH, "model/width"),
    Fig(r"no AMX\), (\d+) threads, torch", BENCH, "machine/threads"),
    Fig(r"threads, torch ([\d.]+), ONNX Runtime", BENCH, major_minor("versions/torch")),
    Fig(r"torch [\d.]+, ONNX Runtime ([\d.]+), OpenVINO", BENCH,
        major_minor("versions/onnxruntime")),
    Fig(r"ONNX Runtime [\d.]+, OpenVINO ([\d.]+), ", BENCH, major_minor("versions/openvino")),
    Fig(r"OpenVINO [\d.]+, ([\d-]+)\s+\(`benchmarks/results/bench_vit", BENCH, "date"),
    Fig(r"bench_vit_b_ktp_288x512.json`, (\d+) interleaved rounds", BENCH, "settings/runs"),
    Fig(r"GEMM rate then:\s+fp32 (\d+), bf16", BENCH, "gemm_gmac_per_s/fp32", 0),
    Fig(r"fp32 \d+, bf16 (\d+) GMAC/s", BENCH, "gemm_gmac_per_s/bf16", 0),
    # ... against the official code, on the EPYC
    Fig(r"random\s+weights, torch ([\d.]+) eager fp32", OFFICIAL,
        lambda d: d["official"]["torch"].split("+")[0]),
    Fig(r"on this EPYC on ([\d-]+), with", OFFICIAL, lambda d: d["date"][:10]),
    Fig(r"as two products \(docs/design.md\), (\d+) rounds", OFFICIAL, "rounds"),
    Fig(r"official median " + N + " s", OFFICIAL, "median_s/official", 2),
    Fig(r"OpenVINO bf16 " + N + r" s \([\d.]+x\), OpenVINO running", OFFICIAL,
        "median_s/openvino-bf16", 2),
    Fig(r"OpenVINO bf16 [\d.]+ s \(" + N + r"x\), OpenVINO running", OFFICIAL,
        ratio("median_s/official", "median_s/openvino-bf16"), 2),
    Fig(r"the calibrated\s+INT8 export " + N + r" s \([\d.]+x, the", OFFICIAL,
        "median_s/openvino-int8", 2),
    Fig(r"\(" + N + r"x, the fastest", OFFICIAL,
        ratio("median_s/official", "median_s/openvino-int8"), 2),
    Fig(r"runs took " + N + r"-[\d.]+ s in the first", OFFICIAL,
        lambda d: min(d["runs_s"]["official"]), 2),
    Fig(r"runs took [\d.]+-" + N + r" s in the first", OFFICIAL,
        lambda d: max(d["runs_s"]["official"]), 2),
    Fig(r"run below: " + N + " s against", OFFICIAL, "second_run_same_hour/median_s/official", 2),
    Fig(r"run below: [\d.]+ s against " + N + " s and", OFFICIAL,
        "second_run_same_hour/median_s/openvino-bf16", 2),
    Fig(r"run below: [\d.]+ s against [\d.]+ s and " + N + r" s \(", OFFICIAL,
        "second_run_same_hour/median_s/openvino-int8", 2),
    Fig(r"and [\d.]+ s \(\*\*" + N + r"x\*\*,\s+`second_run", OFFICIAL,
        ratio("second_run_same_hour/median_s/official",
              "second_run_same_hour/median_s/openvino-int8"), 2),
    Fig(r"`ROIAlign`: " + N + " s against", OFFICIAL,
        "before_clip_pooling_products/median_s/official", 2),
    Fig(r"`ROIAlign`: [\d.]+ s against " + N + " s and", OFFICIAL,
        "before_clip_pooling_products/median_s/openvino-bf16", 2),
    Fig(r"`ROIAlign`: [\d.]+ s against [\d.]+ s and\s+" + N + r" s \(", OFFICIAL,
        "before_clip_pooling_products/median_s/openvino-int8", 2),
    Fig(r"and\s+[\d.]+ s \(" + N + r"x;\s+`before_clip", OFFICIAL,
        ratio("before_clip_pooling_products/median_s/official",
              "before_clip_pooling_products/median_s/openvino-int8"), 2),
    Fig(r"the products took (\d+) % off an int8", "openvino_clip_pooling_ab.json",
        lambda d: -100 * d["change"]["int8"], 0),
    Fig(r"int8 clip \(" + N + r" s against [\d.]+ s, in a slower", "openvino_clip_pooling_ab.json",
        "median_s/int8_new", 2),
    Fig(r"int8 clip \([\d.]+ s against " + N + r" s, in a slower", "openvino_clip_pooling_ab.json",
        "median_s/int8_old", 2),
    Fig(r"wholly at f32, " + N + " s against", OFFICIAL, "before_logits_bf16/median_s/official", 2),
    Fig(r"against OpenVINO bf16 " + N + " s and int8", OFFICIAL,
        "before_logits_bf16/median_s/openvino-bf16", 2),
    Fig(r"and int8 " + N + r" s \([\d.]+x;", OFFICIAL,
        "before_logits_bf16/median_s/openvino-int8", 2),
    Fig(r"and int8 [\d.]+ s \(" + N + "x;", OFFICIAL,
        ratio("before_logits_bf16/median_s/official", "before_logits_bf16/median_s/openvino-int8"),
        2),
    Fig(r"bf16\s+alone: " + N + " s against", OFFICIAL, "first_run_same_day/median_s/official", 2),
    Fig(r"bf16\s+alone: [\d.]+ s against " + N + " s,", OFFICIAL,
        "first_run_same_day/median_s/openvino-bf16", 2),
    Fig(r"bf16\s+alone: [\d.]+ s against [\d.]+ s, " + N + r"x\.", OFFICIAL,
        ratio("first_run_same_day/median_s/official", "first_run_same_day/median_s/openvino-bf16"),
        2),
    Fig(r"official code under torch ([\d.]+):\s", OFFICIAL,
        lambda d: d["before_openvino_rewrites"]["official"]["torch"].split("+")[0]),
    Fig(r"under torch [\d.]+:\s+" + N + " s against", OFFICIAL,
        "before_openvino_rewrites/median_s/official", 2),
    Fig(r"against\s+OpenVINO bf16 " + N + r" s \(", OFFICIAL,
        "before_openvino_rewrites/median_s/openvino-bf16", 2),
    Fig(r"against\s+OpenVINO bf16 [\d.]+ s \(" + N + r"x\)", OFFICIAL,
        ratio("before_openvino_rewrites/median_s/official",
              "before_openvino_rewrites/median_s/openvino-bf16"), 2),
    Fig(r"with int8 weights " + N + r" s \(", OFFICIAL,
        "before_openvino_rewrites/median_s/openvino-bf16-int8w", 2),
    Fig(r"int8 weights [\d.]+ s \(" + N + r"x\)", OFFICIAL,
        ratio("before_openvino_rewrites/median_s/official",
              "before_openvino_rewrites/median_s/openvino-bf16-int8w"), 2),
    # ... evad-bench on the EPYC the same hour, with the GEMM yardstick of both libraries
    Fig(r"GEMM rates then: fp32 (\d+), bf16 \d+,", EPYC, "gemm_gmac_per_s/fp32", 0),
    Fig(r"GEMM rates then: fp32 \d+, bf16 (\d+),", EPYC, "gemm_gmac_per_s/bf16", 0),
    Fig(r"bf16 \d+,\s+int8 (\d+) GMAC/s\): torch", EPYC, "gemm_gmac_per_s/int8", 0),
    Fig(r"GMAC/s\): torch fp32 " + N + r" s and", EPYC, "results/path=torch-fp32/median_s", 2),
    Fig(r"torch fp32 [\d.]+ s and " + N + r" GB at peak", EPYC,
        "results/path=torch-fp32/peak_rss_gb", 2),
    Fig(r"GB at peak, ONNX Runtime fp32 " + N + r" s, OpenVINO", EPYC,
        "results/path=ort-fp32/median_s", 2),
    Fig(r"s, OpenVINO\s+bf16 " + N + r" s and [\d.]+ GB \(", EPYC,
        "results/path=openvino-bf16/median_s", 2),
    Fig(r"s, OpenVINO\s+bf16 [\d.]+ s and " + N + r" GB \(", EPYC,
        "results/path=openvino-bf16/peak_rss_gb", 2),
    Fig(r"GB \(" + N + r"x torch fp32; \d+ % of the bf16 GEMM rate\)", EPYC,
        ratio("results/path=torch-fp32/median_s", "results/path=openvino-bf16/median_s"), 2),
    Fig(r"torch fp32; (\d+) % of the bf16 GEMM rate\)", EPYC,
        lambda d: 100 * get(d, "results/path=openvino-bf16/fraction_of_gemm_rate"), 0),
    Fig(r"INT8\s+export in OpenVINO " + N + r" s and", EPYC,
        "results/path=openvino-int8/median_s", 2),
    Fig(r"export in OpenVINO [\d.]+ s and " + N + r" GB \(", EPYC,
        "results/path=openvino-int8/peak_rss_gb", 2),
    Fig(r"GB \((\d+) % of the int8 rate;", EPYC,
        lambda d: 100 * get(d, "results/path=openvino-int8/fraction_of_gemm_rate"), 0),
    Fig(r"`ROIAlign` that morning, " + N + r" s and \d+ %", EPYC,
        "before_clip_pooling_products/results/path=openvino-int8/median_s", 2),
    Fig(r"`ROIAlign` that morning, [\d.]+ s and (\d+) %", EPYC,
        lambda d: 100 * get(d, "before_clip_pooling_products/results/path=openvino-int8/"
                               "fraction_of_gemm_rate"), 0),
    Fig(r"`before_clip_pooling_products`; " + N + r" s with its\s+pruning wholly", EPYC,
        "before_logits_bf16/results/path=openvino-int8/median_s", 2),
    Fig(r"`before_logits_bf16`; " + N + r" s with its float rest at f32", EPYC,
        "before_int8_bf16_rest/results/path=openvino-int8/median_s", 2),
    Fig(r"its\s+" + N + r"\s+GMACs take [\d.]+ s at that bf16 rate", EPYC,
        "results/path=openvino-bf16/gmac_per_clip", 1),
    Fig(r"its\s+[\d.]+\s+GMACs take " + N + r" s at that bf16 rate", EPYC,
        lambda d: get(d, "results/path=openvino-bf16/gmac_per_clip") / d["gemm_gmac_per_s"]["bf16"],
        2),
    Fig(r"while 6x the\s+official code needs " + N + r" s \(", OFFICIAL,
        lambda d: d["median_s"]["official"] / 6, 2),
    Fig(r"official code needs [\d.]+ s \(" + N + r" s in\s+the second run\)", OFFICIAL,
        lambda d: d["second_run_same_hour"]["median_s"]["official"] / 6, 2),
    # ... NNCF's INT8 file beside it
    Fig(r"rates then bf16 (\d+) and int8", EPYC, "nncf_int8/gemm_gmac_per_s/bf16", 0),
    Fig(r"then bf16 \d+ and int8 (\d+)\s+GMAC/s\) measured", EPYC,
        "nncf_int8/gemm_gmac_per_s/int8", 0),
    Fig(r"GMAC/s\) measured " + N + r" s and", EPYC,
        "nncf_int8/results/path=openvino-int8/median_s", 2),
    Fig(r"GMAC/s\) measured [\d.]+ s and " + N + r" GB a clip", EPYC,
        "nncf_int8/results/path=openvino-int8/peak_rss_gb", 2),
    Fig(r"GB a clip, (\d+) % of the int8 rate", EPYC,
        lambda d: 100 * get(d, "nncf_int8/results/path=openvino-int8/fraction_of_gemm_rate"), 0),
    Fig(r"int8 rate\s+\(torch fp32 " + N + r" s and", EPYC,
        "nncf_int8/results/path=torch-fp32/median_s", 2),
    Fig(r"int8 rate\s+\(torch fp32 [\d.]+ s and " + N + r" GB, OpenVINO", EPYC,
        "nncf_int8/results/path=torch-fp32/peak_rss_gb", 2),
    Fig(r"GB, OpenVINO bf16 " + N + r" s\); alternated", EPYC,
        "nncf_int8/results/path=openvino-bf16/median_s", 2),
    Fig(r"(\d+) rounds\): official [\d.]+ s, NNCF", OFFICIAL, "nncf_int8/rounds"),
    Fig(r"rounds\): official " + N + r" s, NNCF", OFFICIAL, "nncf_int8/median_s/official", 2),
    Fig(r"NNCF's file " + N + r" s \(", OFFICIAL, "nncf_int8/median_s/int8_nncf", 2),
    Fig(r"NNCF's file [\d.]+ s \(" + N + r"x\)", OFFICIAL,
        "nncf_int8/speedup_vs_official/int8_nncf", 2),
    Fig(r"`quantize_static`'s " + N + r" s \([\d.]+x\)\.", OFFICIAL,
        "nncf_int8/median_s/int8_quantize_static", 2),
    Fig(r"`quantize_static`'s [\d.]+ s \(" + N + r"x\)\.", OFFICIAL,
        "nncf_int8/speedup_vs_official/int8_quantize_static", 2),
    Fig(r"float products, took " + N + r" s\s+\(", OFFICIAL,
        "nncf_int8/median_s/int8_nncf_float_smoothed", 2),
    Fig(r"products, took [\d.]+ s\s+\(" + N + r"x\) in the same rounds", OFFICIAL,
        "nncf_int8/speedup_vs_official/int8_nncf_float_smoothed", 2),
    Fig(r"`nncf_int8_float_smoothed`: " + N + r" s,", OFFICIAL,
        "nncf_int8_float_smoothed/median_s/int8_nncf", 2),
    Fig(r"`nncf_int8_float_smoothed`: [\d.]+ s, " + N + r"x,", OFFICIAL,
        "nncf_int8_float_smoothed/speedup_vs_official/int8_nncf", 2),
    Fig(r"when the\s+official code took " + N + r" s\)", OFFICIAL,
        "nncf_int8_float_smoothed/median_s/official", 2),
    Fig(r"bf16 `mm` measured (\d+) GMAC/s \(", EPYC,
        "earlier_run_torch_yardstick/gemm_gmac_per_s/bf16", 0),
    Fig(r"GMAC/s \((\d+) in the run above\)", EPYC, "gemm_gmac_per_s_by_kernel/bf16/torch", 0),
    Fig(r"ran the whole model at (\d+), a", EPYC,
        "earlier_run_torch_yardstick/results/path=openvino-bf16/gmac_per_s", 0),
    Fig(r'a "fraction" of (\d+) %', EPYC,
        lambda d: 100 * get(d, "earlier_run_torch_yardstick/results/path=openvino-bf16/"
                               "fraction_of_gemm_rate"), 0),
    # ... the one-clip OpenVINO runner and the INT8 export on an AMX Xeon
    Fig(r"On a (\d+)-core Intel Xeon with AMX", STATIC, "machine/cores"),
    Fig(r"Intel Xeon with AMX \(([\d-]+);", STATIC, "date"),
    Fig(r"GEMM rates in that run, from\s+torch's kernels alone: fp32\s+(\d+), bf16", STATIC,
        "gemm_gmac_per_s/fp32", 0),
    Fig(r"alone: fp32\s+\d+, bf16 (\d+), int8", STATIC, "gemm_gmac_per_s/bf16", 0),
    Fig(r"bf16 \d+, int8 (\d+) GMAC/s\)", STATIC, "gemm_gmac_per_s/int8", 0),
    Fig(r"torch\s+fp32 " + N + r" s at\s+[\d.]+ GB peak", STATIC,
        "results/path=torch-fp32/median_s", 2),
    Fig(r"s at\s+" + N + r" GB peak, ONNX", STATIC, "results/path=torch-fp32/peak_rss_gb", 2),
    Fig(r"ONNX Runtime fp32 " + N + r" s at [\d.]+ GB, OpenVINO", STATIC,
        "results/path=ort-fp32/median_s", 2),
    Fig(r"ONNX Runtime fp32 [\d.]+ s at " + N + r" GB, OpenVINO", STATIC,
        "results/path=ort-fp32/peak_rss_gb", 2),
    Fig(r"OpenVINO bf16 " + N + r" s at [\d.]+ GB\s+\(", STATIC,
        "results/path=openvino-bf16/median_s", 2),
    Fig(r"OpenVINO bf16 [\d.]+ s at " + N + r" GB\s+\(", STATIC,
        "results/path=openvino-bf16/peak_rss_gb", 2),
    Fig(r"GB\s+\(" + N + r"x\s+torch fp32, \d+ %", STATIC,
        ratio("results/path=torch-fp32/median_s", "results/path=openvino-bf16/median_s"), 2),
    Fig(r"torch fp32, (\d+) % of the bf16 GEMM", STATIC,
        lambda d: 100 * get(d, "results/path=openvino-bf16/fraction_of_gemm_rate"), 0),
    Fig(r"calibrated INT8 export\s+" + N + r" s at", STATIC,
        "results/path=openvino-int8/median_s", 2),
    Fig(r"INT8 export\s+[\d.]+ s at\s+" + N + r" GB, its float rest at f32 then\.", STATIC,
        "results/path=openvino-int8/peak_rss_gb", 2),
    Fig(r"than bf16 here, at (\d+) % of the int8 GEMM rate", STATIC,
        lambda d: 100 * get(d, "results/path=openvino-int8/fraction_of_gemm_rate"), 0),
    # ... and against the official code on that Xeon
    Fig(r"the official code's median " + N + r" s, OpenVINO bf16", OFFICIAL_XEON,
        "median_s/official", 2),
    Fig(r"the official code's median [\d.]+ s, OpenVINO bf16\s+" + N + r" s \(", OFFICIAL_XEON,
        "median_s/openvino-bf16", 2),
    Fig(r"\(" + N + r"x; `benchmarks/results/official_vs_fast_xeon", OFFICIAL_XEON,
        ratio("median_s/official", "median_s/openvino-bf16"), 2),
    Fig(r"Xeon \(torch ([\d.]+) eager fp32, alternated", OFFICIAL_XEON,
        lambda d: d["official"]["torch"].split("+")[0]),
    Fig(r"in one run, (\d+) rounds each\): the official code's median", OFFICIAL_XEON, "rounds"),
    # ... why OpenVINO bf16, and its accuracy
    Fig(r"reached only " + N + "x its fp32", BENCH,
        ratio("results/path=torch-fp32/median_s", "results/path=torch-bf16/median_s"), 1),
    Fig(r"frame mAP on the (\d+) held-out videos is", ACC,
        lambda d: videos(d["demo_heldout_frame_map"]["commands"])),
    Fig(r"held-out videos is\s+" + N + r" in fp32 \(ONNX Runtime\)", ACC,
        "demo_heldout_frame_map/ort_fp32", 4),
    Fig(r"\(ONNX Runtime\) and " + N + " in OpenVINO bf16", ACC,
        "demo_heldout_frame_map/openvino_bf16", 4),
    Fig(r"in OpenVINO bf16 \(" + N + " torch bf16", ACC, "demo_heldout_frame_map/torch_bf16", 4),
    Fig(r"torch bf16,\s+" + N + " OpenVINO bf16 with int8 weights", ACC,
        "demo_heldout_frame_map/openvino_bf16_int8w", 4),
    Fig(r"calmed random weights, (\d+) clips\)", ACC, f"{ACC_REPORT}/clips"),
    *[Fig(r"Jaccard min " + r" / ".join(N if b == blk else r"[\d.]+" for b in (3, 6, 9))
          + r" at blocks 3 / 6 / 9", ACC, f"{ACC_REPORT}/min_jaccard/{blk}", 4)
      for blk in (3, 6, 9)],
    *[Fig(r"\(" + r" / ".join(r"(\d+)" if b == blk else r"\d+" for b in (3, 6, 9))
          + r" boundary flips", ACC, lambda d, blk=blk: sum(b["differing"] for b in
                                                            blocks(d, OV, blk)))
      for blk in (3, 6, 9)],
    Fig(r"up to\s+(\d+) order swaps", ACC,
        lambda d: max(sum(b["order_swaps"] for b in blocks(d, OV, k)) for k in (3, 6, 9))),
    # "within 1 %": the smallest whole percent above every differing and order-swap gap
    Fig(r"order swaps, all within (\d+) % score gaps", ACC,
        lambda d: math.ceil(100 * max(max(b["differing_gap"], b["order_gap"])
                                      for b in d["vit_b_ktp_parity"][OV]["report"]["blocks"]))),
    Fig(r"action probabilities mean abs ([\de.-]+), \d+ of", ACC, f"{ACC_REPORT}/prob_mean_abs",
        "e2"),
    Fig(r"mean abs [\de.-]+, (\d+) of \d+\s+detections", ACC, f"{ACC_REPORT}/matched"),
    Fig(r"mean abs [\de.-]+, \d+ of (\d+)\s+detections", ACC, f"{ACC_REPORT}/detections"),
    Fig(r"with (\d+) threshold flips", ACC, f"{ACC_REPORT}/threshold_flips"),
    # ... the float64-oracle ratios of the same report (export/parity.py)
    *[Fig(r"([\de.-]+) \(" + what + r"\)", ACC, f"{ACC_REPORT}/oracle/{key}/ratio", "e2")
      for what, key in (("boxes", "boxes"), ("person scores", "person_scores"),
                        ("action probabilities", "action_probs"))],
    Fig(r"oracle ratios up to\s+([\de.-]+),", ACC,
        lambda d: max(v["ratio"] for v in get(d, f"vit_b_ktp_parity/{INT8W}/report/oracle")
                      .values()), "e2"),
    Fig(r"took (\d+) % less time on the EPYC", OFFICIAL,
        lambda d: 100 * (1 - get(d, "before_openvino_rewrites/median_s/openvino-bf16-int8w")
                         / get(d, "before_openvino_rewrites/median_s/openvino-bf16")), 0),
    Fig(r"Jaccard min " + N + " at block 9", ACC,
        f"vit_b_ktp_parity/{INT8W}/report/min_jaccard/9", 4),
    Fig(r"block 9, probabilities mean abs ([\de.-]+)\.", ACC,
        f"vit_b_ktp_parity/{INT8W}/report/prob_mean_abs", "e2"),
    # ... the INT8 export's calibration memory
    Fig(r"peaked at\s+" + N + r" GiB for ViT-B", CALIB_MEM, "vit_b_ktp/whole_export_peak_rss_gib",
        2),
    Fig(r"and at " + N + r" GiB for ViT-L", CALIB_MEM, "vit_l_ktp/whole_export_peak_rss_gib", 2),
    Fig(r"ViT-L at 288x512 \((\d+) min on", CALIB_MEM,
        lambda d: d["vit_l_ktp"]["whole_export_s"] / 60, 0),
    Fig(r"2-core VM\s+with (\d+) GiB\)", CALIB_MEM,
        lambda d: int(re.search(r"(\d+) GiB memory", d["machine"])[1])),
    # ... calibrated INT8 on the demo model (benchmarks/int8_accuracy.py)
    Fig(r"calibrated on (\d+) clips of \d+ of its training", INT8, "calibration/clips"),
    Fig(r"clips of (\d+) of its training\s+videos", INT8, "calibration/set/videos"),
    Fig(r"scores " + N + r" in ONNX Runtime\s+int8", INT8, "runs/ort_int8/mAP", 4),
    Fig(r"int8 against " + N + r" in fp32 \(", INT8, "runs/ort_fp32/mAP", 4),
    Fig(r"in fp32 \(" + N + r" higher\) and", INT8, "delta_int8_minus_fp32/ort", 4),
    Fig(r"and " + N + r" in OpenVINO int8 against", INT8, "runs/openvino_int8/mAP", 4),
    Fig(r"OpenVINO int8 against " + N + r" \(", INT8, "runs/openvino_fp32/mAP", 4),
    Fig(r"against [\d.]+ \(" + N + r"\s+higher\) on", INT8, "delta_int8_minus_fp32/openvino",
        4),
    Fig(r"the (\d+) held-out videos, within", INT8, "heldout/videos"),
    # ... and on vit_b_ktp: NNCF's file passes; quantize_static's was a draw (parity JSON;
    # benchmarks/int8_sensitivity.py at commit c09a575)
    Fig(r"in ONNX Runtime \(block 9's Jaccard min " + N + r"\)", PARITY8,
        lambda d: min(v["min_jaccard"]["9"] for v in d["nncf"]["onnxruntime"].values()), 4),
    Fig(r"and in OpenVINO\s+\(min " + N + r"\)", PARITY8,
        lambda d: min(v["min_jaccard"]["9"] for v in d["nncf"]["openvino"].values()), 4),
    Fig(r"calibrated on (\d+) clips on this AMD", PARITY8,
        "nncf/quantization/calibration_clips"),
    Fig(r"failed seed 0\s+\(" + N + r"\) while", PARITY8,
        "ort_epyc_calibrated/seeds/0/min_jaccard/9", 4),
    Fig(r"passed all four seeds \(min " + N + r"\), and", PARITY8,
        lambda d: min(v["min_jaccard"]["9"] for v in
                      d["openvino_bf16_float_rest"]["seeds"].values()), 4),
    Fig(r"block 9\s+between " + N + r" and", SENS, lambda d: _sensitivity_range(d)[0], 4),
    Fig(r"between [\d.]+ and " + N + r" on seeds", SENS, lambda d: _sensitivity_range(d)[1],
        4),
    Fig(r"within " + N + r" of fp32 in both", INT8, "bar", 2),
    Fig(r"OpenVINO bf16 " + N + r" on this", INT8, "runs/openvino_bf16/mAP", 4),
    Fig(r"on this \d+-core ([A-Za-z ]+?)\. OpenVINO runs the INT8", INT8, cpu_family("cpu")),
    # ... ONNX Runtime's memory
    Fig(r"its peak is " + N + " GB against torch's", BENCH,
        "results/path=ort-fp32/peak_rss_gb", 2),
    Fig(r"against torch's\s+" + N + r" GB \(", BENCH, "results/path=torch-fp32/peak_rss_gb", 2),
    Fig(r"GB \(" + N + r"x; `benchmarks/results/bench_vit", BENCH,
        ratio("results/path=ort-fp32/peak_rss_gb", "results/path=torch-fp32/peak_rss_gb"), 2),
    # ... token dropout
    Fig(r"openvino-bf16 --runs (\d+)`", KEEP, "settings/runs"),
    Fig(r"gives\s+" + N + "x the throughput in OpenVINO bf16", KEEP, kr_ratio("openvino-bf16"),
        2),
    Fig(r"in OpenVINO bf16 \(" + N + " ->", KEEP, bench("openvino-bf16", 1.0, "median_s"), 2),
    Fig(r"in OpenVINO bf16 \([\d.]+ -> " + N + r" s\)", KEEP,
        bench("openvino-bf16", 0.7, "median_s"), 2),
    Fig(r"s\), " + N + "x in torch fp32", KEEP, kr_ratio("torch-fp32"), 2),
    Fig(r"x in torch fp32 \(" + N + " ->", KEEP, bench("torch-fp32", 1.0, "median_s"), 2),
    Fig(r"x in torch fp32 \([\d.]+ -> " + N + r" s\)", KEEP, bench("torch-fp32", 0.7, "median_s"),
        2),
    Fig(r"and " + N + "x in ONNX Runtime fp32", KEEP, kr_ratio("ort-fp32"), 2),
    Fig(r"x in ONNX Runtime fp32 \(" + N + " ->", KEEP, bench("ort-fp32", 1.0, "median_s"), 2),
    Fig(r"x in ONNX Runtime fp32 \([\d.]+ -> " + N + r" s\)", KEEP,
        bench("ort-fp32", 0.7, "median_s"), 2),
    Fig(r"for " + N + r"x the GMACs", KEEP,
        lambda d: bench("ort-fp32", 0.7, "gmac_per_clip")(d)
        / bench("ort-fp32", 1.0, "gmac_per_clip")(d), 2),
    Fig(r"the GMACs \((\d+) ->", KEEP, bench("ort-fp32", 1.0, "gmac_per_clip"), 0),
    Fig(r"the GMACs \(\d+ -> (\d+)\)", KEEP, bench("ort-fp32", 0.7, "gmac_per_clip"), 0),
    Fig(r"\((\d+) % and \d+ % of it", KEEP,
        lambda d: 100 * bench("torch-fp32", 1.0, "fraction_of_gemm_rate")(d), 0),
    Fig(r"\(\d+ % and (\d+) % of it", KEEP,
        lambda d: 100 * bench("ort-fp32", 1.0, "fraction_of_gemm_rate")(d), 0),
    Fig(r"against (\d+) % and \d+ % at 0.7", KEEP,
        lambda d: 100 * bench("torch-fp32", 0.7, "fraction_of_gemm_rate")(d), 0),
    Fig(r"against \d+ % and (\d+) % at 0.7", KEEP,
        lambda d: 100 * bench("ort-fp32", 0.7, "fraction_of_gemm_rate")(d), 0),
    # Benchmarks table, one row per JSON: device, date and every number of the figure cell
    Fig(r"2 threads \| 2-core ([A-Za-z ]+?) VM \|", FWD, cpu_family("device")),
    Fig(r"2 threads \| [^|]+ \| ([\d-]+) \| median", FWD, "date"),
    Fig(r"\| median " + N + r" s \(runs", FWD, "median_s", 1),
    Fig(r"s \(runs " + N + r", [\d.]+, [\d.]+ s\)", FWD, "runs_s/0", 1),
    Fig(r"s \(runs [\d.]+, " + N + r", [\d.]+ s\)", FWD, "runs_s/1", 1),
    Fig(r"s \(runs [\d.]+, [\d.]+, " + N + r" s\)", FWD, "runs_s/2", 1),
    Fig(r"s\), peak RSS " + N + r" GB \| `cpu_forward", FWD, "peak_rss_gb", 1),
    Fig(r"ort_vs_torch_cpu.py`\) \| 2-core ([A-Za-z ]+?) VM \|", ORT, cpu_family("device")),
    Fig(r"ort_vs_torch_cpu.py`\) \| [^|]+ \| ([\d-]+) \|", ORT, "date"),
    Fig(r"\| ORT median " + N + " s", ORT, "ort_median_s", 2),
    Fig(r"s, torch median " + N + r" s \(", ORT, "torch_median_s", 1),
    Fig(r"torch median [\d.]+ s \((\d+) runs each\)", ORT, lambda d: len(d["ort_runs_s"])),
    Fig(r"288x512, (\d+) MB ONNX", EXPORT,
        lambda d: float(next(re.search(r"\(([\d.]+) MB", s["line"])[1] for s in d["stages"]
                             if s["line"].startswith("wrote "))), 0),
    Fig(r"export_time.py`\) \| 2-core ([A-Za-z ]+?) VM \|", EXPORT, cpu_family("cpu")),
    Fig(r"export_time.py`\) \| [^|]+ \| ([\d-]+) \|", EXPORT, "date"),
    Fig(r"trace \+ translate " + N + " s", EXPORT, stage("trace (torch.export)", "traced and"),
        1),
    Fig(r"onnx checks " + N + " s", EXPORT, stage("traced and", "checks passed"), 1),
    Fig(r", save " + N + " s", EXPORT, stage("checks passed", "wrote "), 1),
    Fig(r"one ORT parity clip " + N + " s", EXPORT, stage("wrote ", "PASS"), 1),
    Fig(r"s; " + N + " s wall", EXPORT, "wall_s", 1),
    Fig(r"s wall, " + N + " GB peak RSS", EXPORT, "peak_rss_gb", 2),
]

# Numbers in a paragraph that names a JSON but are no measurement (settings, sizes, versions
# the command states, parity rules, the paper's own figures), each with why; matched in the text.
NOT_FIGURES: list[tuple[str, str]] = [
    (r"\d+-core", "the machine's core count (the bench caption's is checked)"),
    (r"\d+x\d+", "an input size"),
    (r"16 x \d+ x \d+", "the clip's shape"),
    (r"\d{4}-\d\d-\d\d", "a date (the figure tables' and captions' are checked)"),
    (r"vit_b_ktp 288x512", "the model"),
    (r"ViT_B_16x4_KTP", "the official config's name"),
    (r"torch\s+2\.13\b|ONNX Runtime 1\.32\b", "the Benchmarks table rows' software versions"),
    (r"\b2 threads\b", "a setting"),
    (r"\b3 / 6 / 9\b", "block indices"),
    (r"blocks? [2469]\b", "a block index"),
    (r"IoU >= 0\.9|within 0\.05 of the 0\.7\s+threshold", "parity rules (docs/design.md)"),
    (r"\+40 % throughput for -43 % GFLOPs", "the paper's own figures"),
    (r"rho [01]\.\d|at [01]\.\d\b", "keep rates"),
    (r"AVX512|sm_\d+", "instruction sets"),
    (r"mAP@0\.5", "the metric's IoU threshold"),
    (r"\b1024-row", "a design constant"),
    (r"ViT-B, 224", "the paper's setting"),
    (r"10 %", "the bench's warm-up rule"),
    (r"\bfp(16|32|64)|bf16|int8", "precision names"),
    (r"\b1 x 16 x", "the clip's shape"),
    (r"demo video at 5 s", "the figure's keyframe time"),
    (r"Figure 1\b", "the paper's figure number"),
    (r"model's 16 frames, every 4th, \(16, H, W, 3\)", "the request's layout"),
    (r"`tritonserver` 2\.51|numpy [12] ", "versions"),
    (r"\(3 clients x 4 clip requests", "the load test's settings (its assertion is the claim)"),
    (r"ViT 96 wide x 8 blocks,\s+KTP 0\.7 at blocks 2/4/6, 8 frames 2 apart, 3 Sparse R-CNN "
     r"stages, 16 proposals", "the demo preset (models/presets.py)"),
    (r"16 proposals; 2\.4 M\s+parameters, fp16, 4\.9 MB",
     "checked against the checkpoint by test_demo_model_size_is_the_shipped_file"),
    (r"at 8 x 2\)", "the clip sampling"),
    (r"16:9", "an aspect ratio"),
    (r"rho 0\.7 against 1\.0", "keep rates"),
    (r"Jaccard of 0\.97 in every", "the reduced-precision parity bar (export/parity.py)"),
    (r"\bseed [0-3]\b|\bseeds 0 and 3\b", "clip seeds of evad-parity"),
    (r"\bblocks 0-8\b", "block indices"),
]


@cache
def results(name: str) -> Any:
    """A JSON of benchmarks/results/, loaded once."""
    return json.loads((RESULTS / name).read_text())


def readme() -> str:
    """README.md as it is now (others edit it while the suite runs: never cached)."""
    return README.read_text()


def check_figure(text: str, fig: Fig) -> tuple[str | None, tuple[int, int] | None]:
    """(problem or None, the figure's span in ``text``)."""
    hits = list(re.finditer(fig.pattern, text))
    if len(hits) != 1:
        return (f"{fig.pattern!r} matches {len(hits)} times in README.md (want 1: rephrased? "
                "then update FIGURES)", None)
    hit = hits[0]
    value = fig.key(results(fig.json)) if callable(fig.key) else get(results(fig.json), fig.key)
    want = render(value, fig.fmt)
    if hit[1] != want:
        where = fig.key if isinstance(fig.key, str) else "(derived)"
        return (f"README says {hit[1]!r} at {hit[0]!r}; {fig.json} {where} gives {want!r}",
                hit.span(1))
    return None, hit.span(1)


@dataclass(frozen=True)
class Unit:
    """A stretch of README.md that must name the JSON of every figure in it: a paragraph, a
    list item, a table row (with the paragraph above the table), or a code block (likewise)."""

    start: int
    end: int
    names: str  # where the JSON's name must appear


def units(text: str) -> list[Unit]:
    """Paragraphs, list items, table rows and code blocks of a markdown text, by offset."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    groups: list[tuple[int, int, str]] = []  # (first line, end line, kind)
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        if lines[i].lstrip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            groups.append((i, j + 1, "code"))
            i = j + 1
            continue
        j = i
        while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith("```"):
            j += 1
        groups.append((i, j, "table" if lines[i].startswith("|") else "text"))
        i = j
    out: list[Unit] = []
    prev = ""
    for a, b, kind in groups:
        block = "".join(lines[a:b])
        if kind == "table":
            out += [Unit(offsets[k], offsets[k + 1], prev + lines[k]) for k in range(a, b)]
        elif kind == "code":
            out.append(Unit(offsets[a], offsets[b], prev + block))
        else:
            starts = [k for k in range(a, b) if lines[k].startswith("- ")] or [a]
            starts = sorted({a, *starts})
            for s, e in zip(starts, [*starts[1:], b], strict=True):
                out.append(Unit(offsets[s], offsets[e], "".join(lines[s:e])))
        prev = block
    return out


def unit_at(text: str, pos: int) -> Unit:
    """The unit holding offset ``pos``."""
    return next(u for u in units(text) if u.start <= pos < u.end)


def test_every_figure_equals_its_json() -> None:
    text = readme()
    problems = [p for fig in FIGURES if (p := check_figure(text, fig)[0])]
    assert problems == []


def test_every_figure_names_its_json_beside_it() -> None:
    text = readme()
    missing = []
    for fig in FIGURES:
        span = check_figure(text, fig)[1]
        if span is not None and fig.json not in unit_at(text, span[0]).names:
            missing.append(f"{fig.pattern!r}: its paragraph does not name {fig.json}")
    assert missing == []


def test_a_changed_figure_fails() -> None:
    """Each entry is sensitive: the README's figure altered by one digit is reported."""
    text = readme()
    for fig in FIGURES:
        span = check_figure(text, fig)[1]
        assert span is not None, fig.pattern
        old = text[span[0]:span[1]]
        new = {"AMD EPYC": "Xeon", "Xeon": "AMD EPYC"}.get(old) or re.sub(
            r"\d(?=\D*$)", lambda m: str((int(m[0]) + 1) % 10), old)  # the last digit + 1
        problem = check_figure(text[:span[0]] + new + text[span[1]:], fig)[0]
        assert problem is not None and repr(new) in problem, (fig.pattern, old, new)


def test_render_rounds_half_up_at_the_printed_precision() -> None:
    assert [render(1.45, 1), render(5.835, 2), render(1.405, 2), render(2890 / 60, 0)] == \
        ["1.5", "5.84", "1.41", "48"]
    assert [render(0.0015924583, "e2"), render(1.58e-5, "e1"), render(0.00996, "e2")] == \
        ["1.6e-3", "2e-5", "1.0e-2"]


def _numbers(text: str) -> Iterator[re.Match[str]]:
    """Numbers in prose: not inside `code`, not part of a word or a file name."""
    code = [m.span() for m in re.finditer(r"`[^`]*`", text)]
    for m in re.finditer(r"(?<![\w.\-/])\d+(?:\.\d+)?(?:e-\d+)?(?![\w/]|\.\d)", text):
        if not any(a <= m.start() < b for a, b in code):
            yield m


def test_every_number_beside_a_json_is_a_checked_figure() -> None:
    """A new figure in a paragraph that names a JSON (or in a figure table) without a FIGURES
    entry fails, as does one no JSON backs (say it, or take it out, in NOT_FIGURES' terms)."""
    text = readme()
    covered = [s for fig in FIGURES if (s := check_figure(text, fig)[1]) is not None]
    allowed = [m.span() for pat, _ in NOT_FIGURES for m in re.finditer(pat, text)]
    assert [pat for pat, _ in NOT_FIGURES if not re.search(pat, text)] == []  # none stale
    names = [p.name for p in RESULTS.glob("*.json")]
    loose = []
    for unit in units(text):
        body = text[unit.start:unit.end]
        if "```" in body or not any(n in body for n in names):
            continue  # code blocks: the FLOPs table has a test of its own
        for m in _numbers(body):
            a, b = unit.start + m.start(), unit.start + m.end()
            if not any(x <= a and b <= y for x, y in covered + allowed):
                line = text.count("\n", 0, a) + 1
                context = body[max(0, m.start() - 40):m.end() + 20]
                loose.append(f"README.md:{line}: {m[0]!r} in {context!r}")
    assert loose == []


def md_table(text: str, header: str) -> list[list[str]]:
    """The rows (cells, ``**`` removed) of the markdown table whose header line is ``header``."""
    lines = text.splitlines()
    assert lines.count(header) == 1, f"README.md has {lines.count(header)} tables {header!r}"
    i = lines.index(header) + 2
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip().replace("**", "") for c in lines[i].strip("|").split("|")])
        i += 1
    return rows


BENCH_HEADER = "| path | median s | p95 s | peak RSS GB | GMAC/s | of GEMM rate | warm-ups |"
BENCH_ROWS = {"torch fp32 (the reference)": "torch-fp32", "ONNX Runtime fp32": "ort-fp32",
              "torch bf16 (autocast)": "torch-bf16",
              "OpenVINO bf16 (the fast CPU path)": "openvino-bf16"}


def bench_table_problems(text: str, report: dict) -> list[str]:
    """Every cell of the README's bench table against the bench JSON; every path of the JSON
    has a row (none hidden), and a path whose warm-up never settled says so in its row."""
    problems = []
    seen = set()
    for cells in md_table(text, BENCH_HEADER):
        label, *values = cells
        path = BENCH_ROWS.get(label)
        if path is None:
            problems.append(f"bench table row {label!r}: no path for it in BENCH_ROWS")
            continue
        seen.add(path)
        r = next((x for x in report["results"] if x["path"] == path), None)
        if r is None:
            problems.append(f"bench table row {label!r}: {path} is not in {BENCH}")
            continue
        warm = str(r["warmups"]) + ("" if r.get("settled", True) else " (not settled)")
        want = [render(r["median_s"], 2), render(r["p95_s"], 2), render(r["peak_rss_gb"], 2),
                render(r["gmac_per_s"], 0), render(100 * r["fraction_of_gemm_rate"], 0) + " %",
                warm]
        if values != want:
            problems.append(f"bench table row {label!r}: README {values}, {BENCH} {want}")
    hidden = [r["path"] for r in report["results"] if r["path"] not in seen]
    if hidden:
        problems.append(f"{BENCH} paths without a row in the bench table: {hidden}")
    return problems


def test_bench_table_equals_its_json_with_every_path() -> None:
    assert bench_table_problems(readme(), results(BENCH)) == []


def test_bench_table_shows_a_hidden_or_unsettled_path() -> None:
    report = json.loads(json.dumps(results(BENCH)))
    ort = next(r for r in report["results"] if r["path"] == "ort-fp32")
    ort["settled"] = False
    report["results"].append({**ort, "path": "openvino-fp32"})
    assert bench_table_problems(readme(), report) == [
        "bench table row 'ONNX Runtime fp32': README ['10.43', '10.98', '2.17', '50', '62 %', "
        "'2'], bench_vit_b_ktp_288x512.json ['10.43', '10.98', '2.17', '50', '62 %', "
        "'2 (not settled)']",
        "bench_vit_b_ktp_288x512.json paths without a row in the bench table: "
        "['openvino-fp32']"]


BENCHMARKS_HEADER = "| what | device | date | figure | JSON |"


def test_benchmarks_table_rows_name_their_json_and_every_number_is_checked() -> None:
    """Each row names an existing JSON; its device and date are checked figures, and so is
    every number of its figure cell."""
    text = readme()
    covered = [s for fig in FIGURES if (s := check_figure(text, fig)[1]) is not None]
    start = text.index(BENCHMARKS_HEADER + "\n")
    rows = md_table(text, BENCHMARKS_HEADER)
    assert len(rows) == 3 and all(len(r) == 5 for r in rows)
    loose = []
    for cells in rows:
        assert (RESULTS / cells[4].strip("`")).is_file(), cells[4]
        row_at = text.index("| " + " | ".join(cells[:2]), start)
        cell_at = [text.index("| " + c + " |", row_at) + 2 for c in cells]
        for k in (1, 2):  # device, date: one checked figure inside the cell
            a, b = cell_at[k], cell_at[k] + len(cells[k])
            if not any(a <= x and y <= b for x, y in covered):
                loose.append(f"{cells[4]}: {cells[k]!r} is not a checked figure")
        for m in _numbers(cells[3]):
            a = cell_at[3] + m.start()
            if not any(x <= a < y for x, y in covered):
                loose.append(f"{cells[4]}: {m[0]!r} in {cells[3]!r} is not a checked figure")
    assert loose == []


FLOPS_HEADER = ("preset             size  keep  tokens (after each pruning)   encoder   fpn   loc "
                "decoder   total   paper    diff")
FLOPS_ROW = re.compile(r"^(\S+)\s+(\d+)x(\d+)\s+([\d.]+)\s+(\d+(?: -> \d+)*)\s+([\d.]+)\s+([\d.]+)"
                       r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)%$")


def test_flops_table_equals_its_json_row_by_row() -> None:
    text = readme()
    lines = text.splitlines()
    assert lines.count(FLOPS_HEADER) == 1
    i = lines.index(FLOPS_HEADER) + 2
    rows = []
    while not lines[i].startswith("```"):
        m = FLOPS_ROW.match(lines[i])
        assert m, f"FLOPs table row not of the checked form: {lines[i]!r}"
        rows.append(list(m.groups()))
        i += 1
    assert FLOPS in unit_at(text, text.index(FLOPS_HEADER)).names  # the command above it
    want = []
    for r in results(FLOPS)["rows"]:
        g = r["gflops"]
        want.append([r["preset"], str(r["height"]), str(r["width"]), render(r["keep_rate"], 2),
                     " -> ".join(map(str, r["tokens"])),
                     *(render(g[k], 1) for k in ("encoder", "fpn", "localization", "decoder",
                                                 "total")),
                     render(r["paper_gflops"], 1),
                     ("+" if g["total"] >= r["paper_gflops"] else "")
                     + render(100 * (g["total"] - r["paper_gflops"]) / r["paper_gflops"], 1)])
    assert rows == want


def test_demo_model_size_is_the_shipped_file() -> None:
    """"2.4 M parameters, fp16, 4.9 MB": the checkpoint itself is the record of these."""
    import torch

    path = ROOT / "models" / "weights" / "demo.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    params = sum(t.numel() for t in state.values() if t.is_floating_point())
    m = re.search(r"16 proposals; ([\d.]+) M\s+parameters, fp16, ([\d.]+) MB\)", readme())
    assert m is not None
    assert (m[1], m[2]) == (render(params / 1e6, 1), render(path.stat().st_size / 1e6, 1))
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}


def test_every_json_in_the_table_exists() -> None:
    """A renamed or removed result file fails here by name."""
    assert sorted({f.json for f in FIGURES} - {p.name for p in RESULTS.glob("*.json")}) == []

