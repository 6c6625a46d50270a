"""Keel's server/proto/grpc_service.proto and the model_config.proto it imports must match, field for field,
the descriptors that the real tritonclient was generated from: a wrong number silently corrupts requests."""

import re

from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2, service_pb2

from conftest import ROOT

PROTO = ROOT / "server/proto/grpc_service.proto"
MODEL_CONFIG = ROOT / "server/proto/model_config.proto"
SCALARS = {
    FieldDescriptor.TYPE_BOOL: "bool", FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64", FieldDescriptor.TYPE_FLOAT: "float", FieldDescriptor.TYPE_DOUBLE: "double",
}


def parse(text: str):
    """Messages as {full name: {field: (number, type, repeated)}}, enums as {full name: {value: number}}."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"\)\s*\{\s*\}", ");", text)  # rpc X(A) returns (B) {} -> a plain statement
    messages, enums, stack = {}, {}, []
    for token in re.finditer(r"(message|enum|oneof|service)\s+(\w+)\s*\{|\}|([^;{}]+);", text):
        kind, name, stmt = token.group(1), token.group(2), token.group(3)
        if kind:
            stack.append((kind, name))
            full = ".".join(n for k, n in stack if k in ("message", "enum"))
            if kind == "message":
                messages[full] = {}
            elif kind == "enum":
                enums[full] = {}
        elif token.group(0) == "}":
            stack.pop()
        elif stmt and stack:
            owner_kind = stack[-1][0]
            owner = ".".join(n for k, n in stack if k in ("message", "enum"))
            if owner_kind == "enum":
                value, number = [p.strip() for p in stmt.split("=")]
                enums[owner][value] = int(number)
            elif owner_kind in ("message", "oneof"):
                m = re.fullmatch(r"\s*(repeated\s+)?(map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*", stmt)
                assert m, f"cannot parse field: {stmt!r}"
                messages[owner][m.group(3)] = (int(m.group(4)), m.group(2).replace(" ", ""), bool(m.group(1)))
    return messages, enums


def descriptor(full_name: str):
    for module in (service_pb2, model_config_pb2):
        pool = module.DESCRIPTOR.pool
        try:
            return pool.FindMessageTypeByName("inference." + full_name)
        except KeyError:
            continue
    raise AssertionError(f"tritonclient has no message inference.{full_name}")


def type_name(field) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields
            value_name = value.message_type.name if value.message_type else SCALARS[value.type]
            return f"map<{SCALARS[key.type]},{value_name}>"
        return field.message_type.name
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.name
    return SCALARS[field.type]


def test_every_field_matches_tritonclient():
    messages, enums = parse(PROTO.read_text() + MODEL_CONFIG.read_text())
    assert len(messages) > 80
    for full, fields in messages.items():
        theirs = descriptor(full)
        for name, (number, typ, repeated) in fields.items():
            field = theirs.fields_by_name.get(name)
            assert field is not None, f"{full}.{name} does not exist in tritonclient"
            assert field.number == number, f"{full}.{name}: ours {number}, theirs {field.number}"
            assert type_name(field) == typ.split(".")[-1], f"{full}.{name}: ours {typ}, theirs {type_name(field)}"
            theirs_repeated = field.is_repeated and not typ.startswith("map<")
            assert theirs_repeated == repeated, f"{full}.{name}: repeated mismatch"
    for full, values in enums.items():
        parent, _, name = full.rpartition(".")
        enum = (descriptor(parent).enum_types_by_name[name] if parent
                else model_config_pb2.DESCRIPTOR.enum_types_by_name[name])
        for value, number in values.items():
            assert enum.values_by_name[value].number == number, f"{full}.{value}"


def test_service_methods_match():
    text = PROTO.read_text()
    ours = dict(re.findall(r"rpc (\w+)\((?:stream )?(\w+)\)", text))
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    for name, input_type in ours.items():
        method = service.methods_by_name[name]
        assert method.input_type.name == input_type, name
    streaming = re.findall(r"rpc (\w+)\(stream ", text)
    assert streaming == ["ModelStreamInfer"]
    assert service.methods_by_name["ModelStreamInfer"].client_streaming
