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
    assert_status(stub, absurd, invalid, "more than the model's max_batch_size 1024")
    absurd_typed = request(x, shape=[1 << 40, 1 << 40], raw=False)
    assert_status(stub, absurd_typed, invalid, "expects [-1, 30]")
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


# ---- hostile messages (issue 11): refused from their wire bytes, before anything of them is decoded ----

MIB = 1 << 20


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def empty_entries(tag: int, n: int, datatype="BYTES", shape=None) -> bytes:
    """A ModelInferRequest for breast-cancer whose one input has `n` empty entries of InferTensorContents'
    repeated field `tag` (8: bytes_contents), built on the wire: 2 bytes each."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype,
                                                   shape=shape or [1, n]).SerializeToString()
    tensor += field(5, (varint(tag << 3 | 2) + b"\x00") * n)
    return pb.ModelInferRequest(model_name="breast-cancer").SerializeToString() + field(5, tensor)


def send_raw(channel, message: bytes, timeout=60):
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString)
    return call(message, timeout=timeout)


@pytest.fixture(scope="module")
def channels(keel):
    options = [("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB)]
    plain = grpc.insecure_channel(keel.grpc, options=options)
    gzip = grpc.insecure_channel(keel.grpc, options=options, compression=grpc.Compression.Gzip)
    yield plain, gzip
    plain.close()
    gzip.close()


def assert_raw_status(channel, stub, message: bytes, code, needle):
    with pytest.raises(grpc.RpcError) as err:
        send_raw(channel, message)
    assert err.value.code() == code, err.value.details()
    assert needle.lower() in err.value.details().lower(), err.value.details()
    ok = stub.ModelInfer(request(np.ones((1, 30), np.float32)), timeout=30)
    assert len(ok.raw_output_contents) == 2


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_millions_of_empty_entries_are_refused_from_the_wire(channels, stub, compressed):
    channel = channels[compressed]
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    n = 10_000_000  # 20 MB on the wire (about 20 KB gzipped): 240 MB of Vec headers if prost built them
    assert_raw_status(channel, stub, empty_entries(8, n), invalid, "has datatype BYTES, the model expects FP32")
    assert_raw_status(channel, stub, empty_entries(8, n, "FP32", [1, 30]), invalid, "not bytes_contents")
    # Empty `inputs`, `raw_input_contents` and parameter entries: counted, never built.
    head = pb.ModelInferRequest(model_name="breast-cancer").SerializeToString()
    assert_raw_status(channel, stub, head + b"\x2a\x00" * n, invalid, "at most 4096")
    assert_raw_status(channel, stub, head + b"\x3a\x00" * n, invalid, "raw_input_contents has 10000000 entries")
    assert_raw_status(channel, stub, head + b"\x22\x00" * n, invalid, "parameters; at most 256")
    # Packed varints: 1 byte each on the wire, 8 in memory.
    ints = pb.ModelInferRequest.InferInputTensor(name="input", datatype="INT64", shape=[1, n]).SerializeToString()
    ints += field(5, field(3, b"\x00" * n))
    assert_raw_status(channel, stub, head + field(5, ints), invalid, "has datatype INT64")


def test_gzip_bomb_stops_at_the_message_limit(tmp_path):
    """tonic bounds the decompressed size by --grpc-max-message-bytes: a message that inflates past it is
    refused while it is being decompressed."""
    server = Keel(build_repository(tmp_path / "repo"), "--grpc-max-message-bytes", str(4 * MIB))
    try:
        options = [("grpc.max_send_message_length", 256 * MIB)]
        with grpc.insecure_channel(server.grpc, options=options, compression=grpc.Compression.Gzip) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            bomb = empty_entries(8, 8_000_000)  # 16 MB, about 16 KB once gzipped
            with pytest.raises(grpc.RpcError) as err:
                send_raw(channel, bomb)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            ok = stub.ModelInfer(request(np.ones((2, 30), np.float32)), timeout=30)
            assert len(ok.raw_output_contents) == 2
    finally:
        assert server.stop() == 0


def test_inflight_budget(tmp_path, features):
    """A small --max-inflight-bytes: a request larger than the whole budget is RESOURCE_EXHAUSTED (unary) or
    an error message (stream, which carries on); refusals are counted."""
    server = Keel(build_repository(tmp_path / "repo"), "--max-inflight-bytes", "65536")
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            big = request(np.resize(features, (1000, 30)).astype(np.float32))  # 120 KB of raw input
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(big, timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert "--max-inflight-bytes" in err.value.details()
            small = request(features[:2])
            replies = list(stub.ModelStreamInfer(iter([big, small, big]), timeout=30))
            errors = [r.error_message for r in replies if r.error_message]
            oks = [r for r in replies if not r.error_message]
            assert len(errors) == 2 and all("--max-inflight-bytes" in e for e in errors), errors
            assert len(oks) == 1 and list(oks[0].infer_response.outputs[1].shape) == [2, 2]
        import urllib.request
        text = urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10).read().decode()
        refused = [line for line in text.splitlines()
                   if line.startswith('keel_requests_refused_total{reason="inflight_bytes"}')]
        assert refused and float(refused[0].split()[-1]) >= 3, refused
        assert "keel_inflight_request_bytes 0" in text
    finally:
        assert server.stop() == 0
