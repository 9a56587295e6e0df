"""Protobuf's wire format by hand, for messages built from parts already serialized.

A batch of items serialized one by one (a runtime's results, the scheduler's Execute items, a finished run's states)
becomes its message by framing, not by copying each item into a message object and serializing it again: an element
of a length-delimited field is its tag, its length as a varint, and its bytes (protobuf's encoding guide). The SDK
and the scheduler both frame this way; this module imports only the standard library, which is why the scheduler may
import it (besides ``exosphere.v1``, ``exosphere.errors`` and ``exosphere.logs``, nothing else of the SDK).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["field", "framed_size", "passthrough", "repeated", "varint"]

_SMALL = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    """``value`` (not negative) as a base-128 varint."""
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def framed_size(size: int) -> int:
    """Bytes an item of ``size`` bytes takes as one element of a field numbered below 16 (tag and length prefix)."""
    return size + 1 + (size.bit_length() + 6) // 7 if size else 2


def field(tag: bytes, data: bytes) -> bytes:
    """``data`` as one length-delimited field: ``tag`` (field number << 3 | 2, as bytes), its length, itself."""
    return tag + varint(len(data)) + data


def repeated(tag: bytes, items: Sequence[bytes]) -> bytes:
    """Serialized ``items`` as the elements of one repeated length-delimited field."""
    return b"".join([part for item in items for part in (tag, varint(len(item)), item)])


def passthrough(message: Any) -> bytes:
    """A gRPC serializer for a stream that writes messages and bytes already serialized alike."""
    if type(message) is bytes:
        return message
    data: bytes = message.SerializeToString()
    return data
