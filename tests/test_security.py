"""Secure by default: TLS on HTTP and gRPC (real handshakes, mutual TLS, rotation), the API token on every
route and RPC, strict readiness, request ids, and an MLflow registry served over https."""

import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import KEEL_BIN, ROOT, Keel
from mlflow_server import MlflowServer
from pki import Pki

MODEL = "breast-cancer"
ROW = np.load(ROOT / "tests/data/breast_cancer.npy")[:1].astype(np.float32)
INFER_BODY = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW.ravel().tolist()}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "models" / MODEL, dest / MODEL)
    # A classifier's predictions wait for feedback, joined by request id.
    (dest / MODEL / "model.toml").write_text(
        'version_policy = "all"\n[monitor]\ntask = "classifier"\nprediction_output = "label"\npositive_label = 1\n')
    return dest


def grpc_input():
    inp = grpcclient.InferInput("input", [1, 30], "FP32")
    inp.set_data_from_numpy(ROW)
    return [inp]


# --- TLS in ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_keel(repo, pki, tmp_path_factory):
    cert, key = pki.issue("server")
    live = tmp_path_factory.mktemp("live-cert")
    shutil.copy(cert, live / "tls.crt")
    shutil.copy(key, live / "tls.key")
    server = Keel(repo, "--tls-cert", str(live / "tls.crt"), "--tls-key", str(live / "tls.key"),
                  "--tls-reload-interval", "0.2")
    server.cert_dir = live
    yield server
    assert server.stop() == 0


def test_https_with_a_ca_file_and_plain_text_refused(tls_keel, pki):
    url = f"https://{tls_keel.http}"
    assert requests.get(f"{url}/v2/health/live", verify=pki.ca, timeout=5).status_code == 200
    reply = requests.post(f"{url}/v2/models/{MODEL}/infer", json=INFER_BODY, verify=pki.ca, timeout=5)
    assert reply.status_code == 200, reply.text
    # Without the CA the certificate is not trusted; plain text gets no HTTP answer at all.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/v2/health/live", timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{tls_keel.http}/v2/health/live", timeout=5)


def test_tritonclient_grpc_with_ssl(tls_keel, pki):
    client = grpcclient.InferenceServerClient(tls_keel.grpc, ssl=True, root_certificates=str(pki.ca))
    assert client.is_server_live()
    result = client.infer(MODEL, grpc_input())
    assert result.as_numpy("label").shape == (1,)
    plain = grpcclient.InferenceServerClient(tls_keel.grpc)
    with pytest.raises(InferenceServerException):
        plain.is_server_live(client_timeout=5)


def served_certificate(addr: str) -> str:
    host, port = addr.rsplit(":", 1)
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port)))))


def normalized(pem_file: Path) -> str:
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(pem_file.read_text()))


def test_rotated_certificate_is_picked_up_without_restart(tls_keel, pki):
    before = served_certificate(tls_keel.http)
    assert before == normalized(tls_keel.cert_dir / "tls.crt")
    cert, key = pki.issue("server-rotated")
    # The key first: a half-done rotation keeps the old certificate serving instead of failing.
    shutil.copy(key, tls_keel.cert_dir / "tls.key")
    time.sleep(0.6)
    assert requests.get(f"https://{tls_keel.http}/v2/health/live", verify=pki.ca, timeout=5).ok
    shutil.copy(cert, tls_keel.cert_dir / "tls.crt")
    deadline = time.monotonic() + 10
    while served_certificate(tls_keel.http) != normalized(cert) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served_certificate(tls_keel.http) == normalized(cert)
    assert served_certificate(tls_keel.grpc) == normalized(cert)
    assert requests.get(f"https://{tls_keel.http}/v2/health/live", verify=pki.ca, timeout=5).ok
    metrics = requests.get(f"http://{tls_keel.metrics}/metrics", timeout=5).text
    assert re.search(r'keel_tls_reloads_total\{outcome="success"\} [1-9]', metrics), metrics
    assert re.search(r'keel_tls_reloads_total\{outcome="failure"\} [1-9]', metrics), metrics


def test_mutual_tls_refuses_clients_without_a_certificate(repo, pki):
    cert, key = pki.issue("server-mtls")
    client_cert, client_key = pki.issue("client", server=False)
    server = Keel(repo, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca))
    try:
        url = f"https://{server.http}/v2/health/live"
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=pki.ca, timeout=5)
        assert requests.get(url, verify=pki.ca, cert=(client_cert, client_key), timeout=5).status_code == 200
        without = grpcclient.InferenceServerClient(server.grpc, ssl=True, root_certificates=str(pki.ca))
        with pytest.raises(InferenceServerException):
            without.is_server_live(client_timeout=5)
        with_cert = grpcclient.InferenceServerClient(
            server.grpc, ssl=True, root_certificates=str(pki.ca), private_key=str(client_key),
            certificate_chain=str(client_cert))
        assert with_cert.is_server_live()
        assert with_cert.infer(MODEL, grpc_input()).as_numpy("label").shape == (1,)
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=5).text
        assert re.search(r"keel_tls_handshake_failures_total [1-9]", metrics), metrics
    finally:
        assert server.stop() == 0


def test_a_rotated_client_ca_is_picked_up_without_restart(repo, pki, tmp_path):
    cert, key = pki.issue("server-ca-rotation")
    old_client = pki.issue("client-old", server=False)
    other = Pki(tmp_path / "other-ca")
    new_client = other.issue("client-new", server=False)
    client_ca = tmp_path / "client-ca.pem"
    shutil.copy(pki.ca, client_ca)
    server = Keel(repo, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca),
                  "--tls-reload-interval", "0.2")
    url = f"https://{server.http}/v2/health/live"

    def accepted(client) -> bool:
        try:
            return requests.get(url, verify=pki.ca, cert=client, timeout=5).ok
        except requests.exceptions.ConnectionError:
            return False

    try:
        assert accepted(old_client) and not accepted(new_client)
        shutil.copy(other.ca, client_ca)
        deadline = time.monotonic() + 10
        while not accepted(new_client):
            assert time.monotonic() < deadline, "".join(server.log[-20:])
            time.sleep(0.1)
        assert not accepted(old_client)
    finally:
        assert server.stop() == 0


def test_a_bad_certificate_fails_start_naming_the_flag(repo, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    out = subprocess.run([KEEL_BIN, "serve", "--model-repository", str(repo), "--http-addr", "127.0.0.1:0",
                          "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
                          "--tls-cert", str(junk), "--tls-key", str(junk)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--tls-cert" in out.stderr, out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_cache_folder_of_another_user_stops_start_up(repo, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    os.chown(cache, 65534, 65534)
    out = subprocess.run([KEEL_BIN, "serve", "--model-repository", str(repo), "--http-addr", "127.0.0.1:0",
                          "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--cache-dir", str(cache)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--cache-dir" in out.stderr and "65534" in out.stderr, out.stderr
    # An own folder open to others is tightened to 0700 at start.
    os.chown(cache, 0, 0)
    cache.chmod(0o777)
    server = Keel(repo, "--cache-dir", str(cache))
    try:
        assert cache.stat().st_mode & 0o777 == 0o700
    finally:
        assert server.stop() == 0


# --- API token --------------------------------------------------------------------------------------------

TOKEN = "api-token-1"
ADMIN = "admin-token-1"

# (method, path, body, needs the API token)
ROUTES = [
    ("GET", "/v2/health/live", None, False),
    ("GET", "/v2/health/ready", None, False),
    ("GET", f"/v2/models/{MODEL}/ready", None, False),
    ("GET", f"/v2/models/{MODEL}/versions/1/ready", None, False),
    ("GET", "/v2", None, True),
    ("GET", f"/v2/models/{MODEL}", None, True),
    ("GET", f"/v2/models/{MODEL}/versions/1", None, True),
    ("GET", f"/v2/models/{MODEL}/config", None, True),
    ("GET", f"/v2/models/{MODEL}/versions/1/config", None, True),
    ("GET", "/v2/models/stats", None, True),
    ("GET", f"/v2/models/{MODEL}/stats", None, True),
    ("GET", f"/v2/models/{MODEL}/versions/1/stats", None, True),
    ("POST", f"/v2/models/{MODEL}/infer", INFER_BODY, True),
    ("POST", f"/v2/models/{MODEL}/versions/1/infer", INFER_BODY, True),
    ("POST", f"/v2/models/{MODEL}/feedback", {"feedback": [{"id": "x", "label": 1}]}, True),
    ("GET", f"/v2/models/{MODEL}/versions/1/drift", None, True),
]


@pytest.fixture(scope="module")
def token_keel(repo, tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "api").write_text(f"  {TOKEN}  \n")
    (secrets / "admin").write_text(f"{ADMIN}\n")
    server = Keel(repo, "--api-token-file", str(secrets / "api"), "--admin-token-file", str(secrets / "admin"))
    server.secrets = secrets
    yield server
    assert server.stop() == 0


def call(keel, method, path, body, headers=None):
    return requests.request(method, f"http://{keel.http}{path}", json=body, headers=headers or {}, timeout=10)


@pytest.mark.parametrize("method,path,body,guarded", ROUTES, ids=[r[1] for r in ROUTES])
def test_every_http_route_with_and_without_the_token(token_keel, method, path, body, guarded):
    anonymous = call(token_keel, method, path, body)
    if guarded:
        assert anonymous.status_code == 401, (path, anonymous.status_code, anonymous.text)
        assert "error" in anonymous.json()
        assert anonymous.headers.get("www-authenticate") == "Bearer"
        wrong = call(token_keel, method, path, body, {"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        assert TOKEN not in wrong.text
    else:
        assert anonymous.status_code == 200, (path, anonymous.status_code)
    # The scheme is case-insensitive; the token is trimmed like the file's.
    granted = call(token_keel, method, path, body, {"Authorization": f"bearer  {TOKEN} "})
    assert granted.status_code == 200, (path, granted.status_code, granted.text)


def test_admin_token_is_separate(token_keel):
    index = "/v2/repository/index"
    assert call(token_keel, "POST", index, {}, {"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert call(token_keel, "POST", index, {}, {"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert call(token_keel, "POST", index, {}).status_code == 401


def test_every_grpc_rpc_with_and_without_the_token(token_keel):
    client = grpcclient.InferenceServerClient(token_keel.grpc)
    granted = {"authorization": f"Bearer {TOKEN}"}
    # Health stays open for probes.
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    guarded = [
        lambda h: client.get_server_metadata(headers=h),
        lambda h: client.get_model_metadata(MODEL, headers=h),
        lambda h: client.get_model_config(MODEL, headers=h),
        lambda h: client.get_inference_statistics(MODEL, headers=h),
        lambda h: client.infer(MODEL, grpc_input(), headers=h),
    ]
    for rpc in guarded:
        for headers in (None, {"authorization": "Bearer nope"}):
            with pytest.raises(InferenceServerException) as refused:
                rpc(headers)
            assert "UNAUTHENTICATED" in str(refused.value.status()), refused.value
        rpc(granted)
    # ModelStreamInfer: the stream is refused before any request runs.
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        try:
            client.async_stream_infer(MODEL, grpc_input())
        except InferenceServerException:
            break  # the stream already ended with the error, which the callback got
        time.sleep(0.1)
    client.stop_stream()
    assert results and results[0][1] is not None and "UNAUTHENTICATED" in str(results[0][1]), results
    results.clear()
    client.start_stream(callback=lambda result, error: results.append((result, error)), headers=granted)
    client.async_stream_infer(MODEL, grpc_input())
    client.stop_stream()
    assert len(results) == 1 and results[0][1] is None, results
    # Repository control wants the admin token, not the API token.
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index(headers=granted)
    client.get_model_repository_index(headers={"authorization": f"Bearer {ADMIN}"})


def test_token_file_rotation_overlaps(token_keel):
    path = f"/v2/models/{MODEL}"
    api = token_keel.secrets / "api"
    api.write_text(f"{TOKEN}\napi-token-2\n")
    deadline = time.monotonic() + 10
    while call(token_keel, "GET", path, None, {"Authorization": "Bearer api-token-2"}).status_code != 200:
        assert time.monotonic() < deadline, "the new token was not picked up"
        time.sleep(0.2)
    assert call(token_keel, "GET", path, None, {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    api.write_text("api-token-2\n")
    deadline = time.monotonic() + 10
    while call(token_keel, "GET", path, None, {"Authorization": f"Bearer {TOKEN}"}).status_code != 401:
        assert time.monotonic() < deadline, "the old token was not retired"
        time.sleep(0.2)
    api.write_text(f"{TOKEN}\n")
    deadline = time.monotonic() + 10
    while call(token_keel, "GET", path, None, {"Authorization": f"Bearer {TOKEN}"}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


# --- Strict readiness -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("broken-repo")
    shutil.copytree(ROOT / "models" / MODEL, dest / MODEL)
    (dest / "broken" / "1").mkdir(parents=True)
    (dest / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    return dest


def health(keel) -> tuple[int, int, bool]:
    live = requests.get(f"http://{keel.http}/v2/health/live", timeout=5).status_code
    ready = requests.get(f"http://{keel.http}/v2/health/ready", timeout=5).status_code
    return live, ready, grpcclient.InferenceServerClient(keel.grpc).is_server_ready()


def test_a_broken_model_keeps_the_server_not_ready(broken_repo):
    server = Keel(broken_repo)
    try:
        assert health(server) == (200, 503, False)
        # The good model serves all the same.
        assert call(server, "POST", f"/v2/models/{MODEL}/infer", INFER_BODY).status_code == 200
        # Fixing the model makes the server ready; breaking it again makes it not ready.
        shutil.rmtree(broken_repo / "broken")
        wait_for_health(server, (200, 200, True))
        (broken_repo / "broken" / "1").mkdir(parents=True)
        (broken_repo / "broken" / "1" / "model.onnx").write_bytes(b"broken again")
        wait_for_health(server, (200, 503, False))
    finally:
        assert server.stop() == 0


def wait_for_health(server, expected, timeout=30):
    deadline = time.monotonic() + timeout
    while (got := health(server)) != expected:
        assert time.monotonic() < deadline, f"{got} != {expected}\n" + "".join(server.log[-20:])
        time.sleep(0.2)


def test_explicit_mode_is_ready_when_the_models_asked_for_are(broken_repo):
    """In explicit control mode only the models asked for count: a broken one beside them does not."""
    (broken_repo / "broken" / "1").mkdir(parents=True, exist_ok=True)
    (broken_repo / "broken" / "1" / "model.onnx").write_bytes(b"still not a model")
    server = Keel(broken_repo, "--model-control-mode", "explicit", "--load-model", MODEL)
    try:
        assert health(server) == (200, 200, True)
    finally:
        assert server.stop() == 0
    server = Keel(broken_repo, "--model-control-mode", "explicit", "--load-model", f"{MODEL},broken")
    try:
        assert health(server) == (200, 503, False)
    finally:
        assert server.stop() == 0


def test_load_errors_do_not_tell_clients_where_files_are(tmp_path):
    shutil.copytree(ROOT / "models" / MODEL, tmp_path / MODEL)
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.onnx").write_bytes(b"not a model")
    (tmp_path / "bad" / "model.toml").write_text("max_batch_size = [\n")
    server = Keel(tmp_path, "--strict-readiness", "false")
    try:
        for method, path, body in [("GET", "/v2/models/bad", None), ("POST", "/v2/models/bad/infer", INFER_BODY)]:
            reply = call(server, method, path, body)
            assert reply.status_code in (400, 404, 503), reply.text
            error = reply.json()["error"]
            assert "model.toml" in error and str(tmp_path) not in error, error
        # The operator still sees the full path in the log.
        assert any(str(tmp_path) in line for line in server.log)
    finally:
        assert server.stop() == 0


def test_without_strict_readiness_ready_means_up(broken_repo):
    (broken_repo / "broken" / "1").mkdir(parents=True, exist_ok=True)
    (broken_repo / "broken" / "1" / "model.onnx").write_bytes(b"still not a model")
    server = Keel(broken_repo, "--strict-readiness", "false")
    try:
        assert health(server) == (200, 200, True)
    finally:
        assert server.stop() == 0


class EarlyKeel(Keel):
    """Returns as soon as the listeners are up, before the models have loaded."""

    def _wait_for_addresses(self):
        for line in self.proc.stdout:
            self.log.append(line)
            match = re.search(r"http=(\S+) grpc=(\S+) metrics=(\S+)", line)
            if match:
                return match.group(1), match.group(2), match.group(3)
        raise RuntimeError("keel did not start:\n" + "".join(self.log))


def test_live_while_a_slow_model_loads(tmp_path):
    shutil.copytree(ROOT / "tests/models/slow-mlp", tmp_path / "slow-mlp")
    # Warm-up at batch 1024 through a 32-layer 512-wide MLP: seconds of loading.
    (tmp_path / "slow-mlp/model.toml").write_text(
        "max_batch_size = 1024\n[dynamic_batching]\npreferred_batch_sizes = [1024]\n[reload]\nwarmup_runs = 40\n")
    server = EarlyKeel(tmp_path)
    try:
        live, ready, grpc_ready = health(server)
        assert (live, ready, grpc_ready) == (200, 503, False), "".join(server.log)
        deadline = time.monotonic() + 120
        while health(server)[1] != 200:
            assert time.monotonic() < deadline, "".join(server.log[-20:])
            time.sleep(0.2)
    finally:
        assert server.stop() == 0


# --- Request ids ------------------------------------------------------------------------------------------

def test_request_ids_are_random_returned_and_honoured(repo):
    server = Keel(repo)
    try:
        url = f"http://{server.http}/v2/models/{MODEL}/infer"
        ids = set()
        for _ in range(3):
            reply = requests.post(url, json=INFER_BODY, timeout=5)
            rid = reply.json()["id"]
            assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
            assert reply.headers["x-request-id"] == rid
            ids.add(rid)
        assert len(ids) == 3
        reply = requests.post(url, json=INFER_BODY, headers={"x-request-id": "client-42"}, timeout=5)
        assert reply.json()["id"] == "client-42" and reply.headers["x-request-id"] == "client-42"
        # A refusal carries the client's id too.
        reply = requests.post(url, json={"inputs": []}, headers={"x-request-id": "client-43"}, timeout=5)
        assert reply.status_code == 400 and reply.headers["x-request-id"] == "client-43"
        # The body's id wins over the header, as the protocol's own field.
        reply = requests.post(url, json=dict(INFER_BODY, id="body-7"), headers={"x-request-id": "h"}, timeout=5)
        assert reply.json()["id"] == "body-7"
        # Feedback joins on the id the client never had to send.
        rid = requests.post(url, json=INFER_BODY, timeout=5).headers["x-request-id"]
        time.sleep(0.5)
        joined = requests.post(f"http://{server.http}/v2/models/{MODEL}/feedback",
                               json={"feedback": [{"id": rid, "label": 1}]}, timeout=5).json()
        assert joined["matched"] == 1, joined
        client = grpcclient.InferenceServerClient(server.grpc)
        result = client.infer(MODEL, grpc_input())
        assert re.fullmatch(r"[0-9a-f]{32}", result.get_response().id)
        result = client.infer(MODEL, grpc_input(), headers={"x-request-id": "grpc-9"})
        assert result.get_response().id == "grpc-9"
        # The id also comes back as response metadata, generated or honoured.
        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc
        request = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[ROW.tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 30])
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply, call = stub.ModelInfer.with_call(request, timeout=10)
            assert dict(call.initial_metadata())["x-request-id"] == reply.id
            assert re.fullmatch(r"[0-9a-f]{32}", reply.id)
            reply, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "grpc-10")], timeout=10)
            assert reply.id == "grpc-10" and dict(call.initial_metadata())["x-request-id"] == "grpc-10"
    finally:
        assert server.stop() == 0


def test_the_api_token_from_the_environment(repo, monkeypatch):
    monkeypatch.setenv("KEEL_API_TOKEN", "  from-the-environment \n")
    server = Keel(repo)
    try:
        path = f"/v2/models/{MODEL}/infer"
        assert call(server, "POST", path, INFER_BODY).status_code == 401
        assert call(server, "POST", path, INFER_BODY, {"Authorization": "BEARER from-the-environment"}).status_code == 200
    finally:
        assert server.stop() == 0


# --- MLflow over https ------------------------------------------------------------------------------------

def test_https_mlflow_drives_a_hot_swap(pki, tmp_path, monkeypatch):
    cert, key = pki.issue("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(pki.ca))
    mlflow = MlflowServer(tmp_path / "mlflow", tls=(cert, key, pki.ca))
    try:
        name = "breast-cancer-https"
        v1 = mlflow.register(name, {"model.onnx": (ROOT / "models/breast-cancer/1/model.onnx").read_bytes()})
        v2 = mlflow.register(name, {"model.onnx": (ROOT / "models/breast-cancer/2/model.onnx").read_bytes()})
        mlflow.set_alias(name, "champion", v1)
        repo = tmp_path / "repo"
        (repo / "m").mkdir(parents=True)
        (repo / "m/model.toml").write_text(
            f'[source.mlflow]\ntracking_uri = "{mlflow.uri}"\nname = "{name}"\nalias = "champion"\n'
            "poll_interval = 0.2\n")
        server = Keel(repo, "--repository-poll", "0.5", "--cache-dir", str(tmp_path / "cache"),
                      "--ca-bundle", str(pki.ca))
        try:
            def serving():
                reply = requests.get(f"http://{server.http}/v2/models/m", timeout=5)
                return reply.json().get("versions") if reply.ok else None

            assert serving() == [str(v1)], "".join(server.log)
            mlflow.set_alias(name, "champion", v2)
            deadline = time.monotonic() + 30
            while serving() != [str(v2)]:
                assert time.monotonic() < deadline, "".join(server.log[-20:])
                time.sleep(0.1)
        finally:
            assert server.stop() == 0
        # Without the CA bundle the registry's certificate is not trusted: the model is unavailable.
        untrusted = Keel(repo, "--cache-dir", str(tmp_path / "cache2"))
        try:
            reply = requests.get(f"http://{untrusted.http}/v2/models/m", timeout=5)
            assert reply.status_code == 503, reply.text
            assert "certificate" in "".join(untrusted.log).lower() or "tls" in "".join(untrusted.log).lower()
        finally:
            assert untrusted.stop() == 0
    finally:
        mlflow.stop()


def test_registry_credentials_over_plain_http_warn(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    # 0.0.0.0 is not loopback by its address, yet Linux connects it to this machine: nothing leaves it,
    # and port 9 refuses at once.
    (repo / "m/model.toml").write_text(
        '[source.mlflow]\ntracking_uri = "http://user:secret@0.0.0.0:9"\nname = "x"\nalias = "a"\n')
    server = Keel(repo, "--repository-poll", "0")
    try:
        log = "".join(server.log)
        assert "plain http" in log, log
        assert "secret" not in log, log
        reply = requests.get(f"http://{server.http}/v2/models/m", timeout=5)
        assert "secret" not in reply.text
    finally:
        assert server.stop() == 0


def test_credentials_from_the_environment_and_the_monitor_token_over_plain_http_warn(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m/model.toml").write_text(
        '[source.mlflow]\ntracking_uri = "http://0.0.0.0:9"\nname = "x"\nalias = "a"\n')
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "env-secret")
    server = Keel(repo, "--repository-poll", "0", "--monitor-endpoint", "http://0.0.0.0:9",
                  "--monitor-token", "monitor-secret")
    try:
        deadline = time.monotonic() + 10
        while sum("plain http" in line for line in server.log) < 2:
            assert time.monotonic() < deadline, "".join(server.log)
            time.sleep(0.1)
        log = "".join(server.log)
        assert "monitor token" in log and "MLflow" in log, log
        assert "env-secret" not in log and "monitor-secret" not in log, log
    finally:
        assert server.stop() == 0
