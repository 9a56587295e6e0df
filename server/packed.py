"""A finished state's outputs kept as the JSON text of its row, decoded only where they are read again.

A live run holds every state it made until it ends, and the outputs of a state with no next nodes are read again
only by a merge (once, for all its branches), by a read of the live run, and by the row written for them. As a
list of dicts an output ``{"item": "7"}`` costs about 310 bytes; as the row's JSON text, shared with the row, about
110. A state whose outputs its children read (their inputs are often those very dicts) keeps them decoded: reading
a packed output there would decode them all for each child.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, overload

from .jsontext import str_map, str_maps

__all__ = ["PackedOutputs", "as_list", "field_values_json", "outputs_json", "pack"]

# States whose packed outputs a merge decodes in one parse: all 100,000 at once took 20-30 MB more for a moment.
_DECODE_CHUNK = 1024


class PackedOutputs(Sequence[dict[str, str]]):
    """Outputs as their JSON text (what ``jsontext.str_maps`` writes), read as a sequence of fresh dicts.

    Immutable: copies are the object itself. Equal to any sequence of the same outputs. Every read decodes the whole
    text once (an item, the length, a test for an item, a search): read many, take ``decoded()`` once.
    """

    __slots__ = ("json",)

    def __init__(self, text: str) -> None:
        self.json = text

    def decoded(self) -> list[dict[str, str]]:
        value: list[dict[str, str]] = json.loads(self.json)
        return value

    @overload
    def __getitem__(self, index: int) -> dict[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, str]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, str] | list[dict[str, str]]:
        return self.decoded()[index]

    def __len__(self) -> int:
        return len(self.decoded())

    def __bool__(self) -> bool:
        return self.json != "[]"

    def __iter__(self) -> Iterator[dict[str, str]]:
        return iter(self.decoded())

    # Sequence's own versions of these read an item at a time, and each item here decodes the whole text.
    def __contains__(self, value: object) -> bool:
        return value in self.decoded()

    def __reversed__(self) -> Iterator[dict[str, str]]:
        return reversed(self.decoded())

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return self.decoded().index(value, start, stop)

    def count(self, value: Any) -> int:
        return self.decoded().count(value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedOutputs):
            return self.json == other.json
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return self.decoded() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.decoded())

    def __copy__(self) -> PackedOutputs:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedOutputs:
        return self


def pack(outputs: Sequence[dict[str, str]]) -> PackedOutputs:
    if isinstance(outputs, PackedOutputs):
        return outputs
    # One output, the common case: its text without str_maps' list and join (0.3 us less per state).
    return PackedOutputs("[" + str_map(outputs[0]) + "]" if len(outputs) == 1 else str_maps(outputs))


def as_list(outputs: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Outputs as a new list, packed ones decoded once (``list()`` asks their length first: a decode more)."""
    return outputs.decoded() if isinstance(outputs, PackedOutputs) else list(outputs)


def outputs_json(outputs: Sequence[dict[str, str]]) -> str:
    """The JSON text of a state's outputs, as its row stores it (the packed text itself, not a copy)."""
    return outputs.json if isinstance(outputs, PackedOutputs) else str_maps(outputs)


def field_values_json(field: str, outputs: Sequence[Sequence[dict[str, str]] | None]) -> str:
    """The values of ``field`` in the outputs of many states, in order, as a JSON array (what a merge reads of every
    branch, the text ``json.dumps(values, ensure_ascii=False)`` makes). Packed outputs are decoded a chunk of states
    per parse and written a chunk at a time: one parse per state cost five times more, all of them at once (or a list
    of every value) 20-30 MB more memory for a 100,000-branch merge."""
    parts: list[str] = []
    for start in range(0, len(outputs), _DECODE_CHUNK):
        chunk = outputs[start : start + _DECODE_CHUNK]
        packed = [o.json for o in chunk if type(o) is PackedOutputs]
        if len(packed) == len(chunk):  # the common case, all packed: no test per state
            values = [o[field] for outs in json.loads("[" + ",".join(packed) + "]") for o in outs if field in o]
        else:
            parsed: Iterator[list[dict[str, str]]] = iter(json.loads("[" + ",".join(packed) + "]") if packed else ())
            values = [
                o[field]
                for each in chunk
                for o in (next(parsed) if type(each) is PackedOutputs else each or ())
                if field in o
            ]
        if values:
            parts.append(json.dumps(values, ensure_ascii=False)[1:-1])
    return "[" + ", ".join(parts) + "]"
