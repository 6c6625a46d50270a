"""Triton model repositories: models configured by `config.pbtxt` alone (tests/triton_repo.py writes them as
Triton's own generators do) served to tritonclient over HTTP and gRPC; version policies; the effective
configuration both front ends report; warnings for what Keel does not honour; unsupported platforms and
malformed files as UNAVAILABLE models with the reason; model.toml taking precedence over config.pbtxt."""

import json
import re
import subprocess
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

import triton_repo
from conftest import KEEL_BIN, ROOT, Keel
from test_grpc_proto import parse as parse_proto, type_name

TOKEN = "triton-config-admin"

SIMPLE_IO = triton_repo.io_section("input", [("INPUT0", "TYPE_INT32", "16"), ("INPUT1", "TYPE_INT32", "16")]) + \
    triton_repo.io_section("output", [("OUTPUT0", "TYPE_INT32", "16"), ("OUTPUT1", "TYPE_INT32", "16")])

# Valid Triton, partly beyond Keel: GPU instances, a response cache, accelerators, an unknown parameter.
GPU_UNKNOWN = """name: "gpu_unknown"
platform: "onnxruntime_onnx"
max_batch_size: 8
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]
response_cache { enable: true }
model_transaction_policy { decoupled: false }
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
parameters { key: "execution_mode" value: { string_value: "0" } }
model_warmup [
  {
    name: "rows"
    batch_size: 2
    inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }
    inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } }
  }
]
""" + SIMPLE_IO

# `dims: [ 16 }`: the bracket is never closed (line 4, column 59 is the `}`).
MALFORMED = """name: "malformed"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dest = triton_repo.write(tmp_path_factory.mktemp("triton") / "models")
    simple = dest / "simple/1/model.onnx"

    def model(name: str, config: str, files: dict[str, bytes] | None = None):
        (dest / name).mkdir()
        (dest / name / "config.pbtxt").write_text(config)
        for relative, content in (files or {"1/model.onnx": simple.read_bytes()}).items():
            (dest / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (dest / name / relative).write_bytes(content)

    model("gpu_unknown", GPU_UNKNOWN)
    model("malformed", MALFORMED)
    model("tensorrt", 'name: "tensorrt"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n',
          {"1/model.plan": b"not a plan"})
    model("python", 'name: "python"\nbackend: "python"\n', {"1/model.py": b"class TritonPythonModel: pass\n"})
    # Both files: model.toml says 4 rows and one instance, config.pbtxt says 8 and two.
    model("both_files", (dest / "simple/config.pbtxt").read_text().replace('"simple"', '"both_files"'))
    (dest / "both_files/model.toml").write_text("max_batch_size = 4\ninstances = 1\n")
    model("reloadable", (dest / "simple/config.pbtxt").read_text().replace('"simple"', '"reloadable"'))
    # simple's tensors are INT32: a config that says FP32 must not load as if it were right.
    model("wrong_type", (dest / "simple/config.pbtxt").read_text().replace('"simple"', '"wrong_type"')
          .replace("TYPE_INT32", "TYPE_FP32"))
    return dest


@pytest.fixture(scope="module")
def keel(repo):
    server = Keel(repo, "--admin-token", TOKEN, "--repository-poll", "0.5")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def http(keel):
    return httpclient.InferenceServerClient(keel.http)


@pytest.fixture(scope="module")
def grpc(keel):
    return grpcclient.InferenceServerClient(keel.grpc)


def index(keel) -> dict[tuple[str, str], dict]:
    rows = requests.post(f"http://{keel.http}/v2/repository/index", json={},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    return {(r["name"], r.get("version", "")): r for r in rows}


def log(keel) -> str:
    return "".join(keel.log)


def test_the_schema_matches_tritons_field_for_field():
    """proto/model_config.proto against the descriptors tritonclient ships: every message, field number,
    type, label and enum value; nothing of Triton's left out."""
    messages, enums = parse_proto((ROOT / "server/proto/model_config.proto").read_text())
    pool = model_config_pb2.DESCRIPTOR.pool
    for full, fields in messages.items():
        theirs = pool.FindMessageTypeByName("inference." + full)
        assert set(fields) == set(theirs.fields_by_name), full
        for name, (number, typ, repeated) in fields.items():
            field = theirs.fields_by_name[name]
            assert field.number == number, f"{full}.{name}"
            assert type_name(field) == typ.split(".")[-1], f"{full}.{name}"
            is_map = typ.startswith("map<")
            assert (field.is_repeated and not is_map) == repeated, f"{full}.{name}"
    for full, values in enums.items():
        *owner, name = full.split(".")
        theirs = (pool.FindMessageTypeByName("inference." + ".".join(owner)).enum_types_by_name[name] if owner
                  else model_config_pb2.DESCRIPTOR.enum_types_by_name[name])
        assert values == {v.name: v.number for v in theirs.values}, full

    def names(container, prefix=""):
        for m in container:
            if not m.GetOptions().map_entry:
                yield prefix + m.name
                yield from names(m.nested_types, prefix + m.name + ".")

    assert set(names(model_config_pb2.DESCRIPTOR.message_types_by_name.values())) == set(messages)


def test_the_generated_repository_is_valid_triton(repo):
    for path in sorted(repo.glob("*/config.pbtxt")):
        if path.parent.name != "malformed":
            text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert [p.parent.name for p in repo.glob("*/model.toml")] == ["both_files"]


def simple_inputs(module, datatype="INT32"):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    if datatype == "BYTES":
        a, b = a.astype(np.bytes_).astype(object), b.astype(np.bytes_).astype(object)
    inputs = [module.InferInput("INPUT0", [1, 16], datatype), module.InferInput("INPUT1", [1, 16], datatype)]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, np.arange(16).reshape(1, 16)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple(http, grpc, protocol):
    client, module = (http, httpclient) if protocol == "http" else (grpc, grpcclient)
    assert client.is_model_ready("simple")
    inputs, a = simple_inputs(module)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - 1)
    assert result.as_numpy("OUTPUT0").dtype == np.int32


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple_string(http, grpc, protocol):
    # Synthetic warm-up sends "0" for BYTES elements (server/src/repository/warmup.rs), which the Cast
    # parses; were it empty strings, warm-up would only warn and the model would still be ready.
    client, module = (http, httpclient) if protocol == "http" else (grpc, grpcclient)
    assert client.is_model_ready("simple_string")
    inputs, a = simple_inputs(module, "BYTES")
    result = client.infer("simple_string", inputs)
    assert [int(x) for x in result.as_numpy("OUTPUT0").reshape(-1)] == list((a + 1).reshape(-1))
    assert [int(x) for x in result.as_numpy("OUTPUT1").reshape(-1)] == list((a - 1).reshape(-1))


IDENTITY_DATA = {
    "bool": ("BOOL", np.array([[True, False, True], [False, False, True]])),
    "uint8": ("UINT8", np.array([[0, 7, 255], [1, 2, 3]], dtype=np.uint8)),
    "uint16": ("UINT16", np.array([[0, 7, 65535], [1, 2, 3]], dtype=np.uint16)),
    "uint32": ("UINT32", np.array([[0, 7, 2**32 - 1], [1, 2, 3]], dtype=np.uint32)),
    "uint64": ("UINT64", np.array([[0, 7, 2**64 - 1], [1, 2, 3]], dtype=np.uint64)),
    "int8": ("INT8", np.array([[-128, 0, 127], [1, 2, 3]], dtype=np.int8)),
    "int16": ("INT16", np.array([[-32768, 0, 32767], [1, 2, 3]], dtype=np.int16)),
    "int32": ("INT32", np.array([[-(2**31), 0, 2**31 - 1], [1, 2, 3]], dtype=np.int32)),
    "int64": ("INT64", np.array([[-(2**63), 0, 2**63 - 1], [1, 2, 3]], dtype=np.int64)),
    "fp16": ("FP16", np.array([[0.5, -2, 65504], [1, 2, 3]], dtype=np.float16)),
    "fp32": ("FP32", np.array([[0.5, -2, 1e30], [1, 2, 3]], dtype=np.float32)),
    "fp64": ("FP64", np.array([[0.5, -2, 1e300], [1, 2, 3]], dtype=np.float64)),
    "string": ("BYTES", np.array([[b"a", b"", "é".encode()], [b"x", b"yz", b"keel"]], dtype=object)),
}


@pytest.mark.parametrize("suffix", sorted(IDENTITY_DATA))
def test_identity_every_datatype(http, grpc, suffix):
    datatype, data = IDENTITY_DATA[suffix]
    name = f"identity_{suffix}"
    config = http.get_model_config(name)
    assert config["input"][0]["data_type"] == "TYPE_" + ("STRING" if datatype == "BYTES" else datatype)
    assert config["input"][0]["dims"] == [-1] and config["max_batch_size"] == 8
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        inp = module.InferInput("INPUT0", list(data.shape), datatype)
        inp.set_data_from_numpy(data)
        out = client.infer(name, [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("model", sorted(triton_repo.VERSION_POLICIES))
def test_version_policies(keel, http, grpc, model):
    _, served = triton_repo.VERSION_POLICIES[model]
    for client in (http, grpc):
        ready = [v for v in (1, 2, 3) if client.is_model_ready(model, str(v))]
        assert ready == served, (model, ready)
    rows = index(keel)
    assert sorted(int(v) for (name, v), r in rows.items() if name == model and r["state"] == "READY") == served
    # A request without a version goes to the highest served one.
    inp = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    result = http.infer(model, [inp])
    assert result.get_response()["model_version"] == str(served[-1])
    assert result.as_numpy("OUTPUT0")[0, 0] == served[-1]
    expected = {"policy_latest": {"latest": {"num_versions": 2}}, "policy_all": {"all": {}},
                "policy_specific": {"specific": {"versions": [1, 3]}},
                "policy_default": {"latest": {"num_versions": 1}}}[model]
    assert http.get_model_config(model)["version_policy"] == expected


def test_config_is_the_effective_configuration_on_both_front_ends(http, grpc):
    config = http.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["runtime"] == "onnxruntime"
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == \
        [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == \
        [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["max_queue_delay_microseconds"] == 100
    assert batching["default_queue_policy"]["max_queue_size"] == 64
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 2000000
    assert config["default_model_filename"] == "model.onnx"
    # The same message over gRPC, decoded by tritonclient's own model_config_pb2.
    theirs = grpc.get_model_config("simple").config
    assert theirs.name == "simple" and theirs.platform == "onnxruntime_onnx" and theirs.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in theirs.input] == \
        [("INPUT0", model_config_pb2.TYPE_INT32, [16]), ("INPUT1", model_config_pb2.TYPE_INT32, [16])]
    assert [(t.name, list(t.dims)) for t in theirs.output] == [("OUTPUT0", [16]), ("OUTPUT1", [16])]
    assert theirs.version_policy.latest.num_versions == 1
    assert [(g.kind, g.count) for g in theirs.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)]
    assert list(theirs.dynamic_batching.preferred_batch_size) == [4, 8]
    assert theirs.dynamic_batching.max_queue_delay_microseconds == 100
    assert theirs.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert theirs.dynamic_batching.default_queue_policy.default_timeout_microseconds == 2000000
    assert theirs.default_model_filename == "model.onnx"
    as_json = grpc.get_model_config("simple", as_json=True)["config"]
    assert as_json["input"][0] == {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": ["16"]}


def test_valid_fields_keel_does_not_honour_are_warnings_and_the_model_serves(keel, http):
    assert http.is_model_ready("gpu_unknown")
    text = log(keel)
    for named in ["instance_group[0].kind: KIND_GPU", "its 2 instance(s) run on CPU", "instance_group[0].gpus",
                  "response_cache.enable", "optimization.execution_accelerators", "parameters[execution_mode]"]:
        assert re.search(r"WARN.*config\.pbtxt: .*" + re.escape(named) + r".*gpu_unknown", text), named
    assert "model_transaction_policy" not in text  # decoupled: false is Triton's default, nothing to say
    # Said once, when the configuration was loaded, not at every look at the repository (every 0.5 s here).
    time.sleep(1.5)
    assert log(keel).count("response_cache.enable") == 1
    config = http.get_model_config("gpu_unknown")
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    assert "response_cache" not in config and "optimization" not in config
    assert config["model_warmup"] == [{
        "name": "rows", "batch_size": 2, "count": 1,
        "inputs": {"INPUT0": {"data_type": "TYPE_INT32", "dims": [16], "zero_data": True},
                   "INPUT1": {"data_type": "TYPE_INT32", "dims": [16], "random_data": True}}}]
    inputs, a = simple_inputs(httpclient)
    np.testing.assert_array_equal(http.infer("gpu_unknown", inputs).as_numpy("OUTPUT0"), a + 1)


@pytest.mark.parametrize("model,reason", [
    ("tensorrt", 'platform "tensorrt_plan" is not supported'),
    ("python", 'backend "python" is not supported'),
])
def test_unsupported_platforms_are_unavailable_with_the_reason(keel, http, model, reason):
    row = index(keel)[(model, "")]
    assert row["state"] == "UNAVAILABLE"
    assert reason in row["reason"] and "config.pbtxt" in row["reason"], row
    assert not http.is_model_ready(model)
    with pytest.raises(InferenceServerException) as err:
        http.get_model_config(model)
    assert reason in str(err.value)


def test_a_data_type_the_graph_does_not_have_makes_the_model_unavailable(keel, http):
    rows = [r for (name, _), r in index(keel).items() if name == "wrong_type"]
    assert rows and all(r["state"] == "UNAVAILABLE" for r in rows), rows
    assert any("declares 'INPUT0' as FP32, but the graph's tensor is INT32" in r["reason"] for r in rows), rows
    assert not http.is_model_ready("wrong_type")


def test_a_malformed_config_is_unavailable_naming_the_parse_error(keel, http):
    row = index(keel)[("malformed", "")]
    assert row["state"] == "UNAVAILABLE"
    assert "config.pbtxt: line 4, column 59:" in row["reason"], row
    assert "expected ',' or ']', but found '}'" in row["reason"], row
    assert not http.is_model_ready("malformed")


def test_model_toml_wins_over_config_pbtxt(keel, http, grpc):
    config = http.get_model_config("both_files")
    assert config["max_batch_size"] == 4
    assert config["instance_group"][0]["count"] == 1
    assert grpc.get_model_config("both_files").config.max_batch_size == 4
    assert re.search(r"WARN.*config\.pbtxt is ignored: model\.toml is present.*both_files", log(keel))


def test_editing_config_pbtxt_reloads_the_model(repo, http):
    path = repo / "reloadable/config.pbtxt"
    assert http.get_model_config("reloadable")["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    path.write_text(path.read_text().replace("max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 300"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if http.get_model_config("reloadable")["dynamic_batching"]["max_queue_delay_microseconds"] == 300:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the edited config.pbtxt was not loaded")
    inputs, a = simple_inputs(httpclient)
    np.testing.assert_array_equal(http.infer("reloadable", inputs).as_numpy("OUTPUT1"), a - 1)


def test_keel_check_reports_warnings_and_failures(repo):
    def check(*args):
        return subprocess.run([KEEL_BIN, "check", str(repo), *args], capture_output=True, text=True, timeout=300)

    done = check("--model", "gpu_unknown", "--model", "simple", "--model", "both_files")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  warn  config.pbtxt: instance_group[0].kind: KIND_GPU" in done.stdout
    assert "  warn  config.pbtxt is ignored: model.toml is present" in done.stdout
    report = json.loads(check("--model", "gpu_unknown", "--model", "malformed", "--model", "tensorrt",
                              "--json").stdout)
    by_model = {m["model"]: m for m in report["models"]}
    assert any("response_cache.enable" in w for w in by_model["gpu_unknown"]["warnings"])
    assert "line 4, column 59" in by_model["malformed"]["error"]
    assert "tensorrt_plan" in by_model["tensorrt"]["error"]
    done = check("--model", "malformed")
    assert done.returncode == 1 and "FAIL" in done.stdout

