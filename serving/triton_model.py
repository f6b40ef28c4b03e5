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

The server trusts nothing in a request:

- VIDEO must be the bytes of a video container: :func:`evad.video.sniff_container` reads its
  magic bytes (MP4/QuickTime ``ftyp``, AVI ``RIFF....AVI``, Matroska/WebM ``1A 45 DF A3``,
  MPEG-TS 0x47 every 188 bytes, MPEG-PS, FLV, Ogg, ASF/WMV) and anything else (text such as an
  HLS playlist or FFmpeg concat list, which FFmpeg would follow to files on the server's disk,
  an SDP, a URL, unknown bytes) is refused with one line naming what it is, before anything
  decodes; the message never depends on what such text names. The bytes are decoded from a
  file of a private temp folder (mode 0700, the file 0600). For that decode OpenCV's FFmpeg
  capture is also told ``protocol_whitelist;file|format_whitelist;<the sniffed demuxer>``
  (``OPENCV_FFMPEG_CAPTURE_OPTIONS``): OpenCV 5.x honours it (tested with 5.1: a playlist is
  then refused by FFmpeg too), OpenCV 4.11 (the Triton environment's, tested) ignores it, so the
  magic-byte allow-list is the defence that holds on every build.
- One request is bounded (:class:`VideoLimits`, the config's ``max_video_*`` parameters,
  defaults ``evad.serving.triton_repo.VIDEO_LIMITS``: 120 s, 3600 frames, 4096 x 4096 pixels):
  a VIDEO whose container announces more, or FRAMES larger than the size bound, is refused
  before any detection, and a VIDEO that decodes to more keyframes than its announced bound
  allows (a container that under-announces) is stopped when it passes it.
- A client's error (bad parameters, a wrong or missing input, a refused or undecodable VIDEO)
  is ``TritonError(..., TritonError.INVALID_ARG)``, which Triton answers with HTTP 400 (gRPC
  INVALID_ARGUMENT); anything else is a server fault, ``INTERNAL`` (HTTP 500). Either way the
  answer is one line and the model goes on serving.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.ava_csv import format_csv_row
from evad.command import KEYFRAME_STRIDE_S, one_line
from evad.errors import ConfigError, EvadError, VideoError
from evad.lazy import lazy_import
from evad.preprocess import Preprocessor
from evad.runner import ModelSpec, Runner, model_flag
from evad.runtime.backends import open_runner
from evad.runtime.detection import detect_clips
from evad.runtime.outputs import CSV_NAME, JSONL_NAME, csv_rows, people_records
from evad.runtime.video_run import DetectOptions, check_video_id, run_video
from evad.serving.triton_repo import VIDEO_LIMITS
from evad.video import VideoInfo, open_video, sniff_container

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only (the package runs on 3.10)

    import triton_python_backend_utils as pb_utils
else:  # exists only inside Triton's Python-backend stub
    pb_utils = lazy_import("triton_python_backend_utils",
                           "run this module inside Triton's Python backend")

__all__ = ["ClipDetector", "TritonPythonModel", "VideoLimits", "ffmpeg_allow_only"]

#: the environment variable OpenCV's FFmpeg capture reads its avformat options from
#: (``key;value|key;value``), at every open in OpenCV 5.x
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
#: what a refused VIDEO is told to send
_SEND = "send the bytes of an mp4/avi/mkv/webm/ts file"

#: request parameters a client may set: type, and for numbers the allowed range (lo, hi]
#: or [lo, hi] as the CLI's options allow
REQUEST_PARAMETERS: dict[str, tuple[type, tuple[float, float, bool] | None]] = {
    "video_id": (str, None), "time": (float, (0.0, 1e9, False)),
    "keyframe_stride": (float, (*KEYFRAME_STRIDE_S, True)),  # as --keyframe-stride
    "person_threshold": (float, (0.0, 1.0, False))}


@dataclass(frozen=True)
class VideoLimits:
    """The bounds of one request (the ``evad`` model config's ``max_video_*`` parameters).

    max_seconds: a VIDEO's duration, seconds (as its container announces it, and in
        keyframes as it decodes: ``max_seconds / keyframe_stride + 1`` at most).
    max_frames: a VIDEO's frame count as its container announces it.
    max_width, max_height: a VIDEO's or FRAMES' frame size, pixels.
    """

    max_seconds: float = float(VIDEO_LIMITS["max_video_seconds"])
    max_frames: int = int(VIDEO_LIMITS["max_video_frames"])
    max_width: int = int(VIDEO_LIMITS["max_video_width"])
    max_height: int = int(VIDEO_LIMITS["max_video_height"])

    @classmethod
    def from_config(cls, params: dict[str, str]) -> VideoLimits:
        """From the model config's string parameters (missing ones keep their defaults).

        Raises:
            ConfigError: a value that is not a positive finite number (named).
        """
        out: dict[str, Any] = {}
        for key, field_name, kind in (("max_video_seconds", "max_seconds", float),
                                      ("max_video_frames", "max_frames", int),
                                      ("max_video_width", "max_width", int),
                                      ("max_video_height", "max_height", int)):
            if key not in params:
                continue
            try:
                v = kind(params[key])
            except ValueError:
                v = -1
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"the evad model's config parameter {key} = "
                                  f"{params[key]!r} is not a positive {kind.__name__}")
            out[field_name] = v
        return cls(**out)

    def check_size(self, what: str, width: int, height: int) -> None:
        """Refuse frames larger than the bound: ``what`` (VIDEO / FRAMES) of width x height."""
        if width > self.max_width or height > self.max_height:
            raise ConfigError(f"{what} of {width}x{height} pixels is larger than this server "
                              f"takes, {self.max_width}x{self.max_height} (the evad model's "
                              "max_video_width / max_video_height)")

    def check_video(self, info: VideoInfo) -> None:
        """Refuse a VIDEO whose container announces more than the bounds, before detection."""
        self.check_size("VIDEO", info.width, info.height)
        if info.frame_count > self.max_frames:
            raise ConfigError(f"VIDEO has {info.frame_count} frames; this server takes at most "
                              f"{self.max_frames} (the evad model's max_video_frames)")
        if info.duration_s > self.max_seconds:
            raise ConfigError(f"VIDEO lasts {info.duration_s:.1f} s; this server takes at most "
                              f"{self.max_seconds:g} s (the evad model's max_video_seconds)")


@contextmanager
def ffmpeg_allow_only(demuxer: str) -> Iterator[None]:
    """While open, OpenCV's FFmpeg captures read the ``file`` protocol and ``demuxer`` only.

    Sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` to ``protocol_whitelist;file|format_whitelist;
    <demuxer>`` and restores what it was. OpenCV 5.x reads it at every open (tested with 5.1);
    OpenCV 4.11 ignores it (tested), so it is a second wall behind the magic-byte allow-list,
    not the first. The environment is the process's: one decode at a time (the Python
    backend runs one request at a time per model instance).

    Args:
        demuxer: FFmpeg demuxer name(s), comma separated (``mov``; ``evad.video.CONTAINERS``).
    """
    old = os.environ.get(FFMPEG_OPTIONS_ENV)
    os.environ[FFMPEG_OPTIONS_ENV] = f"protocol_whitelist;file|format_whitelist;{demuxer}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(FFMPEG_OPTIONS_ENV, None)
        else:
            os.environ[FFMPEG_OPTIONS_ENV] = old


class _KeyframeBudget:
    """The detector as one VIDEO request sees it: it refuses to run more than ``max_clips``
    keyframes, so a container announcing fewer frames than it holds is still bounded."""

    def __init__(self, runner: Runner, max_clips: int, max_seconds: float) -> None:
        self.runner, self.max_clips, self.max_seconds = runner, max_clips, max_seconds
        self.name, self.backend, self.precision = runner.name, runner.backend, runner.precision
        self.spec: ModelSpec = runner.spec
        self.metadata: dict[str, Any] = runner.metadata
        self.on_gpu = runner.on_gpu
        self.clips = 0

    def __call__(self, clip: np.ndarray, image_size: np.ndarray) -> dict[str, np.ndarray]:
        self.clips += len(clip)
        if self.clips > self.max_clips:
            raise ConfigError(f"VIDEO decodes to more than {self.max_clips} keyframes, longer "
                              f"than the {self.max_seconds:g} s this server takes (the evad "
                              "model's max_video_seconds), although its container announced "
                              "less")
        return self.runner(clip, image_size)

    def close(self) -> None:
        """Nothing: the detector outlives the request."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ClipDetector:
    """The serving logic without Triton: a runner plus the runtime's pre/post-processing.

    Args:
        runner: any runner (the repository's detector, opened in-process).
        options: the detection options (keyframe stride, thresholds, CSV / JSONL settings).
        limits: the bounds of one request (default :class:`VideoLimits`'s).
    """

    def __init__(self, runner: Runner, options: DetectOptions,
                 limits: VideoLimits | None = None) -> None:
        self.runner = runner
        self.options = options
        self.limits = VideoLimits() if limits is None else limits

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
        self.limits.check_size("FRAMES", frames.shape[2], frames.shape[1])
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
        """A whole encoded video: (its JSONL lines, its AVA rows), as ``evad-trt-run``.

        Raises:
            VideoError: the bytes are no allow-listed container (said before anything
                decodes), or do not decode; the temp file's path is never in the message.
            ConfigError: the video is larger or longer than :attr:`limits`.
        """
        if not data:
            raise ConfigError("VIDEO is empty: send the bytes of a video file")
        sniffed = sniff_container(data)
        if not sniffed.container:
            raise VideoError(f"cannot open VIDEO: it is {sniffed.seen}, not a video container; "
                             f"{_SEND}")
        video_id = str(params.get("video_id", "video"))  # checked by _parameters
        opts = self._options(params)
        # mkdtemp makes the folder 0700: no other user reads the bytes or swaps the file
        with tempfile.TemporaryDirectory(prefix="evad-triton-") as tmp, \
                ffmpeg_allow_only(sniffed.demuxer):
            path = Path(tmp) / "video.bin"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                info = open_video(path)
            except VideoError as e:  # the client knows its bytes as VIDEO, not our temp path
                raise VideoError(one_line(e).replace(str(path), "VIDEO")) from None
            self.limits.check_video(info)
            budget = _KeyframeBudget(self.runner, int(self.limits.max_seconds /
                                                      opts.keyframe_stride) + 1,
                                     self.limits.max_seconds)
            out = Path(tmp) / "out"
            run_video(info, video_id, out, budget, opts, quiet=True, prog="evad-triton",
                      bar_position=1)
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


#: what a client got wrong (parameters, inputs, a refused or undecodable VIDEO, a request over
#: the bounds): answered INVALID_ARG (HTTP 400); every other failure is the server's (500)
CLIENT_ERRORS = (ConfigError, VideoError)


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
        self.detector = ClipDetector(runner, options, VideoLimits.from_config(params))
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
                # the client's fault -> INVALID_ARG (HTTP 400); ours -> INTERNAL (HTTP 500)
                code = (pb_utils.TritonError.INVALID_ARG if isinstance(e, CLIENT_ERRORS)
                        else pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(what, code)))
        return responses

    def finalize(self) -> None:
        """Triton unloads the model: free what the runner holds (an engine's device memory, an
        ONNX Runtime session)."""
        if self.detector is not None:
            self.detector.runner.close()
        self.detector = None
