"""Sizes: every limit on what travels or is stored, in bytes or items, and the helpers that cut batches and pages
by size as they are built (the wire counts bytes, not items)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from exosphere.errors import InvalidArgumentError
from exosphere.v1 import common_pb2
from exosphere.wireformat import framed_size

T = TypeVar("T", bound=Message)
R = TypeVar("R")

# Limits on what a client may send, so no request can exhaust the scheduler.
MAX_GRAPH_NODES = 10_000
# A result fanning out wider than this fails its state: 100,000 outputs in one result stalled the event loop for a
# second and took 150 MB; 10,000 is the widest fan-out we benchmark and keeps one result's work near 0.1 s.
MAX_OUTPUTS_PER_RESULT = common_pb2.LIMIT_MAX_OUTPUTS_PER_RESULT

# A state's outputs, values in UTF-8 bytes (as exosphere/_executor.py MAX_RESULT_BYTES): with its inputs (at most
# 32 MiB, server/resolve.py) a state always fits one message of a read.
MAX_OUTPUTS_BYTES = 16 * 1024 * 1024

# An error's message and traceback are kept to this many characters each (and its type to MAX_ERROR_TYPE): they are
# for people, and a state (read with its inputs and outputs) must fit one message.
MAX_ERROR_TEXT = 64 * 1024
MAX_ERROR_TYPE = 256

# A run's store travels with every dispatch and every read of the run, so it is bounded: keys and values together,
# UTF-8 bytes. 16 MiB, as a node's outputs: an Execute item then has room for inputs and secrets.
MAX_STORE_BYTES = 16 * 1024 * 1024

# The wire counts bytes, so batches and pages are cut by size (measured with ByteSize as they are built).
MAX_MESSAGE_BYTES = common_pb2.LIMIT_MAX_MESSAGE_BYTES
# Room kept in every message for what surrounds the items (the run of a page, oneof and length prefixes).
_ENVELOPE_BYTES = 64 * 1024
# The largest single item (Execute, State, Run...) a message can carry.
MAX_ITEM_BYTES = MAX_MESSAGE_BYTES - _ENVELOPE_BYTES
# A batch on the runtime stream stops growing here (a bigger item still travels alone): small messages let the two
# processes overlap, as the item-count cap does.
BATCH_BYTES = 4 * 1024 * 1024
# A page of a read (GetRun, ListRuns, WatchRun events...) stops growing here.
PAGE_BYTES = 16 * 1024 * 1024
# A run's final snapshot on its watch stream travels in events of about this size: the client converts one while the
# scheduler encodes the next, and the event loop is never held long by one.
SNAPSHOT_EVENT_BYTES = 256 * 1024


def cut_by_size(items: Sequence[T], *, budget: int = PAGE_BYTES, reserved: int = 0) -> int:
    """How many leading ``items`` (protobuf messages) fit in ``budget`` bytes; at least one when any."""
    size = reserved
    for count, item in enumerate(items):
        size += framed_size(item.ByteSize())
        if size > budget and count:
            return count
    return len(items)


def take_by_size(
    rows: Iterable[R], to_pb: Callable[[R], T], *, budget: int = PAGE_BYTES, reserved: int = 0
) -> tuple[list[T], bool]:
    """Convert ``rows`` until the next would pass ``budget`` bytes (at least one); returns them and whether every
    row was taken."""
    size = reserved
    messages: list[T] = []
    for row in rows:
        message = to_pb(row)
        size += framed_size(message.ByteSize())
        if size > budget and messages:
            return messages, False
        messages.append(message)
    return messages, True


def chunks_by_size(
    rows: Iterable[R], to_pb: Callable[[R], T], *, budget: int = PAGE_BYTES, reserved: int = 0
) -> Iterator[list[T]]:
    """``rows`` converted as they are taken, in consecutive chunks that each fit in ``budget`` bytes (an item too big
    for one travels alone); one empty chunk when there are none. Lazy: a chunk is sent before the next is built."""
    size = reserved
    chunk: list[T] = []
    for row in rows:
        message = to_pb(row)
        item = framed_size(message.ByteSize())
        if chunk and size + item > budget:
            yield chunk
            size, chunk = reserved, []
        size += item
        chunk.append(message)
    yield chunk


def text_bytes(text: str) -> int:
    """UTF-8 size of ``text``; O(1) for ASCII (CPython knows a string is ASCII without scanning it)."""
    return len(text) if text.isascii() else len(text.encode())


def store_bytes(store: Mapping[str, str]) -> int:
    """Size of a run's store as the limit counts it: UTF-8 bytes of every key and value."""
    return sum(text_bytes(k) + text_bytes(v) for k, v in store.items())


def check_store_size(what: str, store: Mapping[str, str]) -> None:
    size = store_bytes(store)
    if size > MAX_STORE_BYTES:
        raise InvalidArgumentError(f"{what} is {size} bytes; a run's store may hold at most {MAX_STORE_BYTES}")


def cut_text(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters saying how much was left out (error text is for people)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def too_many_outputs(count: int) -> str:
    """The error of a result with more outputs than allowed (exosphere/_executor.py words it the same)."""
    return (
        f"a result may carry at most {MAX_OUTPUTS_PER_RESULT} outputs (LIMIT_MAX_OUTPUTS_PER_RESULT), got {count}: "
        "fan out in stages, or return fewer, larger outputs"
    )
