"""OpenTelemetry traces over OTLP/gRPC, against a real OTLP receiver: a gRPC server on
opentelemetry-proto's `TraceService` that keeps every span it is sent. Keel's spans must join the caller's
trace (`traceparent` header or metadata), nest the queue and compute phases in the request span, follow
the caller's sampled flag and the sampling ratio, and never cost a request anything when the collector
is down."""

import json
import os
import queue
import re
import secrets
import shutil
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import ROOT, Keel

MODEL = "breast-cancer"
EXAMPLE = json.loads((ROOT / "tests/data/example_request.json").read_text())


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on 127.0.0.1: every exported span with its resource's attributes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans: list[tuple[dict, object]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):  # noqa: N802 (the service's method name)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((resource, span))
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list:
        with self.lock:
            return [span for _, span in self.spans if span.trace_id == trace_id]

    def wait_for(self, trace_id: bytes, count: int, timeout: float = 15.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of_trace(trace_id)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.of_trace(trace_id))} of {count} spans of {trace_id.hex()} arrived")

    def stop(self):
        self.server.stop(grace=None)


def attributes(pairs) -> dict:
    out = {}
    for kv in pairs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def traceparent(sampled: bool = True) -> tuple[str, bytes, bytes]:
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    flags = "01" if sampled else "00"
    return f"00-{trace_id.hex()}-{span_id.hex()}-{flags}", trace_id, span_id


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("otlp-repo")
    shutil.copytree(ROOT / "models" / MODEL, dest / MODEL)
    return dest


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def keel(repository, receiver):
    server = Keel(repository, "--otlp-endpoint", receiver.endpoint, "--otlp-service-name", "keel-under-test")
    yield server
    assert server.stop() == 0


def http_infer(keel, headers: dict, body: dict = EXAMPLE) -> requests.Response:
    return requests.post(f"http://{keel.http}/v2/models/{MODEL}/infer", json=body, headers=headers, timeout=10)


def grpc_inputs(rows: int = 2) -> list:
    x = np.load(ROOT / "tests/data/breast_cancer.npy")[:rows].astype(np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def by_name(spans) -> dict:
    return {span.name: span for span in spans}


def check_request_tree(spans, caller_span: bytes, name: str) -> tuple:
    """The request span is the caller's child, SERVER, and holds its queue and compute phases."""
    tree = by_name(spans)
    assert set(tree) == {name, "queue", "compute"}, list(tree)
    request, queued, compute = tree[name], tree["queue"], tree["compute"]
    assert request.parent_span_id == caller_span
    assert request.kind == request.SPAN_KIND_SERVER
    for child in (queued, compute):
        assert child.parent_span_id == request.span_id
        assert child.kind == child.SPAN_KIND_INTERNAL
        assert child.span_id not in (request.span_id, caller_span)
    for span in (request, queued, compute):
        assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
        # Near now: the wall clock, not a monotonic one.
        assert abs(span.start_time_unix_nano / 1e9 - time.time()) < 60
    for child in (queued, compute):
        assert request.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= request.end_time_unix_nano
    assert queued.end_time_unix_nano <= compute.start_time_unix_nano
    assert attributes(compute.attributes)["keel.batch.rows"] >= 1
    return request, queued, compute


def test_http_request_spans_join_the_callers_trace(keel, receiver):
    header, trace_id, caller = traceparent()
    answer = http_infer(keel, {"traceparent": header, "tracestate": "vendor=abc", "x-request-id": "otlp-http-1"})
    assert answer.status_code == 200, answer.text
    spans = receiver.wait_for(trace_id, 3)
    request, _, _ = check_request_tree(spans, caller, "POST /v2/models/{model}/infer")
    attrs = attributes(request.attributes)
    assert attrs["keel.model"] == MODEL
    assert attrs["keel.model.version"] == 2
    assert attrs["keel.rows"] == 1
    assert attrs["keel.protocol"] == "http"
    assert attrs["keel.request_id"] == "example"  # the body's id wins, as in the answer
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/v2/models/{model}/infer"
    assert request.trace_state == "vendor=abc"
    assert request.status.code == request.status.STATUS_CODE_UNSET
    resources = [res for res, span in receiver.spans if span.trace_id == trace_id]
    assert all(r["service.name"] == "keel-under-test" and r["service.version"] for r in resources)


def test_grpc_request_spans_join_the_callers_trace(keel, receiver):
    header, trace_id, caller = traceparent()
    client = grpcclient.InferenceServerClient(keel.grpc)
    result = client.infer(MODEL, grpc_inputs(2), model_version="1", headers={"traceparent": header})
    assert result.as_numpy("label").shape == (2,)
    spans = receiver.wait_for(trace_id, 3)
    request, _, _ = check_request_tree(spans, caller, "inference.GRPCInferenceService/ModelInfer")
    attrs = attributes(request.attributes)
    assert attrs["keel.model"] == MODEL
    assert attrs["keel.model.version"] == 1
    assert attrs["keel.rows"] == 2
    assert attrs["keel.protocol"] == "grpc"
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.method"] == "ModelInfer"
    assert attrs["rpc.grpc.status_code"] == 0


def test_each_streamed_request_is_a_child_of_the_streams_caller(keel, receiver):
    header, trace_id, caller = traceparent()
    answers = queue.Queue()
    client = grpcclient.InferenceServerClient(keel.grpc)
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers={"traceparent": header})
    try:
        for i in range(2):
            client.async_stream_infer(MODEL, grpc_inputs(1), request_id=f"stream-{i}")
        for _ in range(2):
            result, error = answers.get(timeout=10)
            assert error is None, error
    finally:
        client.stop_stream()
    spans = receiver.wait_for(trace_id, 6)
    requests_ = [s for s in spans if s.name == "inference.GRPCInferenceService/ModelStreamInfer"]
    assert len(requests_) == 2
    assert {attributes(s.attributes)["keel.request_id"] for s in requests_} == {"stream-0", "stream-1"}
    for request in requests_:
        assert request.parent_span_id == caller
        children = [s for s in spans if s.parent_span_id == request.span_id]
        assert sorted(c.name for c in children) == ["compute", "queue"]


def test_a_failed_request_is_an_error_span(keel, receiver):
    header, trace_id, caller = traceparent()
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    answer = http_infer(keel, {"traceparent": header}, bad)
    assert answer.status_code == 400
    (request,) = receiver.wait_for(trace_id, 1)
    assert request.parent_span_id == caller
    assert request.status.code == request.status.STATUS_CODE_ERROR
    assert request.status.message
    attrs = attributes(request.attributes)
    assert attrs["http.response.status_code"] == 400
    assert attrs["error.type"] == "invalid"
    # Refused before it was queued: no phases.
    time.sleep(1.5)
    assert len(receiver.of_trace(trace_id)) == 1


def test_unsampled_and_invalid_traceparents(keel, receiver):
    unsampled, unsampled_trace, _ = traceparent(sampled=False)
    assert http_infer(keel, {"traceparent": unsampled}).status_code == 200
    client = grpcclient.InferenceServerClient(keel.grpc)
    client.infer(MODEL, grpc_inputs(1), headers={"traceparent": unsampled})
    # An invalid traceparent is ignored: the request starts its own trace (ratio 1 here).
    invalid = f"00-{'0' * 32}-{secrets.token_hex(8)}-01"
    body = dict(EXAMPLE, id="otlp-invalid-traceparent")
    assert http_infer(keel, {"traceparent": invalid}, body).status_code == 200
    # A sampled request after them: once its spans are in, anything of theirs would be too.
    header, trace_id, _ = traceparent()
    assert http_infer(keel, {"traceparent": header}).status_code == 200
    receiver.wait_for(trace_id, 3)
    assert receiver.of_trace(unsampled_trace) == []
    with receiver.lock:
        roots = [s for _, s in receiver.spans
                 if attributes(s.attributes).get("keel.request_id") == "otlp-invalid-traceparent"]
    assert len(roots) == 1 and roots[0].parent_span_id == b""
    assert roots[0].trace_id != b"\0" * 16


def test_ratio_zero_records_only_sampled_callers(repository, receiver):
    keel = Keel(repository, "--otlp-endpoint", receiver.endpoint, "--otlp-sampling-ratio", "0")
    try:
        body = dict(EXAMPLE, id="otlp-ratio-zero")
        for _ in range(5):
            assert http_infer(keel, {}, body).status_code == 200
        header, trace_id, caller = traceparent()
        assert http_infer(keel, {"traceparent": header}).status_code == 200
        spans = receiver.wait_for(trace_id, 3)
        check_request_tree(spans, caller, "POST /v2/models/{model}/infer")
        with receiver.lock:
            assert not [s for _, s in receiver.spans
                        if attributes(s.attributes).get("keel.request_id") == "otlp-ratio-zero"]
    finally:
        assert keel.stop() == 0


def test_shutdown_sends_the_last_spans(repository, receiver):
    keel = Keel(repository, "--otlp-endpoint", receiver.endpoint)
    header, trace_id, _ = traceparent()
    try:
        assert http_infer(keel, {"traceparent": header}).status_code == 200
    finally:
        # At once: the spans are still waiting for their batch (up to a second).
        assert keel.stop() == 0
    assert len(receiver.of_trace(trace_id)) == 3


def metric(keel, name: str, labels: str = "") -> float:
    text = requests.get(f"http://{keel.metrics}/metrics", timeout=5).text
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_collector_that_is_down_costs_requests_nothing(repository):
    # A port nothing listens on.
    down = Receiver()
    endpoint = down.endpoint
    down.stop()
    keel = Keel(repository, "--otlp-endpoint", endpoint)
    try:
        started = time.monotonic()
        for _ in range(20):
            header, _, _ = traceparent()
            assert http_infer(keel, {"traceparent": header}).status_code == 200
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 20
        while metric(keel, "keel_otlp_spans_dropped_total", 'reason="export_failed"') == 0:
            assert time.monotonic() < deadline, "no export failure counted"
            time.sleep(0.2)
        assert metric(keel, "keel_otlp_spans_exported_total") == 0
    finally:
        assert keel.stop() == 0
    warnings = [line for line in keel.log if "cannot export spans" in line]
    assert len(warnings) == 1, warnings
