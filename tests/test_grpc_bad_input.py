"""Bad input over gRPC, sent with tritonclient's own generated stubs so any malformed message can be built:
each gets the right status code and a clear message, and the server keeps serving."""

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from conftest import Keel, build_repository


@pytest.fixture(scope="module")
def stub(keel):
    channel = grpc.insecure_channel(keel.grpc, options=[("grpc.max_send_message_length", 256 << 20)])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def request(x: np.ndarray, model="breast-cancer", datatype="FP32", shape=None, raw=True) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    tensor = req.inputs.add(name="input", datatype=datatype)
    tensor.shape.extend(list(x.shape) if shape is None else shape)
    if raw:
        req.raw_input_contents.append(x.tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return req


def assert_status(stub, req, code, needle):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert needle.lower() in err.value.details().lower(), err.value.details()
    # Still serving.
    ok = stub.ModelInfer(request(np.ones((1, 30), np.float32)), timeout=30)
    assert ok.model_name == "breast-cancer" and len(ok.raw_output_contents) == 2


def test_good_requests_both_encodings(stub, features):
    raw = stub.ModelInfer(request(features[:3]))
    typed = stub.ModelInfer(request(features[:3], raw=False))
    assert raw.raw_output_contents == typed.raw_output_contents
    assert [o.name for o in raw.outputs] == ["label", "probabilities"]
    assert list(raw.outputs[1].shape) == [3, 2]


def test_bad_requests(stub, features):
    x = features[:1]
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    short = request(x)
    short.raw_input_contents[0] = x.tobytes()[:-4]
    assert_status(stub, short, invalid, "needs 120 bytes")

    both = request(x)
    both.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    assert_status(stub, both, invalid, "both contents and raw_input_contents")

    assert_status(stub, request(x.astype(np.float64), datatype="FP64"), invalid, "expects FP32")
    assert_status(stub, request(x, datatype="FP99"), invalid, "unknown datatype")

    wrong_field = request(x, raw=False)
    wrong_field.inputs[0].contents.ClearField("fp32_contents")
    wrong_field.inputs[0].contents.int64_contents.extend([1] * 30)
    assert_status(stub, wrong_field, invalid, "belongs in fp32_contents")

    count = request(x, raw=False)
    count.inputs[0].contents.fp32_contents.append(1.0)
    assert_status(stub, count, invalid, "has 31 elements")

    absurd = request(x, shape=[4294967296, 30])
    assert_status(stub, absurd, invalid, "more elements than the request carries")
    absurd_typed = request(x, shape=[1 << 40, 1 << 40], raw=False)
    assert_status(stub, absurd_typed, invalid, "more elements than the request carries")
    negative = request(x, shape=[-1, 30])
    assert_status(stub, negative, invalid, "negative dimension")

    extra_raw = request(x)
    extra_raw.raw_input_contents.append(b"\x00" * 8)
    assert_status(stub, extra_raw, invalid, "raw_input_contents has 2 entries")

    no_data = request(x)
    del no_data.raw_input_contents[:]
    assert_status(stub, no_data, invalid, "has no data")

    bad_output = request(x)
    bad_output.outputs.add(name="nope")
    assert_status(stub, bad_output, invalid, "unknown output 'nope'")

    assert_status(stub, request(x, model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'")
    unknown_version = request(x)
    unknown_version.model_version = "9"
    assert_status(stub, unknown_version, grpc.StatusCode.NOT_FOUND, "no version 9")
    bad_version = request(x)
    bad_version.model_version = "latest"
    assert_status(stub, bad_version, invalid, "positive integer")

    shm = request(x)
    shm.inputs[0].parameters["shared_memory_region"].string_param = "region"
    assert_status(stub, shm, grpc.StatusCode.UNIMPLEMENTED, "shared memory")


def test_oversized_messages_are_refused(tmp_path):
    server = Keel(build_repository(tmp_path / "repo"), "--grpc-max-message-bytes", "1048576")
    try:
        channel = grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", 64 << 20)])
        small = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        big = request(np.zeros((10000, 30), np.float32))  # 1.2 MB of raw input
        with pytest.raises(grpc.RpcError) as err:
            small.ModelInfer(big, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = small.ModelInfer(request(np.ones((2, 30), np.float32)), timeout=30)
        assert len(ok.raw_output_contents) == 2
        channel.close()
    finally:
        assert server.stop() == 0
