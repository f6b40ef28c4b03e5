"""``evad-tokens``: which tokens each pruning block kept, drawn over the clip's frames.

The paper's Figure 1 for your model and video: one PNG per keyframe, a row per pruning block,
a column per temporal slice; every keyframe token is kept, and on the other frames the tokens
that survive should be the actors' moving parts. Each line printed gives, per block, the share
of non-keyframe tokens kept and how much more the kept ones move than the dropped ones
(``runtime/tokens.py``). With no video or model it uses the demo assets, like evad-trt-run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from evad.atomic import write_bytes_atomic, write_json_atomic
from evad.command import (
    ArgumentParser,
    add_keyframe_stride,
    check_name,
    check_output_dir,
    check_output_file,
    number,
    run_command,
)
from evad.datasets.demo import demo_video
from evad.errors import ConfigError, EvadError
from evad.export.demo import demo_onnx
from evad.lazy import lazy_import
from evad.preprocess import Preprocessor
from evad.runner import backend_choices, kept_blocks, kept_idx_name
from evad.runtime.backends import open_runner
from evad.runtime.pipeline import ClipProducer
from evad.runtime.source import Source
from evad.runtime.tokens import (
    kept_masks,
    kept_share,
    motion_ratio,
    token_motion,
    token_strip,
)
from evad.sampling import expected_keyframes

cv2 = lazy_import("cv2", "pip install opencv-python-headless")

__all__ = ["main"]

_PROG = "evad-tokens"


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog=_PROG, description="Draw which tokens every pruning block of an EVAD model kept "
        "on a video's clips (keyframe tokens are always kept): one PNG per keyframe.",
        epilog="examples:\n  evad-tokens                                  # the demo model on "
        "the demo video\n  evad-tokens walk.mp4 --onnx m.onnx --time 3 --time 7 --out tok/\n\n"
        "Printed per block: the share of non-keyframe tokens kept and the motion ratio (mean "
        "frame difference of kept over dropped tokens; > 1: the block keeps what moves).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", type=Path, default=None,
                    help="video file or frame directory (default: the demo video)")
    ap.add_argument("--onnx", type=Path, help="ONNX model (default: the demo model)")
    ap.add_argument("--engine", type=Path, help="TensorRT engine")
    ap.add_argument("--ckpt", type=Path, help="checkpoint (torch backend)")
    ap.add_argument("--backend", choices=backend_choices(), default="auto")
    ap.add_argument("--time", type=number(0, lo_open=False), action="append", default=None,
                    help="keyframe time in seconds (repeatable; default: the middle keyframe)")
    add_keyframe_stride(ap)
    ap.add_argument("--fps", type=number(0, 10000, lo_open=True), default=None,
                    help="frame rate of a frame directory (default 30)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default runs/<video name>/tokens)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(_PROG, lambda: _tokens(args))


def _tokens(args: argparse.Namespace) -> int:
    video = args.video if args.video is not None else demo_video()
    info = Source.classify(str(video)).open(args.fps)
    out = args.out or Path("runs") / check_name(info.video_id, "video id") / "tokens"
    check_output_dir(out, "--out")
    if args.json is not None:
        check_output_file(args.json, "--json")
    onnx = args.onnx
    if args.onnx is None and args.engine is None and args.ckpt is None:
        onnx = demo_onnx()
    runner, _ = open_runner(args.backend, engine=args.engine, onnx=onnx, ckpt=args.ckpt)
    spec = runner.spec
    pre = Preprocessor.for_model(spec, (info.height, info.width))
    total = expected_keyframes(info.duration_s - 1.0 / info.fps, args.keyframe_stride)
    times = args.time or [(total // 2) * args.keyframe_stride]
    wanted = {round(t / args.keyframe_stride) for t in times}
    if max(wanted) >= total:
        raise ConfigError(f"--time {max(times):g} s is past the video's last keyframe "
                          f"({(total - 1) * args.keyframe_stride:g} s)")
    print(f"{_PROG}: model {spec.describe()}; input {pre.padded[0]}x{pre.padded[1]} (H x W)")
    producer = ClipProducer(info, pre, args.keyframe_stride, spec.num_frames, spec.frame_stride,
                            skip=set(range(total)) - wanted)
    producer.start()
    report = []
    try:
        for kf, clip in producer.clips():
            size = np.array([pre.resized], np.int64)
            result = runner(clip[None], size)
            blocks = kept_blocks(result)
            if not blocks:
                raise EvadError(f"{spec.name} prunes no tokens at this input size: nothing to "
                                "draw")
            _, _, height, width = clip.shape
            grid = (spec.num_frames // spec.tubelet_size, height // spec.patch_size,
                    width // spec.patch_size)
            masks = kept_masks({b: result[kept_idx_name(b)][0] for b in blocks}, grid)
            motion = token_motion(clip, grid, spec.patch_size, spec.tubelet_size, pre.resized)
            rows = [{"block": b, "kept_share": round(kept_share(masks[b]), 4),
                     "motion_ratio": round(motion_ratio(motion, masks[b]), 3)} for b in blocks]
            img = token_strip(clip, masks, spec.mean, spec.std, spec.patch_size,
                              spec.tubelet_size, pre.resized)
            ok, png = cv2.imencode(".png", img)
            if not ok:
                raise EvadError("OpenCV could not encode the PNG")
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"tokens_{kf.time_s:g}s.png"
            write_bytes_atomic(path, png.tobytes())
            report.append({"time": kf.time_s, "frame": kf.frame, "grid": list(grid),
                           "blocks": rows, "png": str(path)})
            print(f"{_PROG}: {kf.time_s:g} s: " + "; ".join(
                f"block {r['block']} keeps {100 * r['kept_share']:.0f}% of the non-keyframe "
                f"tokens, motion kept/dropped {r['motion_ratio']:.2f}" for r in rows)
                + f" -> {path}")
    finally:
        producer.stop()
        runner.close()  # what the backend holds (an engine's device memory)
    if args.json is not None:
        write_json_atomic(args.json, {"model": spec.describe(), "video": str(info.path),
                                      "keyframes": report})
        print(f"{_PROG}: figures -> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
