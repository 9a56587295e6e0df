"""Result batches written already serialized (exosphere/_stream.py) parse as the batch they stand for."""

from __future__ import annotations

from exosphere._stream import CONNECT, results_message
from exosphere.v1 import runtime_pb2 as pb
from exosphere.wireformat import passthrough


def test_a_results_message_is_the_runtime_message_of_its_results() -> None:
    results = []
    for i in range(300):
        result = pb.Result(state_id=f"run-{i}", attempt=1, dispatch_id=i)
        result.executed.outputs.add().fields["item"] = "é" * i
        results.append(result)
    data = results_message([r.SerializeToString() for r in results])
    assert pb.RuntimeMessage.FromString(data) == pb.RuntimeMessage(results=pb.ResultBatch(results=results))
    assert passthrough(data) is data
    heartbeat = pb.RuntimeMessage(heartbeat=pb.Heartbeat(in_flight=3))
    assert passthrough(heartbeat) == heartbeat.SerializeToString()


def test_the_stream_method_is_the_protos() -> None:
    service = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    assert CONNECT == f"/{service.full_name}/{service.methods_by_name['Connect'].name}"
