"""``evad-triton-repo``: an export -> a Triton Inference Server model repository.

The repository holds the detector for Triton's ONNX Runtime backend (and TensorRT backend when
an engine is given) and the ``evad`` Python-backend model that answers a video or a clip with
detections (``evad.serving``). ``evad-export ... --triton DIR`` makes one at the end of an
export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evad.command import ArgumentParser, number, run_command
from evad.serving.triton_repo import DETECTOR_ONNX, DETECTOR_PLAN, VIDEO_MODEL, write_repository

__all__ = ["main"]

_EPILOG = f"""\
examples:
  evad-triton-repo --onnx exports/vitb_ktp.onnx --out triton_repo
  evad-triton-repo --onnx exports/vitb_ktp.onnx --engine exports/vitb_ktp.engine \\
      --plugins plugins/build/lib/libevad_plugins.so --out triton_repo
  sh triton_repo/launch.sh            # in NVIDIA's Triton container: serves on :8000 / :8001
  evad-serve triton_repo              # here: a local tritonserver on 127.0.0.1 (.ci/triton_env.sh)

Models: {DETECTOR_ONNX} (platform onnxruntime_onnx) and with --engine {DETECTOR_PLAN}
(tensorrt_plan, the plugin library beside it): inputs clip (B, 3, T, H, W) float32 and
image_size (B, 2) int64, outputs boxes, person_scores, action_probs; dynamic batching up to
--max-batch-size. {VIDEO_MODEL} (Python backend): VIDEO (an encoded video file's bytes) or
FRAMES (T, H, W, 3) uint8 BGR in, DETECTIONS (one JSON per keyframe, as detections.jsonl) and
AVA_CSV (as detections.csv) out. README, "Serving and batch jobs", has a client example.
"""


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="evad-triton-repo", description="Write a Triton Inference Server "
                        "model repository for an EVAD export.", epilog=_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True, help="ONNX model from evad-export")
    ap.add_argument("--engine", type=Path, help="TensorRT engine built from it (adds the "
                    "tensorrt_plan model)")
    ap.add_argument("--plugins", type=Path, help="the engine's plugin library "
                    "(libevad_plugins.so, from evad-build-plugins); needed with --engine")
    ap.add_argument("--out", type=Path, required=True, help="the repository folder (new)")
    ap.add_argument("--max-batch-size", type=number(1, 1024, integer=True), default=8,
                    help="largest batch (clips) Triton's dynamic batcher forms (default 8)")
    ap.add_argument("--cpu", action="store_true", help="detector instances on the CPU "
                    "(KIND_CPU) instead of the GPU")
    ap.add_argument("--python-backend", choices=["ort", "trt"], default="ort",
                    help=f"what the {VIDEO_MODEL} model runs in-process: ort (the ONNX, "
                    "default) or trt (the engine; TensorRT in the backend's Python)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        out = write_repository(args.out, args.onnx, engine=args.engine, plugins=args.plugins,
                               max_batch_size=args.max_batch_size, gpu=not args.cpu,
                               python_backend=args.python_backend, overwrite=args.overwrite)
        models = sorted(p.name for p in out.iterdir() if (p / "config.pbtxt").exists())
        print(f"evad-triton-repo: wrote {out} (models {', '.join(models)}); serve it with "
              f"evad-serve {out} (a local tritonserver), or sh {out / 'launch.sh'} in NVIDIA's "
              "Triton container")
        return 0

    return run_command("evad-triton-repo", body,
                       interrupted=lambda: "interrupted; nothing half-written was left")


if __name__ == "__main__":
    raise SystemExit(main())
