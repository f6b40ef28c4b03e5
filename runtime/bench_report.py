"""``evad-bench``'s report as people read it: a fixed-width table for the terminal and a PNG of
two bar panels (latency, peak memory). The report itself (the dict ``--json`` writes) is made by
``evad.runtime.benchmark.run_benchmark``; this module only renders it and measures nothing.
Torch-free; the plot needs OpenCV (loaded on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evad.errors import EvadError
from evad.lazy import lazy_import

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["plot_png", "table"]


def table(report: dict) -> list[str]:
    """The report as a fixed-width table, one row per path and keep rate."""
    m = report["model"]
    features = report["machine"].get("cpu_features")  # reports before it was recorded
    lines = [f"evad-bench: {m['preset']} ({m['source']}), {m['height']}x{m['width']}, batch "
             f"{m['batch']}; {report['machine']['cpu']}"
             + (f" ({' '.join(features) or 'no AMX / AVX-512 / AVX2'})"
                if features is not None else "")
             + f", {report['machine']['threads']} threads; {report['date']}"]
    if report["gemm_gmac_per_s"]:
        lines.append("GEMM rate now: " + ", ".join(
            f"{k} {v:.0f} GMAC/s" for k, v in report["gemm_gmac_per_s"].items()))
    head = (f"{'path':<16}{'keep':>6}{'median s':>10}{'p95 s':>8}{'clips/s':>9}{'peak GB':>9}"
            f"{'GMAC/s':>8}{'of GEMM':>9}{'warm-ups':>10}  tokens (all, after each pruning)")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        keep = r["keep_rate"] if isinstance(r["keep_rate"], str) else f"{r['keep_rate']:g}"
        keep = "model" if keep == "as trained" else keep
        if r.get("error"):
            lines.append(f"{r['path']:<16}{keep:>6}  FAILED: {r['error']}")
            continue
        frac = r.get("fraction_of_gemm_rate")
        tokens = " -> ".join(str(v) for v in [r["tokens_model"][0],
                                              *r["tokens_after_pruning"].values()])
        lines.append(
            f"{r['path']:<16}{keep:>6}{r['median_s']:>10.3f}{r['p95_s']:>8.3f}"
            f"{r['clips_per_s']:>9.3f}{r['peak_rss_gb']:>9.2f}{r['gmac_per_s']:>8.0f}"
            f"{(f'{frac:.0%}' if frac is not None else '-'):>9}{r['warmups']:>10}  {tokens}")
    for name, ratios in report.get("keep_rate_ratios", {}).items():
        lines.append(f"throughput vs keep {next(iter(ratios))}: {name} " + ", ".join(
            f"{k}: {v:.2f}x" for k, v in ratios.items()))
    return lines


def plot_png(report: dict, width: int = 900) -> bytes:
    """Two bar panels (median latency with its p95, peak RSS) per path, as PNG bytes."""
    rows = [r for r in report["results"] if not r.get("error")]
    bar_h, gap, left, top = 26, 10, 230, 60
    panel = len(rows) * (bar_h + gap) + 50
    img = np.full((top + 2 * panel + 20, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    m = report["model"]
    cv2.putText(img, f"evad-bench {m['preset']} {m['height']}x{m['width']} batch {m['batch']}",
                (10, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{report['machine']['cpu'][:60]}, {report['machine']['threads']} threads,"
                f" {report['date']}", (10, 48), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    colours = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]
    for p_i, (key, unit, title) in enumerate((("median_s", "s", "latency per call (median, "
                                               "p95 tick)"),
                                              ("peak_rss_gb", "GB", "peak memory (RSS)"))):
        y0 = top + p_i * panel
        cv2.putText(img, title, (10, y0 + 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        vmax = max([r.get("p95_s", 0) if key == "median_s" else r[key] for r in rows] + [1e-9])
        scale = (width - left - 90) / vmax
        for i, r in enumerate(rows):
            y = y0 + 30 + i * (bar_h + gap)
            keep = r["keep_rate"]
            label = r["path"] + ("" if keep == "as trained" else f" rho {keep:g}")
            cv2.putText(img, label, (10, y + 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            x1 = xt = left + int(r[key] * scale)
            cv2.rectangle(img, (left, y), (x1, y + bar_h), colours[i % len(colours)], -1)
            if key == "median_s":
                xt = max(x1, left + int(r["p95_s"] * scale))
                cv2.line(img, (xt, y - 2), (xt, y + bar_h + 2), (0, 0, 0), 2)
            cv2.putText(img, f"{r[key]:.2f} {unit}", (xt + 8, y + 18), font, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise EvadError("OpenCV could not encode the plot as PNG")
    return buf.tobytes()
