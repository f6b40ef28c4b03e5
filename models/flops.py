"""Analytic multiply-add counts of an EVAD forward, in the fvcore convention the paper uses.

fvcore counts one multiply-add of a matmul, linear or convolution as one FLOP, LayerNorm as 5 per
element (4 without affine), nearest upsampling as 1 per output element, and ignores softmax,
activations, RoIAlign, pooling and element-wise sums. ``matmul_flops`` keeps the matmul/conv part
apart so it can be checked exactly against ``torch.utils.flop_counter.FlopCounterMode`` (which
counts 2 per multiply-add and nothing else).

So the preset's pooler type, actor RoI resolution and stride, activations, QK scale and score
options leave the count unchanged; the box-head resolution (dynamic conv on S*S RoI features)
and the encoder's and decoder's MLP ratios enter it.
"""

from __future__ import annotations

import argparse
import sys

from evad.atomic import write_json_atomic
from evad.command import ArgumentParser, check_output_file, number, run_command
from evad.errors import ConfigError
from evad.models.keyframe_topk_prune import keep_fraction, kept_token_count
from evad.models.presets import PRESETS, Preset, get_preset

__all__ = ["flops", "main", "token_counts"]

# The EVAD paper's GFLOPs (square inputs of the short side).
PAPER_GFLOPS = {
    ("vit_b", 224, 1.0): 223.8, ("vit_b", 224, 0.7): 134.2,
    ("vit_b", 288, 1.0): 424.5, ("vit_b", 288, 0.7): 242.8,
    ("vit_b_ktp_ew", 288, None): 208.9, ("vit_l_ktp", 288, None): 737.0,
}


def _keeps(p: Preset, keep_rate: float | None) -> dict[int, tuple[int, int]]:
    if keep_rate is not None:
        p = p.replace(keep_rate=keep_rate)
    return {b: keep_fraction(r) for b, r in p.keep_rates.items() if r < 1.0}


def token_counts(p: Preset, height: int, width: int, keep_rate: float | None = None) -> list[int]:
    """Token count entering each block, then after the last block (len depth + 1)."""
    s = (height // p.patch_size) * (width // p.patch_size)
    n = p.num_frames // p.tubelet_size * s
    keeps = _keeps(p, keep_rate)
    counts = [n]
    for b in range(p.depth):
        if b in keeps:
            n = max(min(n, kept_token_count(n, *keeps[b])), s)
        counts.append(n)
    return counts


def flops(preset: str | Preset, height: int, width: int, keep_rate: float | None = None,
          num_actors: int | None = None) -> dict[str, float]:
    """GFLOPs (multiply-adds / 1e9) of one clip, per stage, plus ``"total"``.

    Args:
        preset: name or Preset.
        height, width: input size in pixels (multiples of 32).
        keep_rate: override the preset's keep rate (see ``Preset.replace``).
        num_actors: actor boxes entering the decoder (default: all proposals, as in the model).

    Returns:
        ``{"encoder", "fpn", "localization", "decoder", "total"}`` and ``"matmul_total"`` (the
        matmul/conv part alone, which ``FlopCounterMode`` measures as twice this number).
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    c, mlp = p.embed_dim, int(p.embed_dim * p.mlp_ratio)
    hh, ww = height // p.patch_size, width // p.patch_size
    counts = token_counts(p, height, width, keep_rate)
    mm: dict[str, float] = {}
    other: dict[str, float] = {}

    # Encoder: attention runs on the block's input tokens, the MLP on the kept ones.
    enc = counts[0] * c * 3 * p.tubelet_size * p.patch_size**2
    enc_other = 0.0
    for b in range(p.depth):
        n_in, n_out = counts[b], counts[b + 1]
        enc += n_in * c * 3 * c + 2 * n_in * n_in * c + n_in * c * c + 2 * n_out * c * mlp
        enc_other += 5 * c * (n_in + n_out)
    mm["encoder"], other["encoder"] = enc, enc_other + 5 * c * counts[-1]

    # FPN over the keyframe taps: strides 4, 8, 16, 32.
    d = p.fpn_dim
    sizes = [(hh * 4, ww * 4), (hh * 2, ww * 2), (hh, ww), (hh // 2, ww // 2)]
    areas = [a * b for a, b in sizes]
    mm["fpn"] = sum(a * c * d + a * d * d * 9 for a in areas)
    other["fpn"] = areas[0] * c + areas[1] * c + areas[3] * c + sum(areas[:3]) * d

    # Sparse R-CNN stages on n proposals.
    r, e, pp = p.num_proposals, p.dynamic_dim, p.pooler_resolution**2
    stage = (r * d * 3 * d + 2 * r * r * d + r * d * d  # self-attention
             + r * d * 2 * d * e + 2 * r * pp * d * e + r * pp * d * d  # dynamic conv
             + 2 * r * d * p.loc_ffn_dim  # FFN
             + r * d * d * (p.num_cls_layers + p.num_reg_layers) + r * d * 6)  # cls / reg
    stage_other = 5 * (r * pp * e + r * pp * d + r * d) + 5 * 3 * r * d + 5 * r * d * (
        p.num_cls_layers + p.num_reg_layers)
    mm["localization"], other["localization"] = stage * p.loc_stages, stage_other * p.loc_stages

    # Context refinement decoder on the kept tokens plus the actors; every block has its head.
    m = counts[-1]
    n_act = r if num_actors is None else num_actors
    cd, a, L = p.decoder_dim, p.action_hidden, counts[-1] + n_act
    blk = (L * cd * 3 * cd + 2 * L * L * cd + L * cd * cd
           + 2 * L * cd * int(cd * p.decoder_mlp_ratio)
           + n_act * cd * a + n_act * a * p.num_classes)
    mm["decoder"] = m * c * cd + blk * p.decoder_depth
    other["decoder"] = (2 * 5 * L * cd + 5 * n_act * a) * p.decoder_depth

    out = {k: (mm[k] + other[k]) / 1e9 for k in mm}
    out["total"] = sum(out.values())
    out["matmul_total"] = sum(mm.values()) / 1e9
    return out


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="evad-flops",
        description="Analytic GFLOPs (fvcore multiply-add convention) of one EVAD clip.",
        epilog="examples:\n"
               "  evad-flops vit_b_ktp --height 288 --width 512\n"
               "  evad-flops --paper                  # the paper's table next to ours\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("preset", nargs="?", default="vit_b_ktp", choices=list(PRESETS))
    ap.add_argument("--height", type=number(32, 4096, integer=True), default=288,
                    help="input height in pixels, a multiple of 32 (default 288)")
    ap.add_argument("--width", type=number(32, 4096, integer=True), default=512,
                    help="input width, a multiple of 32 (default 512, as evad-export)")
    ap.add_argument("--keep-rate", type=number(0, 1, lo_open=True), default=None,
                    help="override the keep rate of every pruning block, e.g. 0.6")
    ap.add_argument("--paper", action="store_true",
                    help="print every configuration of the paper's table with its figure")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the rows as JSON (e.g. benchmarks/results/flops_paper.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``evad-flops``: print per-stage GFLOPs, and the paper's figures where they exist."""
    args = _parser().parse_args(argv)
    rows = []
    if args.paper:
        for (name, size, rate), ref in PAPER_GFLOPS.items():
            rows.append((name, size, size, rate, ref))
    else:
        rows.append((args.preset, args.height, args.width, args.keep_rate, None))
    head = (f"{'preset':<14}{'H x W':>9}{'keep':>6}  {'tokens (after each pruning)':<29}"
            f"{'encoder':>8}{'fpn':>6}{'loc':>6}{'decoder':>8}{'total':>8}{'paper':>8}{'diff':>8}")

    def body() -> int:
        for _, h, w, _, _ in rows:
            if h % 32 or w % 32:
                raise ConfigError(f"height and width must be multiples of 32, got {h}x{w}")
        if args.json is not None:
            check_output_file(args.json, "--json")
        table = []
        print(head)
        print("-" * len(head))
        for name, h, w, rate, ref in rows:
            f = flops(name, h, w, rate)
            p = get_preset(name)
            counts = token_counts(p, h, w, rate)
            path = [counts[0]] + [counts[b + 1] for b in sorted(_keeps(p, rate))]
            keep = rate if rate is not None else min(p.keep_rates.values(), default=1.0)
            ref_s = f"{ref:8.1f}{100 * (f['total'] - ref) / ref:+7.1f}%" if ref else ""
            print(f"{name:<14}{f'{h}x{w}':>9}{keep:>6.2f}  {' -> '.join(map(str, path)):<29}"
                  f"{f['encoder']:8.1f}{f['fpn']:6.1f}{f['localization']:6.1f}"
                  f"{f['decoder']:8.1f}{f['total']:8.1f}{ref_s}")
            table.append({"preset": name, "height": h, "width": w, "keep_rate": keep,
                          "tokens": path, "gflops": {k: round(v, 2) for k, v in f.items()},
                          "paper_gflops": ref})
        if args.json is not None:
            write_json_atomic(args.json, {"command": "evad-flops " + " ".join(
                argv if argv is not None else sys.argv[1:]), "convention": "fvcore multiply-adds",
                "rows": table})
        return 0

    return run_command("evad-flops", body)


if __name__ == "__main__":
    raise SystemExit(main())
