"""The ``evad`` model of a Triton repository: Triton's Python backend runs this class.

One request carries either ``VIDEO`` (the bytes of an encoded video file) or ``FRAMES`` (one
clip: the model's ``num_frames`` frames, uint8 (T, H, W, 3) BGR as OpenCV decodes them, every
``frame_stride``-th frame, the keyframe at index ``num_frames // 2``). For a video the answer
is ``DETECTIONS``, exactly the lines ``evad-trt-run`` writes to ``detections.jsonl`` (one JSON
object per keyframe), and ``AVA_CSV``, exactly its ``detections.csv`` rows; for a clip, one
object ``{"time", "people"}`` (the ``people`` of such a line) and that keyframe's rows. Pre-
and post-processing are the runtime's own, so a client needs no evad code. Request parameters
(Triton's ``parameters`` field) may set ``video_id``, ``time`` (a clip's keyframe time, s),
``keyframe_stride`` (s) and ``person_threshold``; the config's parameters set the rest.

A request that cannot be answered (no input, both inputs, a wrong frame count, a video that
does not decode) gets a ``TritonError`` with one line saying why; the model goes on serving.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.ava_csv import format_csv_row
from evad.command import KEYFRAME_STRIDE_S, one_line
from evad.errors import ConfigError, EvadError
from evad.lazy import lazy_import
from evad.preprocess import Preprocessor
from evad.runner import Runner, model_flag
from evad.runtime.backends import open_runner
from evad.runtime.detection import detect_clips
from evad.runtime.outputs import CSV_NAME, JSONL_NAME, csv_rows, people_records
from evad.runtime.video_run import DetectOptions, check_video_id, run_video
from evad.video import open_video

if TYPE_CHECKING:
    import triton_python_backend_utils as pb_utils
else:  # exists only inside Triton's Python-backend stub
    pb_utils = lazy_import("triton_python_backend_utils",
                           "run this module inside Triton's Python backend")

__all__ = ["ClipDetector", "TritonPythonModel"]

#: request parameters a client may set: type, and for numbers the allowed range (lo, hi]
#: or [lo, hi] as the CLI's options allow
REQUEST_PARAMETERS: dict[str, tuple[type, tuple[float, float, bool] | None]] = {
    "video_id": (str, None), "time": (float, (0.0, 1e9, False)),
    "keyframe_stride": (float, (*KEYFRAME_STRIDE_S, True)),  # as --keyframe-stride
    "person_threshold": (float, (0.0, 1.0, False))}


class ClipDetector:
    """The serving logic without Triton: a runner plus the runtime's pre/post-processing.

    Args:
        runner: any runner (the repository's detector, opened in-process).
        options: the detection options (keyframe stride, thresholds, CSV / JSONL settings).
    """

    def __init__(self, runner: Runner, options: DetectOptions) -> None:
        self.runner = runner
        self.options = options

    def _options(self, params: dict[str, Any]) -> DetectOptions:
        kw = {k: params[k] for k in ("keyframe_stride", "person_threshold") if k in params}
        return DetectOptions(**{**self.options.__dict__, **kw})

    def clip(self, frames: np.ndarray, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        """One clip's keyframe: (``[JSON]``, AVA rows). ``frames``: (T, H, W, 3) uint8 BGR."""
        spec = self.runner.spec
        if frames.ndim != 4 or frames.shape[0] != spec.num_frames or frames.shape[3] != 3:
            raise ConfigError(f"FRAMES must be ({spec.num_frames}, H, W, 3) uint8 BGR, the "
                              f"model's {spec.num_frames} frames every {spec.frame_stride} "
                              f"frames around the keyframe; got {tuple(frames.shape)}")
        if frames.shape[1] < 2 or frames.shape[2] < 2:
            raise ConfigError(f"FRAMES of {frames.shape[2]}x{frames.shape[1]} pixels are too "
                              "small")
        opts = self._options(params)
        pre = Preprocessor.for_model(spec, frames.shape[1:3])
        clip = pre.clip([pre.resize(f) for f in frames])[None]
        (people,), _ = detect_clips(self.runner, clip, [pre], opts.rule(spec))
        t = float(params.get("time", 0.0))
        record = {"time": t, "people": people_records(people, spec.labels,
                                                      opts.action_threshold, opts.top_k)}
        rows = [format_csv_row(r) for r in csv_rows(params.get("video_id", "clip"), t, people,
                                                    opts.csv_min_score)]
        return [json.dumps(record, allow_nan=False)], rows

    def video(self, data: bytes, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        """A whole encoded video: (its JSONL lines, its AVA rows), as ``evad-trt-run``."""
        if not data:
            raise ConfigError("VIDEO is empty: send the bytes of a video file")
        video_id = str(params.get("video_id", "video"))  # checked by _parameters
        with tempfile.TemporaryDirectory(prefix="evad-triton-") as tmp:
            path = Path(tmp) / "video.bin"
            path.write_bytes(data)
            info = open_video(path)
            out = Path(tmp) / "out"
            run_video(info, video_id, out, self.runner, self._options(params), quiet=True,
                      prog="evad-triton", bar_position=1)
            lines = (out / JSONL_NAME).read_text(encoding="utf-8").splitlines()
            rows = (out / CSV_NAME).read_text(encoding="utf-8").splitlines(keepends=True)
        return lines, rows


def _parameters(raw: str) -> dict[str, Any]:
    """A request's parameters, checked as the CLI checks its options.

    Raises:
        ConfigError: not JSON, an unknown name, a wrong type, a number out of range, a video id
            the CSV cannot hold.
    """
    try:
        params = json.loads(raw or "{}")
    except ValueError as e:
        raise ConfigError(f"request parameters are not JSON: {e}") from None
    out: dict[str, Any] = {}
    for k, v in params.items():
        if k not in REQUEST_PARAMETERS:
            raise ConfigError(f"unknown request parameter {k!r}; known: "
                              f"{', '.join(REQUEST_PARAMETERS)}")
        kind, limits = REQUEST_PARAMETERS[k]
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ConfigError(f"request parameter {k}={v!r} is not a float")
            try:
                x = float(v)
            except ValueError:
                raise ConfigError(f"request parameter {k}={v!r} is not a float") from None
            assert limits is not None
            lo, hi, lo_open = limits
            if not math.isfinite(x) or x > hi or x < lo or (lo_open and x == lo):
                raise ConfigError(f"request parameter {k}={v!r} is out of range: "
                                  f"{lo:g} {'<' if lo_open else '<='} {k} <= {hi:g}")
            out[k] = x
        else:
            if not isinstance(v, str):
                raise ConfigError(f"request parameter {k}={v!r} is not a string")
            out[k] = check_video_id(v, True) if k == "video_id" else v
    return out


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    detector: ClipDetector | None = None

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"]
        detector = (here / params["detector"]).resolve()
        kind = params.get("backend", "ort")
        # the detector is the model file the backend runs from (the backend table's column)
        flag = model_flag(kind)
        runner, _ = open_runner(kind, engine=detector if flag == "engine" else None,
                                onnx=detector if flag == "onnx" else None,
                                ckpt=detector if flag == "ckpt" else None)
        options = DetectOptions(
            keyframe_stride=float(params.get("keyframe_stride", 1.0)),
            action_threshold=float(params.get("action_threshold", 0.5)),
            top_k=int(params.get("top_k", 5)),
            csv_min_score=float(params.get("csv_min_score", 0.0)))
        self.detector = ClipDetector(runner, options)
        pb_utils.Logger.log_info(f"evad: serving {runner.spec.describe()} with {runner.name}")

    def _answer(self, request: Any) -> Any:
        video = pb_utils.get_input_tensor_by_name(request, "VIDEO")
        frames = pb_utils.get_input_tensor_by_name(request, "FRAMES")
        if (video is None) == (frames is None):
            raise ConfigError("send exactly one of VIDEO (a video file's bytes) and FRAMES "
                              "(one clip of frames)")
        params = _parameters(request.parameters())
        if video is not None:
            lines, rows = self.detector.video(video.as_numpy().tobytes(), params)
        else:
            lines, rows = self.detector.clip(frames.as_numpy(), params)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("DETECTIONS", np.array([s.encode() for s in lines], np.object_)),
            pb_utils.Tensor("AVA_CSV", np.array([r.encode() for r in rows], np.object_))])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except Exception as e:  # noqa: BLE001 - one request's failure, said to its client
                what = one_line(e) if isinstance(e, (EvadError, OSError)) else \
                    f"{type(e).__name__}: {one_line(e)[:300]}"
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(what)))
        return responses

    def finalize(self) -> None:
        """Triton unloads the model: free what the runner holds (an engine's device memory, an
        ONNX Runtime session)."""
        if self.detector is not None:
            self.detector.runner.close()
        self.detector = None
