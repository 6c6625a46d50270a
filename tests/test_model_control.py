"""Triton's model control modes (`--model-control-mode none|poll|explicit`, `--load-model`), driven through
tritonclient's repository API; warm-up that never makes a valid model unservable; `max_queue_size` counted
as Triton counts it."""

import json
import shutil
import threading
import subprocess
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import KEEL_BIN, ROOT, Keel

TOKEN = "control-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case


def repository(dest):
    shutil.copytree(ROOT / "models/breast-cancer", dest / "breast-cancer")
    shutil.copytree(ROOT / "models/breast-cancer", dest / "other")
    (dest / "other/model.toml").write_text('backend = "tract"\n')
    return dest


def http_client(keel) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(keel.http)


def index(keel) -> dict[str, str]:
    rows = requests.post(f"http://{keel.http}/v2/repository/index", json={}, headers=AUTH, timeout=5).json()
    return {r["name"]: r.get("state", "") for r in rows if r.get("version") in (None, "", "1")}


def test_explicit_loads_only_the_named_models_then_what_the_api_loads(tmp_path):
    keel = Keel(repository(tmp_path), "--model-control-mode", "explicit", "--load-model", "breast-cancer",
                "--admin-token", TOKEN)
    try:
        client = http_client(keel)
        assert client.is_model_ready("breast-cancer")
        assert not client.is_model_ready("other")
        assert client.is_server_ready(), "ready means: every model Keel was asked to load is ready"
        grpc = grpcclient.InferenceServerClient(keel.grpc)
        grpc.load_model("other", headers=GRPC_AUTH)
        assert grpc.is_model_ready("other")
        client.unload_model("other", headers=AUTH)
        assert not client.is_model_ready("other")
        # Explicit mode never polls: a new version stays unloaded until the API loads the model again.
        shutil.copytree(tmp_path / "breast-cancer/2", tmp_path / "breast-cancer/3")
        time.sleep(1.5)
        assert not client.is_model_ready("breast-cancer", "3")
        client.load_model("breast-cancer", headers=AUTH)
        assert client.is_model_ready("breast-cancer", "3")
    finally:
        assert keel.stop() == 0


def test_explicit_with_star_loads_everything(tmp_path):
    keel = Keel(repository(tmp_path), "--model-control-mode", "explicit", "--load-model", "*")
    try:
        client = http_client(keel)
        assert client.is_model_ready("breast-cancer") and client.is_model_ready("other")
    finally:
        assert keel.stop() == 0


def test_none_loads_everything_once_and_refuses_control(tmp_path):
    keel = Keel(repository(tmp_path), "--model-control-mode", "none", "--repository-poll", "0.2",
                "--admin-token", TOKEN)
    try:
        client = http_client(keel)
        assert client.is_model_ready("breast-cancer") and client.is_model_ready("other")
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("other", headers=AUTH)
        assert "model-control-mode none" in str(refused.value)
        grpc = grpcclient.InferenceServerClient(keel.grpc)
        with pytest.raises(InferenceServerException) as refused:
            grpc.load_model("other", headers=GRPC_AUTH)
        assert "model-control-mode none" in str(refused.value)
        assert client.is_model_ready("other")
        # No polling either, whatever --repository-poll says.
        shutil.copytree(tmp_path / "breast-cancer/2", tmp_path / "breast-cancer/3")
        time.sleep(1.5)
        assert not client.is_model_ready("breast-cancer", "3")
    finally:
        assert keel.stop() == 0


@pytest.mark.parametrize("args, message", [
    (["--load-model", "breast-cancer"], "only valid with --model-control-mode explicit"),
    (["--model-control-mode", "explicit", "--load-model", "absent"], "--load-model absent"),
])
def test_bad_control_flags_stop_start_up(tmp_path, args, message):
    done = subprocess.run([KEEL_BIN, "serve", "--model-repository", str(repository(tmp_path)),
                           "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
                           "--metrics-addr", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr


def string_model(path):
    """Like Triton's simple_string: BYTES holding decimal numbers, cast to INT32, doubled, back to STRING."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["INPUT0"], ["n"], to=TensorProto.INT32),
         helper.make_node("Add", ["n", "n"], ["twice"]),
         helper.make_node("Cast", ["twice"], ["OUTPUT0"], to=TensorProto.STRING)],
        "simple_string",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_a_string_model_serves_although_synthetic_warm_up_data_is_made_up(tmp_path):
    string_model(tmp_path / "strings/1/model.onnx")
    (tmp_path / "strings/model.toml").write_text('backend = "onnxruntime"\n')
    keel = Keel(tmp_path)
    try:
        client = http_client(keel)
        assert client.is_model_ready("strings")
        x = np.array([[b"1", b"2", b"30", b"-4"]], dtype=object)
        inp = httpclient.InferInput("INPUT0", [1, 4], "BYTES")
        inp.set_data_from_numpy(x)
        out = client.infer("strings", [inp]).as_numpy("OUTPUT0")
        assert [v.decode() if isinstance(v, bytes) else v for v in out[0]] == ["2", "4", "60", "-8"]
    finally:
        assert keel.stop() == 0


def test_user_warm_up_data_must_work(tmp_path):
    string_model(tmp_path / "good/1/model.onnx")
    request = {"inputs": [{"name": "INPUT0", "shape": [2, 4], "datatype": "BYTES",
                           "data": ["1", "2", "3", "4", "5", "6", "7", "8"]}]}
    (tmp_path / "good/warmup.json").write_text(json.dumps(request))
    (tmp_path / "good/model.toml").write_text(
        'backend = "onnxruntime"\n[reload]\nwarmup_request = "warmup.json"\nwarmup_runs = 3\n')
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    request["inputs"][0]["data"][0] = "not a number"
    (tmp_path / "bad/warmup.json").write_text(json.dumps(request))
    keel = Keel(tmp_path, "--strict-readiness", "false", "--admin-token", TOKEN)
    try:
        client = http_client(keel)
        assert client.is_model_ready("good")
        assert not client.is_model_ready("bad")
        reason = [r for r in requests.post(f"http://{keel.http}/v2/repository/index", json={}, headers=AUTH,
                                           timeout=5).json() if r["name"] == "bad"]
        assert any("warmup.json" in (r.get("reason") or "") for r in reason), reason
    finally:
        assert keel.stop() == 0


def test_a_warm_up_file_outside_the_model_is_refused(tmp_path):
    string_model(tmp_path / "m/1/model.onnx")
    (tmp_path / "m/model.toml").write_text('[reload]\nwarmup_request = "../../etc/passwd"\n')
    done = subprocess.run([KEEL_BIN, "check", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "warmup_request" in done.stdout and "relative path" in done.stdout


def test_max_queue_size_counts_a_request_held_while_its_batch_forms(tmp_path):
    """One instance waits up to 1 s to fill a batch; the request it holds meanwhile fills a queue of one."""
    shutil.copytree(ROOT / "models/breast-cancer/1", tmp_path / "m/1")
    (tmp_path / "m/model.toml").write_text(
        "instances = 1\nmax_batch_size = 8\n[dynamic_batching]\nmax_queue_size = 1\nmax_queue_delay_us = 1000000\n")
    keel = Keel(tmp_path)
    try:
        url = f"http://{keel.http}/v2/models/m/infer"
        body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.5] * 30}]}
        first: list[requests.Response] = []
        held = threading.Thread(target=lambda: first.append(requests.post(url, json=body, timeout=30)))
        held.start()
        time.sleep(0.3)  # the instance has taken it and waits for more rows
        second = requests.post(url, json=body, timeout=30)
        assert second.status_code == 429, second.text
        assert "queue" in second.json()["error"]
        held.join()
        assert first[0].status_code == 200, first[0].text
        assert requests.post(url, json=body, timeout=30).status_code == 200, "the place is free again"
    finally:
        assert keel.stop() == 0


def test_config_pbtxt_model_warmup_runs_and_its_failure_fails_the_load(tmp_path):
    """Triton's model_warmup: zero, random and file data run at load; data the model refuses fails it."""
    import triton_repo

    inputs, outputs = triton_repo.two_in_two_out("TYPE_INT32")
    ok_data = np.arange(16, dtype=np.int32).tobytes()

    def warmup(name: str, input1: str) -> str:
        return (f'model_warmup [ {{ name: "{name}" batch_size: 2 count: 3\n'
                f'  inputs {{ key: "INPUT0" value: {{ data_type: TYPE_INT32 dims: [ 16 ] random_data: true }} }}\n'
                f'  inputs {{ key: "INPUT1" value: {{ data_type: TYPE_INT32 dims: [ 16 ] {input1} }} }} }} ]')

    for name, input1, data in [("zeros", "zero_data: true", None),
                               ("from_file", 'input_data_file: "in1"', ok_data * 2),
                               ("short_file", 'input_data_file: "in1"', ok_data)]:
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1/model.onnx").write_bytes(triton_repo.simple_model())
        (tmp_path / name / "config.pbtxt").write_text(
            triton_repo.config(name, 8, inputs, outputs, warmup("sample", input1)))
        if data is not None:
            (tmp_path / name / "warmup").mkdir()
            (tmp_path / name / "warmup/in1").write_bytes(data)
    keel = Keel(tmp_path, "--admin-token", TOKEN)
    try:
        client = http_client(keel)
        assert client.is_model_ready("zeros") and client.is_model_ready("from_file")
        assert not client.is_model_ready("short_file"), "a batch of 2 needs 128 bytes; the file has 64"
        rows = requests.post(f"http://{keel.http}/v2/repository/index", json={}, headers=AUTH, timeout=5).json()
        reason = " ".join(r.get("reason") or "" for r in rows if r["name"] == "short_file")
        assert "model_warmup 'sample'" in reason and "in1" in reason, rows
    finally:
        assert keel.stop() == 0
