"""The nodes a runtime hosts to be checked by ``exosphere conformance``, and the checks on their descriptors.

Every field of every conformance node is a string and required (``LABEL_REQUIRED``, no default), numbered from 1
in the order listed here. docs/protocol.md ("Conformance") documents the same table for runtime authors.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto

from exosphere.v1 import common_pb2

__all__ = ["ERROR_TYPE", "NODES", "NodeSpec", "check_schema"]

# The error type a Fail node reports (the exception class name in Python, `err.name` in JavaScript).
ERROR_TYPE = "ConformanceError"


@dataclass(frozen=True)
class NodeSpec:
    """What a conformance node declares: its name and the fields of Inputs, Outputs and Secrets, in order."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    behaviour: str
    secrets: tuple[str, ...] = ()


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("Echo", ("text",), ("text",), "returns one output, text = inputs.text"),
    NodeSpec(
        "Fail", ("message",), ("message",), f"raises an error of type {ERROR_TYPE} whose message is inputs.message"
    ),
    NodeSpec(
        "Sleep",
        ("ms",),
        ("ms",),
        "waits ms milliseconds without blocking other states, then returns ms = inputs.ms; stops when cancelled",
    ),
    NodeSpec("FanOut", ("count",), ("item",), "returns count outputs, item = '0', '1', ... (count - 1)"),
    NodeSpec(
        "StoreWrite",
        ("key", "value"),
        ("key",),
        "writes store[key] = value (Result.store_writes) and returns key = inputs.key",
    ),
)


def _check_descriptor(node: str, part: str, descriptor: DescriptorProto, expected: tuple[str, ...]) -> list[str]:
    problems = []
    names = tuple(f.name for f in descriptor.field)
    if names != expected:
        problems.append(f"{node}.{part} fields are {list(names)}, expected {list(expected)}")
    for number, field in enumerate(descriptor.field, start=1):
        where = f"{node}.{part}.{field.name}"
        if field.type != FieldDescriptorProto.TYPE_STRING:
            problems.append(f"{where} has type {FieldDescriptorProto.Type.Name(field.type)}, expected TYPE_STRING")
        if field.number != number:
            problems.append(f"{where} is numbered {field.number}, expected {number} (declaration order)")
        if field.label != FieldDescriptorProto.LABEL_REQUIRED or field.HasField("default_value"):
            label = FieldDescriptorProto.Label.Name(field.label) if field.HasField("label") else "without a label"
            problems.append(f"{where} is {label}, expected LABEL_REQUIRED without a default")
    return problems


def check_schema(schema: common_pb2.NodeSchema, spec: NodeSpec) -> list[str]:
    """What is wrong with a registered ``schema`` of the conformance node ``spec`` (empty: nothing)."""
    problems = []
    for part, expected in (("Inputs", spec.inputs), ("Outputs", spec.outputs), ("Secrets", spec.secrets)):
        descriptor: DescriptorProto = getattr(schema, part.lower())
        problems.extend(_check_descriptor(spec.name, part, descriptor, expected))
    return problems
