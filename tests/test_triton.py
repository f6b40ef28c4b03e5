"""The Triton model repository, served by NVIDIA's real ``tritonserver`` on loopback.

The server is the one in the ``nvidia-pytriton`` wheel (tritonserver 2.51, Python backend only)
in its own environment (``bash .ci/triton_env.sh``); the client is ``tritonclient`` in this
one. Its answers must equal ``evad-trt-run`` on the same video and clips; bad requests get an
error and the server goes on serving; a bounded load test gets every request answered.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import read_frames, require

from evad.runtime.cli import main as run_main
from evad.sampling import clip_indices
from evad.serving.triton_repo import VIDEO_LIMITS, write_repository
from evad.serving.triton_server import TritonServer

tritonclient = require("tritonclient.grpc", "triton")
model_config_pb2 = require("tritonclient.grpc.model_config_pb2", "triton")
from google.protobuf import text_format  # noqa: E402 - after the extra's check
from tritonclient.utils import InferenceServerException  # noqa: E402

from evad.serving.triton_client import detect, load_test  # noqa: E402

THRESHOLD = 0.05


def _parse(path) -> object:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_configs_parse_as_triton_model_config(tmp_path, tiny_onnx):
    from evad.engines.metadata import engine_metadata, sidecar_path
    from evad.metadata import read_metadata

    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"plan bytes")  # copied, never read: the config comes from the ONNX
    meta = read_metadata(tiny_onnx)
    sidecar_path(engine).write_text(json.dumps(engine_metadata(
        {"tensorrt": "10.13", "gpu": "test"}, "fp16", meta, "0" * 64, "cpp", (1, 4, 8))))
    plugins = tmp_path / "libevad_plugins.so"
    plugins.write_bytes(b"\x7fELF")
    repo = write_repository(tmp_path / "repo", tiny_onnx, engine=engine, plugins=plugins,
                            max_batch_size=16)
    onnx_cfg = _parse(repo / "evad_onnx" / "config.pbtxt")
    plan_cfg = _parse(repo / "evad_plan" / "config.pbtxt")
    py_cfg = _parse(repo / "evad" / "config.pbtxt")
    # the engine's profile (1, 4, 8) caps its model's batch; the ONNX takes any
    for cfg, platform, batch in ((onnx_cfg, "onnxruntime_onnx", 16),
                                 (plan_cfg, "tensorrt_plan", 8)):
        assert cfg.platform == platform and cfg.max_batch_size == batch
        assert cfg.HasField("dynamic_batching")
        assert list(cfg.dynamic_batching.preferred_batch_size) == [batch]
        ins = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims))
               for i in cfg.input}
        assert ins == {"clip": ("TYPE_FP32", [3, 16, 96, 192]),
                       "image_size": ("TYPE_INT64", [2])}
        outs = {o.name: list(o.dims) for o in cfg.output}
        assert outs["boxes"][1] == 4 and outs["action_probs"][0] == outs["person_scores"][0]
        assert json.loads(cfg.parameters["evad.input_size"].string_value) == [96, 192]
        assert cfg.parameters["evad.preset_name"].string_value == "tiny"
    assert py_cfg.backend == "python" and py_cfg.max_batch_size == 0
    assert {i.name: i.optional for i in py_cfg.input} == {"VIDEO": True, "FRAMES": True}
    assert list(py_cfg.input[1].dims) == [16, -1, -1, 3]
    # two instances: a long VIDEO request holds one, clips get the other (issue #28)
    assert [(g.count, g.kind) for g in py_cfg.instance_group] == [
        (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert {k: py_cfg.parameters[k].string_value for k in VIDEO_LIMITS} == {
        "max_video_seconds": "120.0", "max_video_frames": "3600", "max_video_width": "4096",
        "max_video_height": "4096"}
    assert (repo / "evad_onnx" / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (repo / "evad_plan" / "1" / "model.plan").read_bytes() == b"plan bytes"
    launch = (repo / "launch.sh").read_text()
    assert '--backend-config=tensorrt,plugins="$here/evad_plan/libevad_plugins.so"' in launch
    assert '--allow-http="$http"' in launch and '--metrics-address="$host"' in launch
    assert 'export EVAD_PLUGIN_LIB_DIR="$here/evad_plan"' in launch
    assert os.access(repo / "launch.sh", os.X_OK)
    # refusals leave nothing behind
    from evad.errors import EvadError

    with pytest.raises(EvadError, match="exists"):
        write_repository(repo, tiny_onnx)
    with pytest.raises(EvadError, match="needs its plugin library"):
        write_repository(tmp_path / "r2", tiny_onnx, engine=engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["repo", "tiny.engine", "tiny.engine.json", "libevad_plugins.so"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_onnx, server_env):
    repo = write_repository(tmp_path_factory.mktemp("triton") / "repo", tiny_onnx, gpu=False)
    with TritonServer(repo, models=["evad"]) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_mp4, tiny_onnx):
    """evad-trt-run on the sample video: what the server must answer."""
    out = tmp_path_factory.mktemp("ref") / "sample"
    assert run_main([str(sample_mp4), "--onnx", str(tiny_onnx), "--out", str(out),
                     "--person-threshold", str(THRESHOLD), "--quiet"]) == 0
    return out


def _client(server):
    return tritonclient.InferenceServerClient(server.grpc_url)


def test_video_request_equals_evad_trt_run(server, reference, sample_mp4):
    lines, rows = detect(_client(server), video=sample_mp4.read_bytes(), video_id="sample",
                         person_threshold=THRESHOLD)
    want = [json.loads(x) for x in (reference / "detections.jsonl").read_text().splitlines()]
    assert lines == want and sum(len(r["people"]) for r in want) > 0
    assert "".join(rows) == (reference / "detections.csv").read_text()


def test_clip_requests_equal_evad_trt_run(server, reference, sample_mp4):
    frames = read_frames(sample_mp4)
    want = [json.loads(x) for x in (reference / "detections.jsonl").read_text().splitlines()]
    client = _client(server)
    for rec in want[:3]:
        idx = clip_indices(rec["frame"], 16, 4, len(frames))
        clip = np.stack([frames[i] for i in idx])
        lines, rows = detect(client, frames=clip, time=rec["time"], video_id="sample",
                             person_threshold=THRESHOLD)
        assert lines == [{"time": rec["time"], "people": rec["people"]}]
        ref_rows = [r for r in (reference / "detections.csv").read_text().splitlines(True)
                    if r.split(",")[1] == str(rec["time"]).removesuffix(".0")]
        assert rows == ref_rows


def test_bad_requests_get_errors_and_serving_goes_on(server, sample_mp4):
    client = _client(server)
    good = np.zeros((16, 60, 80, 3), np.uint8)
    cases = {
        "wrong frame count": (dict(frames=good[:5]), "unexpected shape for input 'FRAMES'"),
        "empty video": (dict(video=b""), "VIDEO is empty"),
        "not a video": (dict(video=b"\x00" * 4096), "cannot open"),
        "unknown parameter": (dict(frames=good, color="red"),
                              "unknown request parameter 'color'"),
        "bad parameter": (dict(frames=good, person_threshold="high"), "is not a float"),
        "out of range": (dict(frames=good, person_threshold=1.5), "out of range"),
        "zero stride": (dict(video=sample_mp4.read_bytes(), keyframe_stride=0),
                        "out of range: 0 < keyframe_stride"),
        "csv-breaking id": (dict(frames=good, video_id="a,b"), "comma or quote"),
        "boolean": (dict(frames=good, time=True), "is not a float"),
        "tiny frames": (dict(frames=good[:, :1]), "too small"),
    }
    for kw, msg in cases.values():
        with pytest.raises(InferenceServerException, match=msg):
            detect(client, **kw)
    # wrong dtype and no input at all, below the helper
    inp = tritonclient.InferInput("FRAMES", list(good.shape), "FP32")
    inp.set_data_from_numpy(good.astype(np.float32))
    with pytest.raises(InferenceServerException, match="data-type is 'FP32'"):
        client.infer("evad", [inp])
    with pytest.raises(InferenceServerException, match="exactly one of VIDEO"):
        client.infer("evad", [])
    assert server.models_ready()
    lines, _ = detect(client, frames=good)
    assert lines[0]["time"] == 0.0 and isinstance(lines[0]["people"], list)


def test_untrusted_video_gets_400_naming_its_format_and_serving_goes_on(server, sample_mp4):
    """A playlist naming a file on the server's disk (issue #28): a bad request (gRPC
    INVALID_ARGUMENT, HTTP's 400), one line naming the format, the same whether the file exists
    or not; a parameter error is one too; then a good request is answered."""
    client = _client(server)

    def refusal(**kw) -> tuple[str | None, str]:
        with pytest.raises(InferenceServerException) as e:
            detect(client, **kw)
        return e.value.status(), e.value.message()

    def playlist(target) -> bytes:
        return (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:4.0,\n{target}\n"
                "#EXT-X-ENDLIST\n").encode()

    want = ("cannot open VIDEO: it is an HLS playlist (text), not a video container; send the "
            "bytes of an mp4/avi/mkv/webm/ts file")
    bad = "StatusCode.INVALID_ARGUMENT"
    assert refusal(video=playlist(sample_mp4)) == (bad, want)
    assert refusal(video=playlist(sample_mp4.with_name("missing.ts"))) == (bad, want)
    status, msg = refusal(video=f"ffconcat version 1.0\nfile {sample_mp4}\n".encode())
    assert status == bad and "an FFmpeg concat list (text)" in msg and "\n" not in msg
    assert refusal(frames=np.zeros((16, 60, 80, 3), np.uint8), color="red")[0] == bad
    assert server.models_ready()
    lines, rows = detect(client, video=sample_mp4.read_bytes(), video_id="sample",
                         person_threshold=THRESHOLD)
    assert [x["time"] for x in lines] == [0.0, 1.0, 2.0, 3.0] and rows


def test_bounded_load_test_answers_every_request(server, capsys):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (16, 90, 160, 3), np.uint8) for _ in range(3)]
    report = load_test(server.grpc_url, clips, clients=3, requests=4)
    with capsys.disabled():
        print(f"\ntriton load test (loopback, tiny model, CPU): {json.dumps(report)}")
    assert report["answered"] == report["requests"] == 12 and report["errors"] == []
    assert report["requests_per_s"] > 0 and report["latency_ms_p95"] >= report["latency_ms_p50"]


def test_launch_script_passes_options_not_the_folder(tmp_path, tiny_onnx):
    import subprocess

    repo = write_repository(tmp_path / "repo", tiny_onnx)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tritonserver").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "tritonserver").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    for args, folder in (([str(repo)], repo), ([str(repo), "--log-verbose=1"], repo),
                         (["--log-verbose=1"], repo), ([], repo)):
        out = subprocess.run(["sh", str(repo / "launch.sh"), *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        assert out[0] == f"--model-repository={folder.resolve()}", (args, out)
        assert ("--log-verbose=1" in out) == ("--log-verbose=1" in args)
        assert str(repo) not in out[1:]
