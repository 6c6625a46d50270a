"""A Triton-layout model repository: ONNX models with `config.pbtxt` only (no model.toml), written the way
Triton's own examples and test generators write them. tests/test_triton_config.py serves it.

    .venv/bin/python tests/triton_repo.py DIR     # write the repository into DIR

Models (all ONNX, built with the onnx package's helper API):
  simple              INPUT0, INPUT1 INT32 [16] -> OUTPUT0 = sum, OUTPUT1 = difference; max_batch_size 8
  simple_string       the same on BYTES tensors holding decimal numbers (Cast to INT32 and back)
  identity_<type>     INPUT0 -> OUTPUT0 unchanged, one per datatype, dims [ -1 ]
  policy_<kind>       three versions (1, 2, 3), each adding its version number to INPUT0, under each
                      version_policy: latest (2), all, specific [1, 3], and none (Triton's default: latest 1)
"""

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17

# (Triton data_type, ONNX element type, model name suffix)
DATATYPES = [
    ("TYPE_BOOL", TensorProto.BOOL, "bool"),
    ("TYPE_UINT8", TensorProto.UINT8, "uint8"),
    ("TYPE_UINT16", TensorProto.UINT16, "uint16"),
    ("TYPE_UINT32", TensorProto.UINT32, "uint32"),
    ("TYPE_UINT64", TensorProto.UINT64, "uint64"),
    ("TYPE_INT8", TensorProto.INT8, "int8"),
    ("TYPE_INT16", TensorProto.INT16, "int16"),
    ("TYPE_INT32", TensorProto.INT32, "int32"),
    ("TYPE_INT64", TensorProto.INT64, "int64"),
    ("TYPE_FP16", TensorProto.FLOAT16, "fp16"),
    ("TYPE_FP32", TensorProto.FLOAT, "fp32"),
    ("TYPE_FP64", TensorProto.DOUBLE, "fp64"),
    ("TYPE_STRING", TensorProto.STRING, "string"),
]

VERSION_POLICIES = {
    # model name: (version_policy line or None, versions Triton would serve)
    "policy_latest": ("version_policy: { latest { num_versions: 2 } }", [2, 3]),
    "policy_all": ("version_policy: { all { } }", [1, 2, 3]),
    "policy_specific": ("version_policy: { specific { versions: [ 1, 3 ] } }", [1, 3]),
    "policy_default": (None, [3]),
}


def model_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    model.producer_name = "keel-triton-repo"
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def tensor(name: str, elem: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["N", *dims])


def simple_model() -> bytes:
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    i32 = TensorProto.INT32
    graph = helper.make_graph(nodes, "simple", [tensor("INPUT0", i32, [16]), tensor("INPUT1", i32, [16])],
                              [tensor("OUTPUT0", i32, [16]), tensor("OUTPUT1", i32, [16])])
    return model_bytes(graph)


def simple_string_model() -> bytes:
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    s = TensorProto.STRING
    graph = helper.make_graph(nodes, "simple_string", [tensor("INPUT0", s, [16]), tensor("INPUT1", s, [16])],
                              [tensor("OUTPUT0", s, [16]), tensor("OUTPUT1", s, [16])])
    return model_bytes(graph)


def identity_model(elem: int) -> bytes:
    node = helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])
    graph = helper.make_graph([node], "identity", [tensor("INPUT0", elem, ["D"])], [tensor("OUTPUT0", elem, ["D"])])
    return model_bytes(graph)


def add_version_model(version: int) -> bytes:
    """OUTPUT0 = INPUT0 + version (INT32 [16]): which version answered shows in the result."""
    i32 = TensorProto.INT32
    constant = helper.make_tensor("v", i32, [], [version])
    node = helper.make_node("Add", ["INPUT0", "v"], ["OUTPUT0"])
    graph = helper.make_graph([node], "add_version", [tensor("INPUT0", i32, [16])], [tensor("OUTPUT0", i32, [16])],
                              initializer=[constant])
    return model_bytes(graph)


def io_section(kind: str, tensors: list[tuple[str, str, str]]) -> str:
    """`input [ ... ]` / `output [ ... ]` as Triton's generators write them."""
    entries = [
        f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {dims} ]\n  }}'
        for name, data_type, dims in tensors
    ]
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def config(name: str, max_batch_size: int, inputs, outputs, *extra: str) -> str:
    text = f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
    for line in extra:
        text += line + "\n"
    return text + io_section("input", inputs) + io_section("output", outputs)


def two_in_two_out(data_type: str) -> tuple[list, list]:
    return ([("INPUT0", data_type, "16"), ("INPUT1", data_type, "16")],
            [("OUTPUT0", data_type, "16"), ("OUTPUT1", data_type, "16")])


SIMPLE_EXTRA = (
    'instance_group [ { count: 2 kind: KIND_CPU } ]',
    "dynamic_batching {\n  preferred_batch_size: [ 4, 8 ]\n  max_queue_delay_microseconds: 100\n"
    "  default_queue_policy { max_queue_size: 64 default_timeout_microseconds: 2000000 }\n}",
)


def models() -> dict[str, dict[str, bytes]]:
    """Every model directory: {model name: {relative path: content}}."""
    repo: dict[str, dict[str, bytes]] = {}
    inputs, outputs = two_in_two_out("TYPE_INT32")
    repo["simple"] = {
        "config.pbtxt": config("simple", 8, inputs, outputs, *SIMPLE_EXTRA).encode(),
        "1/model.onnx": simple_model(),
    }
    inputs, outputs = two_in_two_out("TYPE_STRING")
    repo["simple_string"] = {
        "config.pbtxt": config("simple_string", 8, inputs, outputs).encode(),
        "1/model.onnx": simple_string_model(),
    }
    for data_type, elem, suffix in DATATYPES:
        name = f"identity_{suffix}"
        repo[name] = {
            "config.pbtxt": config(name, 8, [("INPUT0", data_type, "-1")], [("OUTPUT0", data_type, "-1")]).encode(),
            "1/model.onnx": identity_model(elem),
        }
    for name, (policy, _) in VERSION_POLICIES.items():
        files = {f"{v}/model.onnx": add_version_model(v) for v in (1, 2, 3)}
        extra = [policy] if policy else []
        files["config.pbtxt"] = config(name, 8, [("INPUT0", "TYPE_INT32", "16")], [("OUTPUT0", "TYPE_INT32", "16")],
                                       *extra).encode()
        repo[name] = files
    return repo


def write(dest: Path) -> Path:
    for model, files in models().items():
        for relative, content in files.items():
            path = dest / model / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(write(Path(sys.argv[1])))
