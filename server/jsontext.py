"""JSON text of the shapes the store writes per state, without the general encoder's per-call overhead.

``json.JSONEncoder.encode`` costs about 1 us per call before it writes a byte; a state's row needs three or four
(inputs, path, outputs). A map of strings is written here with the encoder's own C string escaper, so the text is
the same as ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``; any other value goes to that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring  # the C escaper when available
from typing import Any

__all__ = ["dumps", "int_list", "str_map", "str_maps"]

dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def str_map(value: Mapping[str, Any]) -> str:
    """A JSON object of a map of strings (anything else is encoded by :data:`dumps`)."""
    try:
        if len(value) == 1:  # the common output or input: without a list and a join, 0.1 us less
            for k, v in value.items():
                return "{" + encode_basestring(k) + ":" + encode_basestring(v) + "}"
        return "{" + ",".join([encode_basestring(k) + ":" + encode_basestring(v) for k, v in value.items()]) + "}"
    except TypeError:  # a key or value that is not a str
        return dumps(value)


def str_maps(values: Sequence[Mapping[str, Any]]) -> str:
    """A JSON array of maps of strings (a state's outputs)."""
    return "[" + ",".join([str_map(v) for v in values]) + "]"


def int_list(values: Sequence[int]) -> str:
    """A JSON array of ints (a state's path)."""
    if not values:
        return "[]"
    for v in values:  # a loop, not all() over a generator: 0.2 us less for a path of two
        if type(v) is not int:
            return dumps(values)
    return "[" + ",".join(map(str, values)) + "]"
