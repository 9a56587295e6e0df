"""Outputs kept as their row's JSON text read like the list of dicts they were made from."""

from __future__ import annotations

import copy
import json

from server.jsontext import str_maps
from server.packed import PackedOutputs, field_values_json, outputs_json, pack


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
