"""The gRPC front end with the real tritonclient.grpc: metadata, inference, async and streaming inference,
statistics, and repository control with its admin token."""

import queue
import threading

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ADMIN_TOKEN, ROOT, Keel, build_repository, reference

LR2 = ROOT / "models/breast-cancer/2/model.onnx"
TOLERANCE = 1e-5
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def client(keel):
    c = grpcclient.InferenceServerClient(keel.grpc)
    yield c
    c.close()


def make_inputs(x):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def test_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "keel"
    assert {"binary_tensor_data", "model_configuration", "model_repository", "statistics"} <= set(meta["extensions"])
    model = client.get_model_metadata("breast-cancer", as_json=True)
    assert model["versions"] == ["1", "2"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "30"]}]
    config = client.get_model_config("breast-cancer", as_json=True)["config"]
    assert config["max_batch_size"] > 0
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["30"]}]
    assert config["output"][1]["dims"] == ["2"]
    assert client.is_model_ready("breast-cancer", "2")
    assert not client.is_model_ready("breast-cancer", "5")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_infer_raw_contents_matches_onnxruntime(client, features, rows, compression):
    x = features[:rows]
    outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probabilities")]
    result = client.infer("breast-cancer", make_inputs(x), outputs=outputs, request_id="g-1",
                          compression_algorithm=compression)
    want = reference(LR2, {"input": x})
    response = result.get_response(as_json=True)
    assert response["model_version"] == "2" and response["id"] == "g-1"
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=0, atol=TOLERANCE)


def test_requested_output_subset(client, features):
    result = client.infer("breast-cancer", make_inputs(features[:4]),
                          outputs=[grpcclient.InferRequestedOutput("probabilities")])
    assert [o["name"] for o in result.get_response(as_json=True)["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None


def test_async_infer_50_concurrent(client, features):
    done = queue.Queue()
    for i in range(50):
        x = features[i : i + 1 + i % 5]
        client.async_infer("breast-cancer", make_inputs(x), request_id=str(i),
                           callback=lambda result, error, i=i: done.put((i, result, error)))
    results = [done.get(timeout=30) for _ in range(50)]
    assert sorted(i for i, _, _ in results) == list(range(50))
    for i, result, error in results:
        assert error is None, error
        x = features[i : i + 1 + i % 5]
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference(LR2, {"input": x})["probabilities"],
                                   rtol=0, atol=TOLERANCE)


def test_stream_of_100_with_bad_requests_survives(keel, features):
    client = grpcclient.InferenceServerClient(keel.grpc)
    done = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put((result, error)))
    bad = set(range(5, 100, 10))
    for i in range(100):
        if i in bad:
            inp = grpcclient.InferInput("input", [1, 29], "FP32")  # wrong shape for the model
            inp.set_data_from_numpy(features[i : i + 1, :29])
            client.async_stream_infer("breast-cancer", [inp], request_id=str(i))
        else:
            client.async_stream_infer("breast-cancer", make_inputs(features[i : i + 2]), request_id=str(i))
    got = [done.get(timeout=30) for _ in range(100)]
    client.stop_stream()
    client.close()
    errors = [e for _, e in got if e is not None]
    oks = [r for r, e in got if e is None]
    assert len(errors) == len(bad)
    assert all("expects [-1, 30]" in str(e) for e in errors)
    assert len(oks) == 100 - len(bad)
    for r in oks:
        i = int(r.get_response().id)
        np.testing.assert_array_equal(r.as_numpy("label"), reference(LR2, {"input": features[i : i + 2]})["label"])


def stats_of(client, model, version):
    return client.get_inference_statistics(model, version, as_json=True)["model_stats"][0]


def test_statistics_add_up(client, keel, features):
    before = stats_of(client, "breast-cancer", "1")
    for rows in (1, 3, 5):
        client.infer("breast-cancer", make_inputs(features[:rows]), model_version="1")
    bad = grpcclient.InferInput("input", [1, 29], "FP32")
    bad.set_data_from_numpy(features[:1, :29])
    with pytest.raises(InferenceServerException):
        client.infer("breast-cancer", [bad], model_version="1")
    after = stats_of(client, "breast-cancer", "1")

    def delta(*path):
        a, b = after, before
        for key in path:
            a, b = a.get(key, {}), b.get(key, {})
        return int(a or 0) - int(b or 0)

    assert delta("inference_count") == 9
    assert delta("execution_count") == 3
    assert delta("inference_stats", "success", "count") == 3
    assert delta("inference_stats", "fail", "count") == 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta("inference_stats", phase, "count") == 3, phase
        assert delta("inference_stats", phase, "ns") >= 0, phase
    assert delta("inference_stats", "success", "ns") > delta("inference_stats", "compute_infer", "ns")
    assert int(after["last_inference"]) > 0
    # HTTP reads the same counters.
    http = requests.get(f"http://{keel.http}/v2/models/breast-cancer/versions/1/stats").json()
    assert int(http["model_stats"][0]["inference_count"]) == int(after["inference_count"])


def test_repository_control_needs_the_token(client, keel):
    for call in (lambda h: client.get_model_repository_index(headers=h),
                 lambda h: client.load_model("datatypes-tract", headers=h),
                 lambda h: client.unload_model("datatypes-tract", headers=h)):
        with pytest.raises(InferenceServerException) as err:
            call(None)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as err:
            call({"authorization": "Bearer wrong"})
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    for path in ("/v2/repository/index", "/v2/repository/models/datatypes-tract/unload"):
        assert requests.post(f"http://{keel.http}{path}").status_code == 401
        assert requests.post(f"http://{keel.http}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_repository_index_load_unload(client, keel):
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    rows = {(m["name"], m.get("version", "")): m for m in index}
    assert rows[("breast-cancer", "2")]["state"] == "READY"
    assert rows[("datatypes-tract", "1")]["state"] == "READY"

    client.unload_model("datatypes-tract", headers=AUTH)
    assert not client.is_model_ready("datatypes-tract")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("datatypes-tract")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert {"name": "datatypes-tract", "state": "UNAVAILABLE", "reason": "unloaded"} in index

    client.load_model("datatypes-tract", headers=AUTH)
    assert client.is_model_ready("datatypes-tract")
    ready_only = requests.post(f"http://{keel.http}/v2/repository/index", json={"ready": True},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert all(m["state"] == "READY" for m in ready_only)
    assert any(m["name"] == "datatypes-tract" for m in ready_only)

    # The same over HTTP.
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert requests.post(f"http://{keel.http}/v2/repository/models/datatypes-tract/unload", headers=h).status_code == 200
    assert requests.get(f"http://{keel.http}/v2/models/datatypes-tract/ready").status_code == 404
    assert requests.post(f"http://{keel.http}/v2/repository/models/datatypes-tract/load", headers=h).status_code == 200
    assert requests.get(f"http://{keel.http}/v2/models/datatypes-tract/ready").status_code == 200
    r = requests.post(f"http://{keel.http}/v2/repository/models/no-such-model/load", headers=h)
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]
    r = requests.post(f"http://{keel.http}/v2/repository/models/..%2Fetc/load", headers=h)
    assert r.status_code == 400


def test_repository_control_is_disabled_without_a_token(tmp_path, features):
    server = Keel(build_repository(tmp_path / "repo"))
    try:
        c = grpcclient.InferenceServerClient(server.grpc)
        with pytest.raises(InferenceServerException) as err:
            c.get_model_repository_index(headers=AUTH)
        assert err.value.status() == "StatusCode.PERMISSION_DENIED"
        r = requests.post(f"http://{server.http}/v2/repository/index", headers={"Authorization": "Bearer x"})
        assert r.status_code == 403 and "--admin-token" in r.json()["error"]
        c.close()
    finally:
        assert server.stop() == 0


def test_unload_lets_in_flight_requests_finish(keel, features):
    """Requests racing an unload either complete normally or are told the model is gone (404): none fail
    midway, and the model comes back on load."""
    c = grpcclient.InferenceServerClient(keel.grpc)
    outcomes = queue.Queue()
    x = features[:64]

    def fire():
        for _ in range(40):
            try:
                r = c.infer("breast-cancer-tract", make_inputs(x))
                outcomes.put(("ok", r.as_numpy("label").shape))
            except InferenceServerException as e:
                outcomes.put(("err", e.status()))

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    c.unload_model("breast-cancer-tract", headers=AUTH)
    for t in threads:
        t.join()
    c.load_model("breast-cancer-tract", headers=AUTH)
    assert c.is_model_ready("breast-cancer-tract")
    results = [outcomes.get() for _ in range(160)]
    assert all(r == ("ok", (64,)) or r == ("err", "StatusCode.NOT_FOUND") for r in results), set(results)
    c.close()
