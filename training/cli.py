"""``evad-train``: train a preset on AVA-format data; ``--make-data`` generates synthetic data."""

from __future__ import annotations

import argparse
import shlex
import sys

from evad.datasets.synthetic import generate_dataset
from evad.errors import EvadError
from evad.models.checkpoint import load_checkpoint, save_checkpoint
from evad.training.trainer import TrainConfig, train

__all__ = ["main"]

_EPILOG = """\
examples:
  evad-train --make-data data/train --videos 60 --seed 0        # synthetic videos + AVA CSV
  evad-train --data data/train --preset demo --out runs/demo --steps 3000
  evad-train --data data/train --preset demo --out runs/demo --steps 3000 --resume
  # the demo model (README, "Demo model"): validation every 1000 steps, fp16 copy at the end
  evad-train --data data/train --val data/val --val-every 1000 --steps 14000 --batch 4 \\
      --lr 6e-4 --half-weights demo.pth

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
    ap.add_argument("--proposal-init", choices=("grid", "image"), default="grid",
                    help="initial proposal boxes: a grid of tall boxes (default; trains faster "
                    "from scratch) or the whole image (the released initialisation)")
    ap.add_argument("--val", metavar="DIR",
                    help="AVA-format folder (other seeds than --data) scored with frame mAP "
                    "during training; results go to OUT/loss_log.jsonl")
    ap.add_argument("--val-every", type=int, default=500,
                    help="steps between validations (default 500)")
    ap.add_argument("--resume", action="store_true", help="continue OUT/last.pth")
    ap.add_argument("--half-weights", metavar="PATH",
                    help="after training, also write the weights as fp16 without optimizer "
                    "state (half the size; how models/weights/demo.pth is made)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.make_data:

            out = generate_dataset(args.make_data, args.videos, seed=args.seed,
                                   duration=args.duration, progress=not args.quiet)
            print(f"evad-train: wrote {args.videos} videos and annotations to {out}")
            return 0
        if not args.data:
            raise EvadError("pass --data DIR (or --make-data DIR to generate one)")

        cfg = TrainConfig(data=args.data, out=args.out, preset=args.preset, steps=args.steps,
                          batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed,
                          threads=args.threads,
                          checkpoint_every=args.checkpoint_every, val_data=args.val,
                          proposal_init=args.proposal_init,
                          val_every=args.val_every)
        path = train(cfg, resume=args.resume, progress=not args.quiet)
        print(f"evad-train: checkpoint {path}")
        if args.half_weights:

            model, meta = load_checkpoint(path)
            command = shlex.join(["evad-train", *(sys.argv[1:] if argv is None else argv)])
            half = save_checkpoint(model, args.half_weights, epoch=meta["epoch"], half=True,
                                   extra={"train": command})
            print(f"evad-train: fp16 weights {half} ({half.stat().st_size / 1e6:.1f} MB)")
        return 0
    except EvadError as e:
        print(f"evad-train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
