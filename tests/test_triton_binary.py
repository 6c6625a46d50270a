"""Triton drop-in details, with the real tritonclient over real sockets: raw binary requests
(`Inference-Header-Content-Length: 0`), BYTES elements holding NUL and non-UTF-8 bytes on both backends
over HTTP and gRPC, and compression both ways (HTTP gzip/deflate, 415 for other codings, a zip bomb
stopped at the body limit; gRPC gzip/deflate)."""

import gzip
import json
import shutil
import time
import zlib

import numpy as np
import onnx
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Keel, reference

LR2 = ROOT / "models/breast-cancer/2/model.onnx"
TOLERANCE = 1e-5
BODY_LIMIT = 1 << 20
RAW = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}


def identity(dest, name, elem_type, shape, backend):
    """A one-input Identity model `x` -> `y` on `backend`."""
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", elem_type, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (dest / name / "1").mkdir(parents=True)
    onnx.save(model, str(dest / name / "1/model.onnx"))
    (dest / name / "model.toml").write_text(f'backend = "{backend}"\n')


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A keel with one-input models for raw requests and a 1 MiB body limit for the zip bomb."""
    repo = tmp_path_factory.mktemp("binary-repo")
    shutil.copytree(ROOT / "models/breast-cancer", repo / "breast-cancer")
    shutil.copytree(ROOT / "tests/models/datatypes", repo / "datatypes")
    (repo / "datatypes/model.toml").write_text('backend = "onnxruntime"\n')
    for backend, suffix in [("onnxruntime", ""), ("tract", "-tract")]:
        identity(repo, f"text{suffix}", TensorProto.STRING, ["N", 1], backend)
    identity(repo, "rows", TensorProto.FLOAT, ["N", "M"], "tract")
    identity(repo, "grid", TensorProto.FLOAT, ["N", "H", "W"], "tract")
    identity(repo, "triple", TensorProto.STRING, ["N", 3], "tract")
    server = Keel(repo, "--max-body-bytes", str(BODY_LIMIT))
    yield server
    assert server.stop() == 0


def post_raw(server, model, body, **headers):
    return requests.post(f"http://{server.http}/v2/models/{model}/infer", data=body, headers={**RAW, **headers},
                         timeout=30)


def parse(response) -> httpclient.InferResult:
    """The response as tritonclient reads it."""
    length = response.headers.get("Inference-Header-Content-Length")
    return httpclient.InferResult.from_response_body(
        response.content, header_length=None if length is None else int(length))


# Raw binary requests.

def test_raw_fp32_request_returns_every_output_in_binary(small, features):
    x = features[:1]
    for path in ["breast-cancer", "breast-cancer/versions/1"]:
        response = post_raw(small, path, x.tobytes())
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        result = parse(response)
        head = result.get_response()
        assert [o["name"] for o in head["outputs"]] == ["label", "probabilities"]
        assert all("binary_data_size" in o["parameters"] for o in head["outputs"])
        assert head["outputs"][1]["shape"] == [1, 2]
        if path == "breast-cancer":
            want = reference(LR2, {"input": x})
            np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
            np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=0,
                                       atol=TOLERANCE)


@pytest.mark.parametrize("model,element", [
    ("text", "café, no NUL".encode()),
    ("text", b"\xff not UTF-8 \x00 with a NUL"),
    ("text-tract", "café\x00 with a NUL\x00".encode()),
])
def test_raw_bytes_request_is_one_whole_element(small, model, element):
    # The body is the element itself: Triton prepends the 4-byte length, the client does not.
    response = post_raw(small, model, element)
    assert response.status_code == 200, response.text
    result = parse(response)
    assert result.get_response()["outputs"][0]["shape"] == [1, 1]
    assert result.as_numpy("y").ravel().tolist() == [element]


def test_raw_request_sizes_the_one_variable_dimension(small):
    x = np.arange(5, dtype=np.float32)
    result = parse(post_raw(small, "rows", x.tobytes()))
    assert result.get_response()["outputs"][0]["shape"] == [1, 5]
    np.testing.assert_array_equal(result.as_numpy("y"), x.reshape(1, 5))
    response = post_raw(small, "rows", b"\0" * 7)
    assert response.status_code == 400
    assert "7 bytes is not a whole number" in response.json()["error"]


@pytest.mark.parametrize("model,body,needle", [
    ("breast-cancer", b"\0" * 118, "needs 120 bytes, got 118"),
    ("breast-cancer", b"", "needs 120 bytes, got 0"),
    ("datatypes", b"\0" * 12, "exactly one input; this model has 13"),
    ("grid", b"\0" * 16, "more than one variable dimension"),
    ("triple", b"abc", "one BYTES element, but input 'x' has shape [3]"),
])
def test_raw_requests_the_model_cannot_take_are_400(small, model, body, needle):
    response = post_raw(small, model, body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert needle in response.json()["error"]


# BYTES elements with NUL and non-UTF-8 bytes, on both backends and both protocols.

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES"]
NUL_STRINGS = [b"a\x00b", b"\x00", b"", b"trailing\x00", "é\x00ü".encode(), b"\x00\x00lead"]


def datatype_arrays(strings):
    arrays = {}
    for name in DATATYPES:
        if name == "BYTES":
            arrays[name] = np.array(strings, dtype=np.object_).reshape(2, 3)
        else:
            arrays[name] = np.zeros((2, 3), dtype=np.bool_ if name == "BOOL" else
                                    np.dtype(name.lower().replace("fp", "float")))
    return arrays


def infer_http(client, model, strings, binary):
    inputs = []
    for name, arr in datatype_arrays(strings).items():
        inp = httpclient.InferInput(f"in_{name.lower()}", list(arr.shape), name)
        inp.set_data_from_numpy(arr, binary_data=binary or name == "FP16")
        inputs.append(inp)
    return client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput("out_bytes", binary_data=True)])


def infer_grpc(client, model, strings):
    inputs = []
    for name, arr in datatype_arrays(strings).items():
        inp = grpcclient.InferInput(f"in_{name.lower()}", list(arr.shape), name)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("out_bytes")])


@pytest.fixture(scope="module")
def http(keel):
    with httpclient.InferenceServerClient(keel.http) as c:
        yield c


@pytest.fixture(scope="module")
def grpc(keel):
    c = grpcclient.InferenceServerClient(keel.grpc)
    yield c
    c.close()


# ONNX Runtime's string elements take any bytes (Keel fills and reads them by length): NUL and non-UTF-8
# round-trip. tract's strings are Rust Strings: any UTF-8, NUL included, and bytes that are not UTF-8 are the
# client's error, named by element, refused before the request joins a batch, never a 5xx.


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("model", ["datatypes", "datatypes-tract"])
def test_nul_bytes_over_http(http, model, binary):
    result = infer_http(http, model, NUL_STRINGS, binary)
    assert result.as_numpy("out_bytes").ravel().tolist() == NUL_STRINGS


@pytest.mark.parametrize("model", ["datatypes", "datatypes-tract"])
def test_nul_bytes_over_grpc(grpc, model):
    result = infer_grpc(grpc, model, NUL_STRINGS)
    assert result.as_numpy("out_bytes").ravel().tolist() == NUL_STRINGS


NOT_UTF8 = [b"ok", b"\xff\xfe bad", b"\x80", b"", b"\xc3", b"fine"]


def test_non_utf8_bytes_round_trip_on_onnxruntime(http, grpc):
    assert infer_http(http, "datatypes", NOT_UTF8, True).as_numpy("out_bytes").ravel().tolist() == NOT_UTF8
    assert infer_grpc(grpc, "datatypes", NOT_UTF8).as_numpy("out_bytes").ravel().tolist() == NOT_UTF8


def test_non_utf8_bytes_are_invalid_argument_on_tract(http, grpc):
    needle = "input 'in_bytes': BYTES element 1 is not UTF-8"
    with pytest.raises(InferenceServerException, match=needle) as err:
        infer_http(http, "datatypes-tract", NOT_UTF8, True)
    assert err.value.status() == "400"
    with pytest.raises(InferenceServerException, match=needle) as err:
        infer_grpc(grpc, "datatypes-tract", NOT_UTF8)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


# Compression.

def lr_inputs(module, x, binary=None):
    inp = module.InferInput("input", list(x.shape), "FP32")
    if binary is None:
        inp.set_data_from_numpy(x)
    else:
        inp.set_data_from_numpy(x, binary_data=binary)
    return [inp]


@pytest.mark.parametrize("request_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_alg", [None, "gzip", "deflate"])
def test_http_compression_both_ways(http, features, request_alg, response_alg):
    x = features[:20]
    want = reference(LR2, {"input": x})
    for binary in (False, True):
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        result = http.infer("breast-cancer", lr_inputs(httpclient, x, binary), outputs=outputs,
                            request_compression_algorithm=request_alg, response_compression_algorithm=response_alg)
        np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("coding,decompress", [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
def test_http_responses_are_compressed_when_asked(keel, features, coding, decompress):
    body = json.dumps({"inputs": [{"name": "input", "shape": [50, 30], "datatype": "FP32",
                                   "data": features[:50].ravel().tolist()}]}).encode()
    response = requests.post(f"http://{keel.http}/v2/models/breast-cancer/infer", data=body,
                             headers={"Accept-Encoding": coding}, stream=True, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding
    assert "accept-encoding" in response.headers["vary"].lower()
    raw = response.raw.read(decode_content=False)
    assert len(raw) < len(decompress(raw))
    assert len(json.loads(decompress(raw))["outputs"]) == 2
    # Errors stay plain JSON, whatever the client accepts.
    bad = requests.post(f"http://{keel.http}/v2/models/nope/infer", data=body, headers={"Accept-Encoding": coding},
                        stream=True, timeout=30)
    assert bad.status_code == 404 and "content-encoding" not in bad.headers
    assert "unknown model" in json.loads(bad.raw.read(decode_content=False))["error"]


def test_unknown_content_encoding_is_415(keel):
    response = requests.post(f"http://{keel.http}/v2/models/breast-cancer/infer", data=b"\x1b\x00",
                             headers={"Content-Encoding": "br"}, timeout=30)
    assert response.status_code == 415
    assert "unsupported Content-Encoding 'br'" in response.json()["error"]
    assert response.headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_corrupt_compressed_body_is_400(keel, coding):
    response = requests.post(f"http://{keel.http}/v2/models/breast-cancer/infer", data=b"not compressed at all",
                             headers={"Content-Encoding": coding}, timeout=30)
    assert response.status_code == 400
    assert f"not valid {coding} data" in response.json()["error"]


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_zip_bomb_stops_at_the_body_limit(small):
    # 64 MiB of zeros in ~64 KiB of gzip: 64 times the 1 MiB body limit once inflated.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(64)) + packer.flush()
    assert len(bomb) < BODY_LIMIT // 8
    before = peak_rss_kib(small.proc.pid)
    start = time.monotonic()
    response = requests.post(f"http://{small.http}/v2/models/breast-cancer/infer", data=bomb,
                             headers={"Content-Encoding": "gzip"}, timeout=30)
    elapsed = time.monotonic() - start
    assert response.status_code == 413, response.text
    assert f"inflates past the {BODY_LIMIT}-byte limit" in response.json()["error"]
    assert elapsed < 5
    # Inflating it all would have taken 64 MiB; stopping at the limit takes a few.
    assert peak_rss_kib(small.proc.pid) - before < 24 * 1024
    # A compressed body that fits once inflated is served.
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                   "data": [0.5] * 30}]}).encode()
    ok = requests.post(f"http://{small.http}/v2/models/breast-cancer/infer", data=gzip.compress(body),
                       headers={"Content-Encoding": "gzip"}, timeout=30)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression(grpc, features, algorithm):
    x = features[:20]
    want = reference(LR2, {"input": x})
    outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probabilities")]
    result = grpc.infer("breast-cancer", lr_inputs(grpcclient, x), outputs=outputs,
                        compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=0, atol=TOLERANCE)
