"""A batch of results decodes as each result alone does (server/wire.py: the inline common case and the rest)."""

from __future__ import annotations

import sys

from exosphere.v1 import runtime_pb2 as pb
from server.sizes import MAX_OUTPUTS_BYTES, MAX_OUTPUTS_PER_RESULT
from server.status import ResultKind
from server.wire import result_from_pb, results_from_pb


def _executed(state_id: str, *outputs: dict[str, str]) -> pb.Result:
    result = pb.Result(state_id=state_id, attempt=1, dispatch_id=7)
    result.executed.SetInParent()
    for fields in outputs:
        result.executed.outputs.add().fields.update(fields)
    return result


def test_results_from_pb_matches_result_from_pb_for_every_kind() -> None:
    batch = pb.ResultBatch()
    batch.results.append(_executed("r-1", {"item": "x"}, {"item": "é" * 10}))
    batch.results.append(_executed("r-2"))
    with_writes = _executed("r-3", {"item": "y"})
    with_writes.store_writes["cursor"] = "9"
    batch.results.append(with_writes)
    bad_key = _executed("r-4", {"item": "z"})
    bad_key.store_writes["bad key!"] = "1"
    batch.results.append(bad_key)
    errored = batch.results.add(state_id="r-5", dispatch_id=8)
    errored.errored.message = "boom"
    batch.results.add(state_id="r-6", dispatch_id=9).pruned.data_json = '{"a": 1}'
    batch.results.add(state_id="r-7", dispatch_id=10).requeue_after.delay_ms = 5
    batch.results.add(state_id="r-8", dispatch_id=11)  # no outcome
    batch.results.append(_executed("r-9", *({"i": str(i)} for i in range(MAX_OUTPUTS_PER_RESULT + 1))))
    batch.results.append(_executed("r-10", {"big": "é" * (MAX_OUTPUTS_BYTES // 2 + 1)}))
    parsed = pb.ResultBatch.FromString(batch.SerializeToString()).results
    decoded = results_from_pb(parsed)
    assert decoded == [result_from_pb(r) for r in parsed]
    kinds = [r.kind for r in decoded]
    assert kinds[:3] == [ResultKind.EXECUTED] * 3 and decoded[0].outputs == [{"item": "x"}, {"item": "é" * 10}]
    assert decoded[2].store_writes == {"cursor": "9"} and decoded[3].kind == ResultKind.ERRORED
    assert decoded[8].error is not None and decoded[8].error["type"] == "TooManyOutputsError"
    assert decoded[9].error is not None and decoded[9].error["type"] == "ResultTooLargeError"  # counted in bytes
    # Output names are interned: a run's outputs repeat a few names, kept once.
    assert all(key is sys.intern("item") for r in decoded[:3] for out in r.outputs for key in out)
