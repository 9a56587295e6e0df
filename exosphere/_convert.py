"""pydantic models to protobuf descriptors: the only SDK module that knows both sides of a node schema."""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto
from pydantic import BaseModel

from exosphere.node import BaseNode
from exosphere.v1 import common_pb2 as pb

__all__ = ["model_to_descriptor", "node_to_schema"]


def model_to_descriptor(name: str, model: type[BaseModel]) -> DescriptorProto:
    """Translate a pydantic model of ``str`` fields into a proto2-shaped ``DescriptorProto``.

    Fields are numbered in declaration order; a field without a default is required, one with a default is
    optional and carries it as ``default_value`` (which the scheduler fills in when the input is absent). A
    ``None`` default is optional without a ``default_value``: the input may be absent, and the node sees ``None``.
    """
    descriptor = DescriptorProto(name=name)
    for number, (field_name, field) in enumerate(model.model_fields.items(), start=1):
        fd = descriptor.field.add(name=field_name, number=number, type=FieldDescriptorProto.TYPE_STRING)
        if field.is_required():
            fd.label = FieldDescriptorProto.LABEL_REQUIRED
            continue
        fd.label = FieldDescriptorProto.LABEL_OPTIONAL
        default = field.get_default(call_default_factory=True)
        if default is not None:
            fd.default_value = str(default)
    return descriptor


def node_to_schema(node: type[BaseNode]) -> pb.NodeSchema:
    """The registration schema of a node class."""
    timeout_ms = int(node.timeout.total_seconds() * 1000) if node.timeout is not None else 0
    return pb.NodeSchema(
        name=node.__name__,
        inputs=model_to_descriptor("Inputs", node.Inputs),
        outputs=model_to_descriptor("Outputs", node.Outputs),
        secrets=model_to_descriptor("Secrets", node.Secrets),
        timeout_ms=timeout_ms,
    )
