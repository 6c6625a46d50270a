"""The scheduler seen through tritonclient.grpc: a full queue is RESOURCE_EXHAUSTED, and Triton's `timeout`
request parameter (µs, as tritonclient sends it) expires a queued request with DEADLINE_EXCEEDED."""

import queue
import re
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

ROWS = 1024  # one full batch of the slow MLP: tens of milliseconds of compute


def mlp_inputs(rows=ROWS):
    inp = grpcclient.InferInput("input", [rows, 512], "FP32")
    inp.set_data_from_numpy(np.full((rows, 512), 0.25, np.float32))
    return [inp]


@pytest.fixture
def client(keel):
    c = grpcclient.InferenceServerClient(keel.grpc)
    yield c
    c.close()


def test_full_queue_is_resource_exhausted(client):
    done = queue.Queue()
    for i in range(10):
        client.async_infer("slow-mlp", mlp_inputs(), callback=lambda result, error: done.put(error))
    errors = [done.get(timeout=120) for _ in range(10)]
    statuses = [e.status() if e else "OK" for e in errors]
    assert "StatusCode.RESOURCE_EXHAUSTED" in statuses, statuses
    assert "OK" in statuses, statuses
    assert set(statuses) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, statuses
    assert any("queue" in str(e) for e in errors if e)


def inflight(keel) -> float:
    text = requests.get(f"http://{keel.metrics}/metrics", timeout=10).text
    match = re.search(r'^keel_inflight_requests\{model="slow-mlp",version="1"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_timeout_parameter_expires_queued_requests(client, keel):
    done = queue.Queue()
    for _ in range(2):  # one running, one queued: the instance is busy for two full batches
        client.async_infer("slow-mlp", mlp_inputs(), callback=lambda result, error: done.put(("blocker", error)))
    deadline = time.monotonic() + 30
    while inflight(keel) < 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        # tritonclient sends `timeout` as the schedule-policy parameter, in microseconds.
        client.infer("slow-mlp", mlp_inputs(1), timeout=1000)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED", err.value
    assert "timed out" in str(err.value)
    assert time.monotonic() - start < 5
    assert [done.get(timeout=120) for _ in range(2)] == [("blocker", None)] * 2
    # Without a timeout the same request waits its turn and succeeds.
    assert client.infer("slow-mlp", mlp_inputs(1)).as_numpy("output").shape == (1, 512)
