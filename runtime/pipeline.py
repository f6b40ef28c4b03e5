"""The detection loop: a decoding thread feeds clips through a bounded queue to the backend.

The ``ClipProducer`` thread decodes, resizes and assembles normalised clips; the calling thread
batches them, runs the backend, post-processes and writes. OpenCV decoding, ``cv2.resize`` and
onnxruntime / torch / TensorRT all release the GIL, so decoding overlaps inference. Memory stays
bounded whatever the video's length: the thread keeps only the resized frames that a pending
clip can still use (about ``num_frames * frame_stride`` of them) and the queue holds at most
one batch of clips (at least 2): enough for the thread to fill the next batch while the backend
runs this one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from evad.preprocess import Preprocessor
from evad.runner import Runner
from evad.runtime.detection import PersonRule, detect_clips
from evad.runtime.outputs import DetectionWriter
from evad.runtime.postprocess import Person
from evad.sampling import Keyframe, KeyframeSelector, clip_indices, clip_offsets
from evad.video import VideoInfo, iter_frames

__all__ = ["ClipProducer", "KeyframeTiming", "RunStats", "detect"]

_END = object()


@dataclass
class RunStats:
    """What a run did. Times in seconds (wall clock)."""

    keyframes: int = 0
    people: int = 0
    frames: int = 0
    wall_s: float = 0.0
    inference_s: float = 0.0  # inside backend.run, the calling thread
    producer_s: float = 0.0  # decode + resize + clip assembly, the producer thread
    producer_wait_s: float = 0.0  # producer blocked on a full queue
    batches: list[int] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        return self.keyframes / self.wall_s if self.wall_s > 0 else 0.0


class ClipProducer(threading.Thread):
    """Decode ``info`` and put ``(Keyframe, clip (3, T, H, W) float32)`` on ``self.queue`` in
    keyframe order, then a final sentinel; an exception is passed on through the queue.

    Args:
        info: the video (``open_video``).
        pre: the video's pre-processing.
        keyframe_stride_s: seconds between keyframes.
        num_frames, frame_stride: the clip (16 frames, every 4th).
        skip: keyframe indices not to produce (done in a resumed run).
        queue_clips: queue bound (clips).
        timed: record each keyframe's arrival and clip-ready times (``arrived``, ``ready``;
            the consumer pops them) for its latency.
    """

    def __init__(self, info: VideoInfo, pre: Preprocessor, keyframe_stride_s: float,
                 num_frames: int, frame_stride: int, skip: set[int] | None = None,
                 queue_clips: int = 4, timed: bool = False) -> None:
        super().__init__(name="evad-decode", daemon=True)
        self.info, self.pre = info, pre
        self.keyframe_stride_s = keyframe_stride_s
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.offsets = clip_offsets(num_frames, frame_stride)
        self.skip = skip or set()
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, queue_clips))
        self.stop_event = threading.Event()
        self.frames = 0
        self.busy_s = 0.0
        self.wait_s = 0.0
        # keyframe index -> perf_counter() when its frame arrived / when its clip was complete
        # (a live source's latency: what the clip waited for, then what inference took)
        self.arrived: dict[int, float] = {}
        self.ready: dict[int, float] = {}
        self.timed = timed

    def _put(self, item: object) -> None:
        t0 = time.perf_counter()
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        self.wait_s += time.perf_counter() - t0

    def _emit(self, kf: Keyframe, window: dict[int, np.ndarray], last: int) -> None:
        idx = clip_indices(kf.frame, self.num_frames, self.frame_stride, last + 1)
        if self.timed:
            self.ready[kf.index] = time.perf_counter()
        self._put((kf, self.pre.clip([window[j] for j in idx])))

    def run(self) -> None:
        t_start = time.perf_counter()
        try:
            selector = KeyframeSelector(self.keyframe_stride_s)
            window: dict[int, np.ndarray] = {}  # resized RGB frames a clip may still need
            pending: deque[Keyframe] = deque()
            low = 0  # every frame index below this is evicted
            i = -1
            previous = now = 0.0  # arrival of the frame before this one, and of this one
            base = None  # a live source's times are arrival times: perf_counter() - base
            for i, t, frame in iter_frames(self.info):
                if self.timed:
                    if self.info.is_live:
                        base = time.perf_counter() - t if base is None else base
                        previous, now = now, base + t
                    else:
                        previous, now = now, time.perf_counter()
                if self.stop_event.is_set():
                    return
                window[i] = self.pre.resize(frame)
                for kf in selector.push(i, t):
                    if kf.index not in self.skip:
                        pending.append(kf)
                        if self.timed:
                            self.arrived[kf.index] = now if kf.frame == i else previous
                while pending and pending[0].frame + self.offsets[-1] <= i:
                    self._emit(pending.popleft(), window, i)
                # The next keyframe's frame is at least i - 1 (the frame before the one that
                # settles it), so nothing before its first clip frame is needed again.
                need = (pending[0].frame if pending else i - 1) + self.offsets[0]
                while low < need:
                    window.pop(low, None)
                    low += 1
            self.frames = i + 1
            while pending:  # the end of the video: clamp to the last frame
                self._emit(pending.popleft(), window, i)
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(e)
        finally:
            self.busy_s = time.perf_counter() - t_start - self.wait_s

    def clips(self) -> Iterator[tuple[Keyframe, np.ndarray]]:
        """The produced clips, in order; re-raises the thread's exception."""
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Ask the thread to end and wait for it (unblocking a full queue)."""
        self.stop_event.set()
        while self.is_alive():
            try:
                while True:
                    self.queue.get_nowait()
            except queue.Empty:
                pass
            self.join(timeout=0.1)


@dataclass(frozen=True)
class KeyframeTiming:
    """How long one keyframe took from its frame's arrival to its detections on disk (seconds):
    ``clip_s`` waiting for the rest of its clip (on a live source the clip's later half:
    ``(num_frames / 2 - 1) * frame_stride`` frames), then ``queue_s`` before its batch ran,
    ``inference_s`` of its batch, ``write_s`` post-processing and the flushed write;
    ``latency_s`` is their sum."""

    latency_s: float
    clip_s: float
    queue_s: float
    inference_s: float

    @property
    def write_s(self) -> float:
        return max(self.latency_s - self.clip_s - self.queue_s - self.inference_s, 0.0)


def detect(info: VideoInfo, backend: Runner, pre: Preprocessor, writer: DetectionWriter, *,
           keyframe_stride_s: float = 1.0, batch_size: int = 1,
           rule: PersonRule | None = None,
           on_batch: Callable[[int], None] | None = None,
           on_keyframe: Callable[[Keyframe, list[Person], KeyframeTiming], None] | None = None
           ) -> RunStats:
    """Run the whole video through ``backend``, writing each batch with ``writer``.

    Args:
        info, backend, pre: the video, the model (any runner), and their pre-processing.
        writer: an opened ``DetectionWriter`` (its done keyframes are skipped).
        keyframe_stride_s: seconds between keyframes.
        batch_size: clips per backend call.
        rule: which proposals are people (default: the model's threshold, no fallback).
        on_batch: called with the number of keyframes after each batch (progress bar).
        on_keyframe: called for each keyframe once its detections are written, with its
            ``KeyframeTiming`` (a live source prints its latency).

    Returns:
        RunStats of the keyframes run now (resumed ones not counted).
    """
    spec = backend.spec
    rule = PersonRule.for_model(spec) if rule is None else rule
    stats = RunStats()
    producer = ClipProducer(info, pre, keyframe_stride_s, spec.num_frames, spec.frame_stride,
                            skip=writer.done, queue_clips=max(2, batch_size),
                            timed=on_keyframe is not None)
    t0 = time.perf_counter()
    producer.start()
    try:
        batch: list[tuple[Keyframe, np.ndarray]] = []

        def flush() -> None:
            t = time.perf_counter()
            found, t_infer = detect_clips(backend, np.stack([c for _, c in batch]),
                                          [pre] * len(batch), rule)
            stats.inference_s += t_infer
            items = [(kf, people) for (kf, _), people in zip(batch, found, strict=True)]
            stats.people += sum(len(people) for people in found)
            writer.write_batch(items)
            if on_keyframe is not None:
                written = time.perf_counter()
                for kf, people in items:
                    arrived = producer.arrived.pop(kf.index)
                    ready = producer.ready.pop(kf.index)
                    on_keyframe(kf, people, KeyframeTiming(
                        written - arrived, ready - arrived, max(t - ready, 0.0), t_infer))
            stats.keyframes += len(batch)
            stats.batches.append(len(batch))
            if on_batch is not None:
                on_batch(len(batch))
            batch.clear()

        for item in producer.clips():
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        producer.stop()
    stats.wall_s = time.perf_counter() - t0
    stats.frames = producer.frames
    stats.producer_s = producer.busy_s
    stats.producer_wait_s = producer.wait_s
    return stats
