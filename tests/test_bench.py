"""``evad-bench`` on the tiny model: real child processes per path, figures checked against each
other (medians of the recorded runs, clips/s, GMAC/s, token counts of the model)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import cv2
import pytest
from conftest import TINY_H, TINY_W

from evad.cli.bench import main as bench_main
from evad.models.flops import flops, token_counts
from evad.models.presets import get_preset
from evad.runtime.benchmark import CPU_FEATURES, p95, settle_warmups

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _openvino_path() -> str:
    try:
        import openvino  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("CI installs openvino (the dev extra): the fast CPU path must be tested")
        pytest.skip("openvino not installed (pip install 'evad-deploy[openvino]')")
    from evad.export.openvino_runner import cpu_has_bf16

    return "openvino-bf16" if cpu_has_bf16() else "openvino-fp32"


def _check_figures(r: dict, gmac: float, runs: int) -> None:
    assert len(r["runs_s"]) == runs and all(t > 0 for t in r["runs_s"])
    assert r["median_s"] == pytest.approx(statistics.median(r["runs_s"]), abs=1e-4)
    assert r["p95_s"] == pytest.approx(p95(r["runs_s"]), abs=1e-4)
    assert r["clips_per_s"] == pytest.approx(1 / r["median_s"], rel=1e-3)
    assert r["gmac_per_s"] == pytest.approx(gmac / r["median_s"], rel=1e-2, abs=0.1)
    assert 1 <= r["warmups"] <= 6
    assert 0.05 < r["peak_rss_gb"] < 8


def test_bench_onnx_paths_table_json_png(tiny_onnx, tmp_path, capsys) -> None:
    fast = _openvino_path()
    js, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = bench_main(["--onnx", str(tiny_onnx), "--height", str(TINY_H), "--width", str(TINY_W),
                     "--paths", f"ort-fp32,{fast}", "--runs", "3", "--json", str(js),
                     "--png", str(png)])
    out, log = capsys.readouterr()
    assert rc == 0, out
    report = json.loads(js.read_text())
    preset = get_preset("tiny")
    gmac = flops(preset, TINY_H, TINY_W)["total"]
    counts = token_counts(preset, TINY_H, TINY_W)
    pruned_after = [counts[b + 1] for b in sorted(preset.keep_rates)]
    assert [r["path"] for r in report["results"]] == ["ort-fp32", fast]
    for r in report["results"]:
        _check_figures(r, gmac, 3)
        assert list(r["tokens_after_pruning"].values()) == pruned_after  # what the model kept
        assert r["gmac_per_clip"] == pytest.approx(gmac, abs=0.05)
        assert r["fraction_of_gemm_rate"] == pytest.approx(
            r["gmac_per_s"] / report["gemm_gmac_per_s"][r["precision"]], abs=2e-3)
        assert r["path"] in out
    # the yardstick is the best of the kernels the paths use, each kept
    for prec, rate in report["gemm_gmac_per_s"].items():
        kernels = report["gemm_gmac_per_s_by_kernel"][prec]
        assert set(kernels) == {"torch", "openvino"}
        assert rate == max(kernels.values()) and min(kernels.values()) > 1
        assert f"{prec}, " in log and f"torch {kernels['torch']:.0f}" in log
    assert report["settings"]["interleaved"] and report["machine"]["threads"] >= 1
    # the CPU's matrix / vector features, named in the report and the table's first line
    flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("flags")).split(":", 1)[1].split())
    assert report["machine"]["cpu_features"] == [f for f in CPU_FEATURES if f in flags]
    assert " ".join(report["machine"]["cpu_features"]) in out
    assert report["versions"]["onnxruntime"]
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 100 and img.shape[1] == 900
    assert (img < 250).any(axis=2).mean() > 0.02  # bars drawn, not a blank page


def test_bench_keep_rate_sweep_gives_ratios(tmp_path, capsys) -> None:
    js = tmp_path / "sweep.json"
    rc = bench_main(["--preset", "tiny", "--height", str(TINY_H), "--width", str(TINY_W),
                     "--paths", "torch-fp32", "--keep-rate", "1.0,0.7", "--runs", "2",
                     "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(js.read_text())
    full, half = report["results"]
    assert (full["keep_rate"], half["keep_rate"]) == (1.0, 0.7)
    preset = get_preset("tiny")
    assert full["tokens_after_pruning"] == {}  # rho 1.0 prunes nothing
    want = token_counts(preset.replace(keep_rate=0.7), TINY_H, TINY_W)
    assert list(half["tokens_after_pruning"].values()) == [want[b + 1]
                                                          for b in sorted(preset.keep_rates)]
    for r, rate in ((full, 1.0), (half, 0.7)):
        _check_figures(r, flops(preset.replace(keep_rate=rate), TINY_H, TINY_W)["total"], 2)
    ratios = report["keep_rate_ratios"]["torch-fp32"]
    assert ratios["1.0"] == 1.0
    assert ratios["0.7"] == pytest.approx(half["clips_per_s"] / full["clips_per_s"], rel=1e-2)
    assert "throughput vs keep 1.0: torch-fp32" in out


def test_bench_times_the_int8_export_against_the_int8_gemm_rate(tiny_onnx, tiny_int8_onnx,
                                                                tmp_path, capsys) -> None:
    """--int8-onnx: the int8 paths run the INT8 export (ONNX Runtime and OpenVINO), beside an
    fp32 path on the export, in one run; their fraction is of the int8 x int8 GEMM rate."""
    _openvino_path()
    js = tmp_path / "bench.json"
    rc = bench_main(["--onnx", str(tiny_onnx), "--int8-onnx", str(tiny_int8_onnx),
                     "--paths", "ort-fp32,ort-int8,openvino-int8", "--runs", "2",
                     "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(js.read_text())
    assert set(report["gemm_gmac_per_s"]) == {"fp32", "int8"}
    assert all(v > 1 for v in report["gemm_gmac_per_s"].values())
    gmac = flops(get_preset("tiny"), TINY_H, TINY_W)["total"]
    rows = {r["path"]: r for r in report["results"]}
    assert list(rows) == ["ort-fp32", "ort-int8", "openvino-int8"]
    for r in rows.values():
        _check_figures(r, gmac, 2)
        assert r["fraction_of_gemm_rate"] == pytest.approx(
            r["gmac_per_s"] / report["gemm_gmac_per_s"][r["precision"]], abs=2e-3)
    # the int8 paths ran the INT8 file: their kept tokens differ from fp32's somewhere, or
    # at least their names say int8
    assert "int8" in out


@pytest.mark.parametrize(("argv", "says"), [
    (["--preset", "tiny", "--paths", "torch-fp32,warp-drive"], "unknown path(s) warp-drive"),
    (["--preset", "tiny", "--paths", "trt"], "the trt path needs --engine"),
    (["--preset", "tiny", "--keep-rate", "0.7,1.5"], "keep rates must be in (0, 1]"),
    (["--preset", "tiny", "--height", "100"], "multiples of 32"),
])
def test_bench_refuses_bad_requests_in_one_line(argv, says, capsys) -> None:
    try:
        rc = bench_main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]


def test_bench_refuses_int8_without_its_export_in_one_line(tiny_onnx, tiny_int8_onnx,
                                                           capsys) -> None:
    for argv, says in (
            (["--onnx", str(tiny_onnx), "--paths", "ort-int8"],
             "ort-int8 need(s) --int8-onnx FILE"),
            (["--onnx", str(tiny_onnx), "--int8-onnx", str(tiny_onnx), "--paths", "ort-fp32"],
             "is not an INT8 export"),
            (["--preset", "tiny", "--int8-onnx", str(tiny_int8_onnx), "--paths", "torch-fp32"],
             f"was exported for {TINY_H}x{TINY_W}; the benchmark runs 288x512"),
            (["--preset", "vit_b_ktp", "--height", str(TINY_H), "--width", str(TINY_W),
              "--int8-onnx", str(tiny_int8_onnx), "--paths", "torch-fp32"],
             "is a tiny export; the benchmark's model is vit_b_ktp")):
        assert bench_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_bench_refuses_torch_paths_on_an_onnx(tiny_onnx, capsys) -> None:
    assert bench_main(["--onnx", str(tiny_onnx), "--paths", "torch-fp32"]) == 2
    assert "need(s) --preset or --ckpt" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only refusal")
def test_bench_refuses_gpu_paths_without_a_gpu(capsys) -> None:
    assert bench_main(["--preset", "tiny", "--paths", "torch-cuda-fp32"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_p95_and_warmup_rule() -> None:
    assert p95([3.0]) == 3.0
    assert p95(list(map(float, range(1, 21)))) == pytest.approx(19.05)
    assert settle_warmups([5.0, 1.05, 1.0]) and not settle_warmups([5.0, 1.2, 1.0])
    assert not settle_warmups([1.0])


def test_table_says_failed_paths() -> None:
    from evad.runtime.bench_report import table

    report = {"model": {"preset": "tiny", "source": "x", "height": 96, "width": 192,
                        "batch": 1}, "machine": {"cpu": "cpu", "threads": 2}, "date": "d",
              "gemm_gmac_per_s": {}, "results": [{"path": "ort-fp32", "keep_rate": "as trained",
                                                  "error": "path ort-fp32 died: boom"}]}
    assert any("FAILED: path ort-fp32 died: boom" in line for line in table(report))
