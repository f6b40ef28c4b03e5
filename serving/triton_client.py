"""Asking a Triton server's ``evad`` model for detections, and a bounded load test.

Nothing here needs the rest of evad: it is what a client does with ``tritonclient`` alone (the
README shows the same calls), kept here so the tests and ``python -m evad.serving.triton_client``
use exactly that. It talks gRPC (``tritonclient.grpc``): the servers this project starts serve
gRPC only unless asked (tritonserver 2.51's HTTP/JSON front can be crashed by one request).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evad.lazy import lazy_import

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient
else:
    grpcclient = lazy_import("tritonclient.grpc", "pip install 'evad-deploy[triton]'")

__all__ = ["detect", "load_test"]

MODEL = "evad"


def detect(client: Any, *, video: bytes | None = None, frames: np.ndarray | None = None,
           model: str = MODEL, timeout_s: float | None = None,
           **parameters: Any) -> tuple[list[dict], list[str]]:
    """One request: (the keyframes' JSON objects, the AVA CSV rows).

    Args:
        client: a ``tritonclient.grpc.InferenceServerClient``.
        video: an encoded video file's bytes, or
        frames: one clip, (T, H, W, 3) uint8 BGR.
        timeout_s: give up waiting for the answer after this long (s); default never.
        parameters: request parameters (``video_id``, ``time``, ``keyframe_stride``,
            ``person_threshold``).

    Raises:
        tritonclient.utils.InferenceServerException: the server's error, one line (a bad
            request's ``status()`` is ``StatusCode.INVALID_ARGUMENT``, HTTP's 400).
    """
    if video is not None:
        arr = np.frombuffer(video, np.uint8)
        inp = grpcclient.InferInput("VIDEO", [arr.size], "UINT8")
    elif frames is not None:
        arr = np.ascontiguousarray(frames)
        inp = grpcclient.InferInput("FRAMES", list(arr.shape), "UINT8")
    else:
        raise ValueError("pass video= or frames=")
    inp.set_data_from_numpy(arr)
    outs = [grpcclient.InferRequestedOutput(n) for n in ("DETECTIONS", "AVA_CSV")]
    res = client.infer(model, [inp], outputs=outs, parameters=parameters or None,
                       client_timeout=timeout_s)
    lines = [json.loads(b) for b in res.as_numpy("DETECTIONS")]
    rows = [b.decode() for b in res.as_numpy("AVA_CSV")]
    return lines, rows


def load_test(url: str, clips: Sequence[np.ndarray], *, clients: int = 3,
              requests: int = 4, model: str = MODEL, timeout_s: float = 120.0
              ) -> dict[str, Any]:
    """``clients`` threads each send ``requests`` clip requests (cycling through ``clips``) to
    ``url`` (gRPC ``host:port``) and wait for every answer. Bounded: a fixed count, and each
    request's ``timeout_s``; it stops by itself.

    Returns:
        ``{requests, answered, errors, seconds, requests_per_s, latency_ms_p50, latency_ms_p95}``.
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            for i in range(requests):
                t = time.perf_counter()
                try:
                    lines, _ = detect(client, frames=clips[(k * requests + i) % len(clips)],
                                      model=model, timeout_s=timeout_s)
                    ok = len(lines) == 1
                except Exception as e:  # noqa: BLE001 - counted, reported
                    ok, lines = False, [str(e)]
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors.append(str(lines[0])[:200])
        finally:
            client.close()

    t0 = time.perf_counter()
    deadline = t0 + timeout_s * requests  # the whole test, whatever the client count
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(deadline - time.perf_counter(), 0.0))
    wall = time.perf_counter() - t0
    with lock:  # a thread still running past the deadline adds nothing to this report
        lat_s, errs = list(latencies), list(errors)
    unanswered = clients * requests - len(lat_s) - len(errs)
    if unanswered:
        errs.append(f"{unanswered} requests unanswered after {wall:.0f} s")
    lat = np.array(lat_s) * 1e3
    return {"clients": clients, "requests": clients * requests, "answered": len(lat_s),
            "errors": errs, "seconds": round(wall, 3),
            "requests_per_s": round(len(lat_s) / wall, 3) if wall > 0 else 0.0,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat.size else None}


def main(argv: list[str] | None = None) -> int:
    """``python -m evad.serving.triton_client --url 127.0.0.1:8001 --frames F H W``: a load
    test with random clips (the server's answers, not their content, are measured)."""
    ap = argparse.ArgumentParser(prog="python -m evad.serving.triton_client",
                                 description="Bounded load test of a Triton server's evad model "
                                 "(clip requests; prints throughput).")
    ap.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC host:port "
                    "(default 127.0.0.1:8001)")
    ap.add_argument("--frames", type=int, nargs=3, default=[16, 180, 320],
                    metavar=("T", "H", "W"), help="clip size (default 16 180 320)")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--requests", type=int, default=10, help="per client")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (*args.frames, 3), np.uint8) for _ in range(4)]
    report = load_test(args.url, clips, clients=args.clients, requests=args.requests)
    print(json.dumps(report))
    return 0 if report["answered"] == report["requests"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
