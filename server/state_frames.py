"""A finished run's states encoded for a read straight from their stored rows: no StateRow, no message per state.

A first read of a finished run from SQLite cost the scheduler about 13 us per state (the row's conversion to a
StateRow with three JSON parses, ``state_to_pb``, serializing): more than the client takes to convert it, so the
read went at the scheduler's pace (issue 13). Here a row, as the store reads it (server/store.py ``READ_COLUMNS``),
becomes the bytes of one element of ``repeated State states = 2`` (server/snapshots.py), written by hand
(exosphere/wireformat.py). What repeats from state to state (run id, node, status, attempt, parent, runtime) is
encoded once per call, and so are timestamps. A map of strings as the store writes it (server/jsontext.py: compact
JSON) is cut at its quotes when it holds no escape, since then no string in it can hold a quote; any other JSON is
parsed. A row of a shape the store never writes (a column of another type, JSON of another shape, a status this
scheduler does not know) makes :func:`encode_rows` return None, and the caller reads those rows through the general
path, which reports them as it always did. The bytes parse to the message ``state_to_pb`` makes of the same row
(tests/unit/test_state_frames.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import cast

from exosphere.v1 import common_pb2
from exosphere.wireformat import varint

from .status import StateStatus

__all__ = ["encode_rows"]

# The statuses a stored row may hold (a StateRow's), as numbered on the wire; any other leaves the row to the general
# path, which reports it.
_STATUS = {
    name.removeprefix("STATE_STATUS_"): value
    for name, value in common_pb2.StateStatus.items()
    if name.removeprefix("STATE_STATUS_") in set(StateStatus)
}
_SMALL = [bytes((n,)) for n in range(128)]
_UINT32 = 1 << 32
_UINT64 = 1 << 64
_decode = json.JSONDecoder().decode

# Tags of State (scheduler.proto): field number << 3 | wire type (0 varint, 2 length-delimited).
_STATE = b"\x12"  # GetRunResponse.states / WatchRunResponse.states
_STATE_ID, _RUN_ID, _IDENTIFIER, _NODE_NAME, _STATUS_TAG = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x28"
_INPUTS, _OUTPUTS, _ERROR, _ATTEMPT, _PARENT_ID = b"\x32", b"\x3a", b"\x42", b"\x48", b"\x52"
_CREATED, _UPDATED, _PRUNED, _RUN_AT, _RUNTIME = b"\x58", b"\x60", b"\x6a", b"\x70", b"\x7a"
_STARTED, _RAN = b"\x80\x01", b"\x88\x01"
_FIELDS = b"\x0a"  # Outputs.fields
_KEY, _VALUE = b"\x0a", b"\x12"  # a map entry's key and value; StateError.message and .type
_TRACEBACK = b"\x1a"


class _Unusual(Exception):
    """A row of a shape the store does not write: left to the general path."""


def _size(n: int) -> bytes:
    return _SMALL[n] if n < 128 else varint(n)


def _string(tag: bytes, text: object) -> bytes:
    """A string field; nothing for "" (proto3 leaves defaults out)."""
    if type(text) is not str:
        raise _Unusual
    if not text:
        return b""
    data = text.encode()
    return tag + _size(len(data)) + data


def _entries(tag: bytes, pairs: Iterable[tuple[bytes, bytes]], parts: list[bytes]) -> None:
    """Append ``(key, value)`` (UTF-8) as the entries of the map field ``tag``."""
    for key, value in pairs:
        k, v = len(key), len(value)
        if k < 128 and v < 128:
            parts += (tag, _size(k + v + 4), _KEY, _SMALL[k], key, _VALUE, _SMALL[v], value)
        else:
            k_size, v_size = _size(k), _size(v)
            parts += (tag, _size(len(k_size) + k + len(v_size) + v + 2), _KEY, k_size, key, _VALUE, v_size, value)


def _parsed_pairs(value: object) -> list[tuple[bytes, bytes]]:
    """The entries of a parsed JSON object of strings."""
    if type(value) is not dict:
        raise _Unusual
    pairs = []
    for key, item in value.items():
        if type(item) is not str:
            raise _Unusual
        pairs.append((key.encode(), item.encode()))
    return pairs


def _map_shape(count: int) -> list[bytes]:
    """What lies between the quotes of a compact JSON object of ``count`` strings: ``{`` ``:`` ``,`` ... ``:`` ``}``."""
    shape = _MAP_SHAPES.get(count)
    if shape is None:
        shape = [b"{}"] if not count else [b"{", *[b":", b","] * (count - 1), b":", b"}"]
        if count < 64:
            _MAP_SHAPES[count] = shape
    return shape


_MAP_SHAPES: dict[int, list[bytes]] = {}


def _map(tag: bytes, text: object, parts: list[bytes]) -> None:
    """Append a stored JSON object of strings (``{"k":"v",...}``) as the map field ``tag``."""
    if type(text) is not str:
        raise _Unusual
    if "\\" not in text:  # no escapes: every quote delimits a string, so the tokens between quotes are known
        tokens = text.encode().split(b'"')
        if len(tokens) == 5 and tokens[0] == b"{" and tokens[2] == b":" and tokens[4] == b"}":  # one entry
            _entries(tag, ((tokens[1], tokens[3]),), parts)
            return
        if len(tokens) % 4 == 1 and tokens[::2] == _map_shape(len(tokens) // 4):
            _entries(tag, zip(tokens[1::4], tokens[3::4]), parts)  # noqa: B905 (lengths checked)
            return
    _entries(tag, _parsed_pairs(_decode(text)), parts)


def _outputs(text: object, parts: list[bytes]) -> None:
    """Append stored outputs (``[{"k":"v",...},...]``) as elements of ``outputs``."""
    if type(text) is not str:
        raise _Unusual
    if "\\" not in text:  # as in _map: "[{" key ":" value ("," or "},{") key ... "}]"
        tokens = text.encode().split(b'"')
        last = len(tokens) - 1
        if last == 4 and tokens[0] == b"[{" and tokens[2] == b":" and tokens[4] == b"}]":  # one output, one field
            fields: list[bytes] = []
            _entries(_FIELDS, ((tokens[1], tokens[3]),), fields)
            body = b"".join(fields)
            parts += (_OUTPUTS, _size(len(body)), body)
            return
        if tokens[0] == b"[{" and tokens[last] == b"}]" and not last % 4:
            encoded: list[bytes] = []
            fields = []
            for i in range(1, last, 4):
                separator = tokens[i + 3]
                if tokens[i + 1] != b":" or not (separator == b"," or separator == b"},{" or i + 3 == last):
                    break
                key, value = tokens[i], tokens[i + 2]
                k, v = len(key), len(value)
                if k + v < 124:  # _entries, inline (every size fits one byte): a fan-out's state has thousands
                    fields += (_FIELDS, _SMALL[k + v + 4], _KEY, _SMALL[k], key, _VALUE, _SMALL[v], value)
                else:
                    _entries(_FIELDS, ((key, value),), fields)
                if separator != b",":  # this output ends
                    body = b"".join(fields)
                    encoded += (_OUTPUTS, _size(len(body)), body)
                    fields = []
            else:
                parts += encoded
                return
        elif tokens == [b"[]"]:
            return
    outputs = _decode(text)
    if type(outputs) is not list:
        raise _Unusual
    for value in outputs:
        fields = []
        _entries(_FIELDS, _parsed_pairs(value), fields)
        body = b"".join(fields)
        parts += (_OUTPUTS, _size(len(body)), body)


def _error(text: object) -> bytes:
    """A stored error (a JSON object): its message, type and traceback as the field ``error``."""
    if type(text) is not str:
        raise _Unusual
    error = _decode(text)
    if type(error) is not dict:
        raise _Unusual
    if not error:  # state_to_pb leaves an empty one out
        return b""
    body = (
        _string(_KEY, error.get("message", ""))
        + _string(_VALUE, error.get("type", ""))
        + _string(_TRACEBACK, error.get("traceback", ""))
    )
    return _ERROR + _size(len(body)) + body


class _Encoder:
    """Frames of the rows of one run, with what repeats between them encoded once."""

    def __init__(self, run_id: str) -> None:
        self._prefix = f"{run_id}-".encode()
        self._run_id = _string(_RUN_ID, run_id)
        self._heads: dict[tuple[object, ...], tuple[bytes, bytes, bytes]] = {}
        # Per uint field: value -> the field as encoded (b"" for 0). Every timestamp of a run repeats: its states
        # are made, and run, a few dozen per millisecond.
        self._created: dict[object, bytes] = {}
        self._updated: dict[object, bytes] = {}
        self._run_at: dict[object, bytes] = {}
        self._started: dict[object, bytes] = {}
        self._ran: dict[object, bytes] = {}

    @staticmethod
    def _uint(memo: dict[object, bytes], tag: bytes, value: object, limit: int = _UINT64) -> bytes:
        """A uint field (nothing for 0), kept in ``memo``. The columns have INTEGER affinity, so SQLite hands out
        an integral value as an int: a float found in ``memo`` under the int it equals cannot come from it."""
        if type(value) is not int or not 0 <= value < limit:
            raise _Unusual
        encoded = memo[value] = tag + varint(value) if value else b""
        return encoded

    def _times(self, *values: object) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """The fields created, updated, run at, started and ran, of a row with one not encoded yet."""
        created, updated, run_at, started, ran = values
        return (
            self._uint(self._created, _CREATED, created),
            self._uint(self._updated, _UPDATED, updated),
            self._uint(self._run_at, _RUN_AT, run_at),
            self._uint(self._started, _STARTED, started),
            self._uint(self._ran, _RAN, ran),
        )

    def _head(self, key: tuple[object, ...]) -> tuple[bytes, bytes, bytes]:
        """The fields a row shares with others of its node: (run id to status, attempt and parent, runtime)."""
        identifier, node_name, status, attempt, parent_id, runtime_name = key
        number = _STATUS.get(status) if type(status) is str else None
        if number is None:
            raise _Unusual
        head = (
            self._run_id
            + _string(_IDENTIFIER, identifier)
            + _string(_NODE_NAME, node_name)
            + (_STATUS_TAG + varint(number) if number else b""),
            self._uint({}, _ATTEMPT, attempt, _UINT32)
            + (_string(_PARENT_ID, parent_id) if parent_id is not None else b""),
            _string(_RUNTIME, runtime_name),
        )
        self._heads[key] = head
        return head

    def frame(self, row: tuple[object, ...], seqs: list[int]) -> bytes:
        """The frame of ``row``; its sequence number is appended to ``seqs``."""
        (seq, identifier, node_name, status, inputs, attempt, parent_id, outputs, error, pruned,
         created, updated, run_at, runtime_name, started, ran) = row  # fmt: skip
        key = (identifier, node_name, status, attempt, parent_id, runtime_name)
        head = self._heads.get(key) or self._head(key)
        if type(seq) is not int or seq < 0:
            raise _Unusual
        seqs.append(seq)
        state_id = self._prefix + b"%d" % seq
        parts = [_STATE_ID, _size(len(state_id)), state_id, head[0]]
        _map(_INPUTS, inputs, parts)
        if outputs is not None:
            _outputs(outputs, parts)
        if error is not None:
            parts.append(_error(error))
        found = (
            self._created.get(created),
            self._updated.get(updated),
            self._run_at.get(run_at),
            self._started.get(started),
            self._ran.get(ran),
        )
        times = (
            cast("tuple[bytes, ...]", found)
            if None not in found
            else self._times(created, updated, run_at, started, ran)
        )
        parts += (
            head[1],
            times[0],
            times[1],
            _string(_PRUNED, pruned) if pruned is not None else b"",
            times[2],
            head[2],
            times[3],
            times[4],
        )
        body = b"".join(parts)
        return _STATE + _size(len(body)) + body


def encode_rows(run_id: str, rows: Sequence[tuple[object, ...]]) -> tuple[list[int], list[bytes]] | None:
    """The sequence numbers of ``rows`` (states of ``run_id`` as stored, in ``READ_COLUMNS``) and each as one element
    of ``states = 2``; None when one of them is not of the shape the store writes (the caller reads them through the
    general path)."""
    encoder = _Encoder(run_id)
    seqs: list[int] = []
    try:
        return seqs, [encoder.frame(row, seqs) for row in rows]
    except (_Unusual, ValueError):  # ValueError: not JSON, or text that is not UTF-8 (a lone surrogate)
        return None
