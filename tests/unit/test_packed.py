"""Outputs kept as their row's JSON text read like the list of dicts they were made from."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence

import pytest

from server.jsontext import str_maps
from server.packed import PackedOutputs, as_list, field_values_json, outputs_json, pack


def test_packed_outputs_read_as_the_outputs_they_were_made_from() -> None:
    outputs = [{"y": "1", "z": 'é"\n'}, {"y": "2"}]
    packed = pack(outputs)
    assert isinstance(packed, PackedOutputs) and packed.json == str_maps(outputs)
    assert packed == outputs and outputs == packed and packed != [{"y": "1"}] and packed != "not outputs"
    assert packed == pack([dict(o) for o in outputs])
    assert len(packed) == 2 and bool(packed) and not pack([]) and pack([]) == []
    assert packed[1] == {"y": "2"} and packed[-1:] == [{"y": "2"}] and list(packed) == outputs
    assert packed[0] is not packed[0]  # fresh dicts: a reader cannot change what the row holds
    assert copy.deepcopy(packed) is packed and copy.copy(packed) is packed and pack(packed) is packed
    assert outputs_json(packed) is packed.json and outputs_json(outputs) == packed.json
    assert repr(packed) == repr(outputs)
    assert json.loads(packed.json) == outputs


def test_field_values_reads_many_states_in_order_across_decode_chunks() -> None:
    outputs: list[list[dict[str, str]] | PackedOutputs | None] = []
    for i in range(2_500):
        branch = [{"item": str(i)}, {"other": "x"}] if i % 7 else [{"item": str(i)}]
        outputs.append(pack(branch) if i % 3 else branch)
        if i % 500 == 0:
            outputs.append(None)  # a branch that returned no outputs
            outputs.append(pack([]))
    assert field_values_json("item", outputs) == json.dumps([str(i) for i in range(2_500)], ensure_ascii=False)
    assert field_values_json("missing", outputs) == "[]" == field_values_json("item", [])
    assert field_values_json("y", [pack([{"y": 'é"'}]), [{"y": "2"}]]) == json.dumps(['é"', "2"], ensure_ascii=False)


def test_every_read_of_packed_outputs_decodes_the_text_once(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = [{"y": str(i)} for i in range(50)]
    packed = pack(outputs)
    decodes = 0
    decoded = PackedOutputs.decoded

    def counted(self: PackedOutputs) -> list[dict[str, str]]:
        nonlocal decodes
        decodes += 1
        return decoded(self)

    monkeypatch.setattr(PackedOutputs, "decoded", counted)
    reads: list[tuple[Callable[[Sequence[dict[str, str]]], object], object]] = [
        (lambda o: {"y": "49"} in o, True),
        (lambda o: {"y": "x"} in o, False),
        (lambda o: list(reversed(o)), outputs[::-1]),
        (lambda o: o.index({"y": "42"}), 42),
        (lambda o: o.index({"y": "42"}, 10, 45), 42),
        (lambda o: o.count({"y": "3"}), 1),
        (lambda o: o[7], {"y": "7"}),
        (lambda o: o[-2:], outputs[-2:]),
        (lambda o: len(o), 50),
        (lambda o: [dict(each) for each in o], outputs),
        (as_list, outputs),
        (lambda o: o == outputs, True),
    ]
    for read, expected in reads:
        decodes = 0
        assert read(packed) == expected == read(outputs)
        assert decodes == 1, (read, expected)
    decodes = 0
    assert list(packed) == outputs and decodes == 2  # list() asks the length first: as_list() decodes once
    assert as_list(packed) is not as_list(packed)  # a fresh list each time
    with pytest.raises(ValueError):
        packed.index({"y": "42"}, 43)
