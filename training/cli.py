"""``evad-train``: train a preset on AVA-format data; ``--make-data`` generates synthetic data."""

from __future__ import annotations

import argparse
import sys

from evad.errors import EvadError

__all__ = ["main"]

_EPILOG = """\
examples:
  evad-train --make-data data/train --videos 60 --seed 0        # synthetic videos + AVA CSV
  evad-train --data data/train --preset demo --out runs/demo --steps 3000
  evad-train --data data/train --preset demo --out runs/demo --steps 3000 --resume

Data layout: DIR/videos/<video id>.mp4, DIR/annotations.csv (AVA rows: video, seconds, x1, y1,
x2, y2 normalised, action id, person id). Checkpoints: OUT/last.pth in the released layout
(model_state + cfg), loadable by evad-export and evad.models.load_checkpoint.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="evad-train", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train EVAD with the released losses (Hungarian matching, deep "
        "supervision, action BCE).")
    ap.add_argument("--make-data", metavar="DIR", help="generate synthetic videos into DIR, exit")
    ap.add_argument("--videos", type=int, default=60, help="videos for --make-data (default 60)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per synthetic video")
    ap.add_argument("--data", help="training data folder")
    ap.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    ap.add_argument("--preset", default="demo", help="preset to train (default demo)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--resume", action="store_true", help="continue OUT/last.pth")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.make_data:
            from evad.datasets.synthetic import generate_dataset

            out = generate_dataset(args.make_data, args.videos, seed=args.seed,
                                   duration=args.duration, progress=not args.quiet)
            print(f"evad-train: wrote {args.videos} videos and annotations to {out}")
            return 0
        if not args.data:
            raise EvadError("pass --data DIR (or --make-data DIR to generate one)")
        from evad.training.trainer import TrainConfig, train

        cfg = TrainConfig(data=args.data, out=args.out, preset=args.preset, steps=args.steps,
                          batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed,
                          threads=args.threads,
                          checkpoint_every=args.checkpoint_every)
        path = train(cfg, resume=args.resume, progress=not args.quiet)
        print(f"evad-train: checkpoint {path}")
        return 0
    except EvadError as e:
        print(f"evad-train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
