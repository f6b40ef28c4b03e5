"""``evad-train``: train a preset on AVA-format data; ``--make-data`` generates synthetic data."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from evad.command import (
    ArgumentParser,
    check_input_file,
    check_output_dir,
    check_output_file,
    number,
    run_command,
)
from evad.datasets.ava import check_dataset
from evad.datasets.synthetic import generate_dataset
from evad.errors import CheckpointError, ConfigError
from evad.lazy import lazy_import

if TYPE_CHECKING:
    from evad.models import checkpoint
    from evad.training import trainer
else:
    # torch loads only after the cheap refusals (_check_inputs): a missing --data folder or an
    # unreadable checkpoint to resume is said in a fraction of a second, not after ~10 s of a
    # cold torch import
    checkpoint = lazy_import("evad.models.checkpoint", "pip install torch")
    trainer = lazy_import("evad.training.trainer", "pip install torch")

__all__ = ["main", "parser"]

_PROG = "evad-train"

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


def parser() -> ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train EVAD with the released losses (Hungarian matching, deep "
        "supervision, action BCE).")
    ap.add_argument("--make-data", metavar="DIR", help="generate synthetic videos into DIR, exit")
    ap.add_argument("--videos", type=number(1, integer=True), default=60,
                    help="videos for --make-data (default 60)")
    ap.add_argument("--duration", type=number(2, 3600), default=12.0,
                    help="seconds per synthetic video, 2 .. 3600 (keyframes are at whole "
                    "seconds 1 .. duration - 1; default 12)")
    ap.add_argument("--data", help="training data folder")
    ap.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    ap.add_argument("--preset", default="demo", help="preset to train (default demo)")
    ap.add_argument("--steps", type=number(1, integer=True), default=3000)
    ap.add_argument("--batch", type=number(1, integer=True), default=8)
    ap.add_argument("--lr", type=number(0, lo_open=True), default=3e-4,
                    help="peak AdamW learning rate")
    ap.add_argument("--warmup", type=number(0, integer=True), default=100,
                    help="linear warm-up steps")
    ap.add_argument("--seed", type=number(0, integer=True), default=0,
                    help="random seed (training: at most 2**32 - 1)")
    ap.add_argument("--threads", type=number(0, 1024, integer=True), default=0,
                    help="torch threads (0: default)")
    ap.add_argument("--checkpoint-every", type=number(1, integer=True), default=250)
    ap.add_argument("--proposal-init", choices=("grid", "image"), default="grid",
                    help="initial proposal boxes: a grid of tall boxes (default; trains faster "
                    "from scratch) or the whole image (the released initialisation)")
    ap.add_argument("--val", metavar="DIR",
                    help="AVA-format folder (other seeds than --data) scored with frame mAP "
                    "during training; results go to OUT/loss_log.jsonl")
    ap.add_argument("--val-every", type=number(1, integer=True), default=500,
                    help="steps between validations (default 500)")
    ap.add_argument("--resume", action="store_true",
                    help="continue OUT/last.pth (without one, start from step 0)")
    ap.add_argument("--half-weights", metavar="PATH",
                    help="after training, also write the weights as fp16 without optimizer "
                    "state (half the size; how models/weights/demo.pth is made)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(_PROG, lambda: _run(args, argv), interrupted=lambda: _interrupted(args))


def _interrupted(args: argparse.Namespace) -> str:
    if args.make_data:
        return (f"interrupted: {args.make_data} is incomplete (no annotations.csv is written "
                "until every video is); run --make-data again")
    last = Path(args.out) / "last.pth"
    if args.data and last.is_file():
        return f"interrupted; {last} holds the last checkpoint: rerun with --resume to continue"
    return "interrupted before the first checkpoint"


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.make_data:
        check_output_dir(args.make_data, "--make-data")
        out = generate_dataset(args.make_data, args.videos, seed=args.seed,
                               duration=args.duration, progress=not args.quiet)
        print(f"{_PROG}: wrote {args.videos} videos and annotations to {out}")
        return 0
    if not args.data:
        raise ConfigError("pass --data DIR (or --make-data DIR to generate one)")
    if args.half_weights:
        check_output_file(args.half_weights, "--half-weights")
        if Path(args.half_weights).resolve() == (Path(args.out) / "last.pth").resolve():
            raise ConfigError(f"--half-weights {args.half_weights} is the run's own checkpoint "
                              "OUT/last.pth: give another file name")

    _check_inputs(args)
    cfg = trainer.TrainConfig(data=args.data, out=args.out, preset=args.preset,
                              steps=args.steps, batch=args.batch, lr=args.lr,
                              warmup=args.warmup, seed=args.seed, threads=args.threads,
                              checkpoint_every=args.checkpoint_every, val_data=args.val,
                              proposal_init=args.proposal_init, val_every=args.val_every)
    # the trainer checks all again before writing
    path = trainer.train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"{_PROG}: checkpoint {path}")
    if args.half_weights:
        model, meta = checkpoint.load_checkpoint(path)
        command = shlex.join(["evad-train", *(sys.argv[1:] if argv is None else argv)])
        half = checkpoint.save_checkpoint(model, args.half_weights, epoch=meta["epoch"],
                                          half=True, extra={"train": command})
        print(f"{_PROG}: fp16 weights {half} ({half.stat().st_size / 1e6:.1f} MB)")
    return 0


def _check_inputs(args: argparse.Namespace) -> None:
    """What refuses a run without torch: the ``--out`` folder, each data folder (its
    annotations and videos) and, with ``--resume``, a readable ``OUT/last.pth``. The trainer
    checks the checkpoint's contents.

    Raises:
        EvadError: naming the folder or file, in the trainer's words.
        CheckpointError: ``OUT/last.pth`` unreadable or empty.
    """
    check_output_dir(args.out, "--out")
    for root, flag in ((args.data, "--data"), (args.val, "--val")):
        if root is not None:
            check_dataset(root, flag)
    last = Path(args.out) / "last.pth"
    if args.resume and last.exists() and not last.is_dir():  # a folder: the trainer says more
        check_input_file(last, "checkpoint", error=CheckpointError)


if __name__ == "__main__":
    raise SystemExit(main())
