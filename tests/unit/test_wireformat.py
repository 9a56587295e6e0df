"""Protobuf framing by hand (exosphere/wireformat.py) is protobuf's own encoding."""

from __future__ import annotations

from exosphere.v1 import runtime_pb2 as pb
from exosphere.wireformat import field, framed_size, repeated, varint

SIZES = [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152, 2**35]


def test_varints_are_protobufs() -> None:
    assert varint(0) == b"\x00"
    for value in SIZES[1:]:  # protobuf leaves a zero out of the message
        assert b"\x08" + varint(value) == pb.RequeueAfter(delay_ms=value).SerializeToString()


def test_framed_items_parse_as_the_repeated_field_and_their_sizes_are_what_framing_adds() -> None:
    results = [pb.Result(state_id="s" * n, attempt=1).SerializeToString() for n in (0, 1, 126, 200, 20_000)]
    message = field(b"\x12", repeated(b"\x0a", results))
    assert (
        message
        == pb.RuntimeMessage(
            results=pb.ResultBatch(results=[pb.Result.FromString(r) for r in results])
        ).SerializeToString()
    )
    for size in SIZES[:-1]:
        assert framed_size(size) == len(repeated(b"\x0a", [b"x" * size]))
