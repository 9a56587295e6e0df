"""The fields of a node's Inputs, Outputs and Secrets, read from the DescriptorProto its runtime registered.

What a field may be (docs/protocol.md, "Descriptors"): a valid identifier of at most LIMIT_MAX_NAME_LENGTH
characters, unique in its descriptor; numbered 1 to 536870911, uniquely, outside 19000-19999 (protobuf's reserved
range); TYPE_STRING; labelled LABEL_REQUIRED (no default_value) or LABEL_OPTIONAL (with a default_value, which the
scheduler fills in when the input is absent, or without one, and then the input may be absent). A field without a
label is refused rather than guessed at. Every refusal is INVALID_ARGUMENT naming the node and the field.

Schemas already in the store were accepted by an older scheduler under looser rules; they are read back leniently
(a field without a label is optional, as it was), so a restart never loses a registered node.
"""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto

from exosphere.errors import InvalidArgumentError

from .models import FieldSpec
from .names import MAX_NAME, shown

__all__ = ["MAX_FIELD_NUMBER", "RESERVED_NUMBERS", "fields_of"]

MAX_FIELD_NUMBER = 2**29 - 1
RESERVED_NUMBERS = range(19000, 20000)

REQUIRED = FieldDescriptorProto.LABEL_REQUIRED


def fields_of(node: str, label: str, descriptor: DescriptorProto, *, stored: bool = False) -> tuple[FieldSpec, ...]:
    """The fields of ``descriptor`` (the ``label`` model of ``node``); InvalidArgumentError names a bad one."""
    fields = []
    names: set[str] = set()
    numbers: dict[int, str] = {}
    for fd in descriptor.field:
        where = f"node {node!r} {label} field {shown(fd.name)}"
        if not fd.name.isidentifier() or len(fd.name) > MAX_NAME:
            raise InvalidArgumentError(f"{where}: not a valid field name (an identifier of at most {MAX_NAME} chars)")
        if fd.name in names:
            raise InvalidArgumentError(f"{where}: declared twice")
        names.add(fd.name)
        if fd.type != FieldDescriptorProto.TYPE_STRING:
            type_name = FieldDescriptorProto.Type.Name(fd.type) if fd.type else "unset"
            raise InvalidArgumentError(f"{where}: must be TYPE_STRING, got {type_name}")
        if fd.label == FieldDescriptorProto.LABEL_REPEATED:
            raise InvalidArgumentError(f"{where}: repeated fields are not supported")
        has_default = fd.HasField("default_value")
        if not stored:
            _check_strict(where, fd, numbers)
            if fd.label == REQUIRED and has_default:
                raise InvalidArgumentError(
                    f"{where}: LABEL_REQUIRED with a default_value; a field with a default is LABEL_OPTIONAL"
                )
        # Stored schemas: no label meant optional (protobuf reads an unset label as LABEL_OPTIONAL).
        required = fd.label == REQUIRED
        fields.append(FieldSpec(name=fd.name, required=required, default=fd.default_value if has_default else None))
    return tuple(fields)


def _check_strict(where: str, fd: FieldDescriptorProto, numbers: dict[int, str]) -> None:
    """The rules a registration meets and a stored schema may predate: labels and numbers."""
    if not fd.HasField("label"):
        raise InvalidArgumentError(
            f"{where}: no label; set LABEL_REQUIRED, or LABEL_OPTIONAL (with a default_value or without)"
        )
    number = fd.number
    if not 1 <= number <= MAX_FIELD_NUMBER:
        raise InvalidArgumentError(f"{where}: number {number} is outside 1..{MAX_FIELD_NUMBER}")
    if number in RESERVED_NUMBERS:
        raise InvalidArgumentError(
            f"{where}: number {number} is in {RESERVED_NUMBERS.start}-{RESERVED_NUMBERS.stop - 1}, which protobuf "
            "reserves"
        )
    if number in numbers:
        raise InvalidArgumentError(f"{where}: number {number} is already field {numbers[number]!r}")
    numbers[number] = fd.name
