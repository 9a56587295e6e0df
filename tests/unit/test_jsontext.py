"""The store's JSON text of maps of strings, paths and outputs is the general encoder's, byte for byte."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from server.jsontext import dumps, int_list, str_map, str_maps


def _reference(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@given(st.dictionaries(st.text(), st.text()))
def test_a_map_of_strings_is_written_as_json_dumps_writes_it(value: dict[str, str]) -> None:
    assert str_map(value) == _reference(value)
    assert json.loads(str_map(value)) == value


@given(st.lists(st.dictionaries(st.text(), st.text(), max_size=3), max_size=4))
def test_outputs_are_written_as_json_dumps_writes_them(value: list[dict[str, str]]) -> None:
    assert str_maps(value) == _reference(value)


@given(st.lists(st.integers()).map(tuple))
def test_a_path_is_written_as_json_dumps_writes_it(value: tuple[int, ...]) -> None:
    assert int_list(value) == _reference(value)


def test_values_that_are_not_strings_fall_back_to_the_general_encoder() -> None:
    odd: dict[Any, Any] = {"n": 1, 2: "two", "none": None}
    assert str_map(odd) == dumps(odd) == _reference(odd)
    assert int_list((True, 2)) == _reference((True, 2))


def test_a_map_of_one_value_that_is_not_a_string_falls_back_too() -> None:
    odd: list[dict[Any, Any]] = [{"n": 1}, {2: "two"}, {"none": None}]
    for value in odd:
        assert str_map(value) == _reference(value)
    assert str_maps([{"n": 1}]) == _reference([{"n": 1}])
