"""KServe V2 REST compatibility, checked with the real tritonclient HTTP client against a real keel."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, reference

LR = {1: ROOT / "models/breast-cancer/1/model.onnx", 2: ROOT / "models/breast-cancer/2/model.onnx"}
GBT = ROOT / "models/breast-cancer-gbt/1/model.onnx"
DATATYPES = ROOT / "tests/models/datatypes/1/model.onnx"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def client(keel):
    with httpclient.InferenceServerClient(keel.http) as c:
        yield c


def test_server_and_model_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "keel" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("breast-cancer")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    assert client.is_model_ready("breast-cancer", "1")
    assert not client.is_model_ready("breast-cancer", "7")
    config = client.get_model_config("breast-cancer")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] > 0
    assert config["input"][0]["dims"] == [30] and config["input"][0]["data_type"] == "TYPE_FP32"


def run(client, model, x, binary_in, binary_out, outputs=("label", "probabilities"), version=""):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in outputs]
    return client.infer(model, [inp], model_version=version, outputs=requested, request_id="compat-1")


@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("binary_in,binary_out", [(False, False), (True, True), (False, True), (True, False)])
@pytest.mark.parametrize("model", ["breast-cancer", "breast-cancer-tract"])
def test_infer_matches_onnxruntime(client, features, model, rows, binary_in, binary_out):
    x = features[:rows]
    for version in (1, 2):
        result = run(client, model, x, binary_in, binary_out, version=str(version))
        want = reference(LR[version], {"input": x})
        assert result.get_response()["model_version"] == str(version)
        assert result.get_response()["id"] == "compat-1"
        np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=0, atol=TOLERANCE)


def test_unversioned_requests_use_the_highest_version(client, features):
    result = run(client, "breast-cancer", features[:5], True, True)
    assert result.get_response()["model_version"] == "2"


def test_requested_output_subset(client, features):
    result = run(client, "breast-cancer", features[:3], True, True, outputs=("probabilities",))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None


def test_gradient_boosted_trees_on_onnxruntime(client, features):
    x = features[:37]
    result = run(client, "breast-cancer-gbt", x, True, True)
    want = reference(GBT, {"input": x})
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=0, atol=TOLERANCE)


DT = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


def datatype_feeds(rows: int) -> dict:
    rng = np.random.default_rng(7)
    feeds = {}
    for name, dtype in DT.items():
        if name == "BYTES":
            arr = np.array([f"s{i}-é" for i in range(rows * 3)], dtype=np.object_).reshape(rows, 3)
        elif name == "BOOL":
            arr = rng.integers(0, 2, (rows, 3)).astype(np.bool_)
        elif name.startswith("FP"):
            arr = rng.normal(0, 100, (rows, 3)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            arr = rng.integers(info.min, info.max, (rows, 3), dtype=dtype, endpoint=True)
        feeds[f"in_{name.lower()}"] = arr
    return feeds


@pytest.mark.parametrize("model", ["datatypes", "datatypes-tract"])
@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_matches_onnxruntime(client, model, binary):
    feeds = datatype_feeds(4)
    inputs = []
    for name, dtype in DT.items():
        arr = feeds[f"in_{name.lower()}"]
        inp = httpclient.InferInput(f"in_{name.lower()}", list(arr.shape), name)
        # tritonclient can only send FP16 (and BYTES is safest) as binary.
        inp.set_data_from_numpy(arr, binary_data=binary or name == "FP16")
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(f"out_{n.lower()}", binary_data=True) for n in DT]
    result = client.infer(model, inputs, outputs=outputs)
    want = reference(DATATYPES, feeds)
    for name in DT:
        got = result.as_numpy(f"out_{name.lower()}")
        expected = want[f"out_{name.lower()}"]
        if name == "BYTES":
            assert [g.decode() for g in got.ravel()] == [str(e) for e in expected.ravel()]
        else:
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_errors_surface_as_exceptions_with_the_message(client, features):
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        run(client, "nope", features[:1], True, True)
    bad = httpclient.InferInput("input", [1, 29], "FP32")
    bad.set_data_from_numpy(features[:1, :29], binary_data=True)
    with pytest.raises(InferenceServerException, match=r"expects \[-1, 30\]"):
        client.infer("breast-cancer", [bad])
    # Still serving afterwards.
    assert run(client, "breast-cancer", features[:1], True, True).as_numpy("label").shape == (1,)


def test_parameters_are_scalars(client, features):
    """Custom scalar parameters pass through tritonclient and Keel; an array or object is refused (the
    protocol's parameters are bool, number or string) with the reason, and the server keeps serving."""
    inp = httpclient.InferInput("input", [2, 30], "FP32")
    inp.set_data_from_numpy(features[:2], binary_data=True)
    result = client.infer("breast-cancer", [inp], parameters={"custom": "v", "n": 3, "on": True, "w": 0.5})
    assert result.as_numpy("label").shape == (2,)
    for value, what in [([1, 2], "an array"), ({"a": 1}, "an object")]:
        with pytest.raises(InferenceServerException, match=f"parameter 'custom' must be a boolean, number or string, not {what}"):
            client.infer("breast-cancer", [inp], parameters={"custom": value})
    assert client.infer("breast-cancer", [inp]).as_numpy("label").shape == (2,)


def test_bytes_declared_for_an_fp32_input_is_refused_from_the_header(client):
    inp = httpclient.InferInput("input", [1, 30], "BYTES")
    inp.set_data_from_numpy(np.array([[b"x"] * 30], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="has datatype BYTES, the model expects FP32"):
        client.infer("breast-cancer", [inp])
