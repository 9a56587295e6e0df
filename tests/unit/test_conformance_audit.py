"""The conformance kit's judgements on recordings and descriptors made by hand (no sockets)."""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import FieldDescriptorProto

from examples.conformance.python_runtime import NODES as PYTHON_NODES
from exosphere._convert import node_to_schema
from exosphere.conformance.audit import audit_credit
from exosphere.conformance.checks_lifecycle import DrainStep, judge_drain
from exosphere.conformance.recording import Recorder, StreamRecord
from exosphere.conformance.spec import NODES, check_schema
from exosphere.v1 import common_pb2
from exosphere.v1 import runtime_pb2 as pb


def _stream(recorder: Recorder, credit: int) -> StreamRecord:
    stream = recorder.open_stream()
    recorder.up(stream, pb.RuntimeMessage(register=pb.Register(namespace="ns", max_concurrency=credit)))
    recorder.down(stream, pb.SchedulerMessage(registered=pb.Registered(session_id="s")))
    return stream


def _execute(recorder: Recorder, stream: StreamRecord, *dispatches: int) -> None:
    items = [pb.Execute(state_id=f"state-{d}", dispatch_id=d, attempt=1) for d in dispatches]
    recorder.down(stream, pb.SchedulerMessage(execute=pb.ExecuteBatch(items=items)))


def _answer(recorder: Recorder, stream: StreamRecord, *dispatches: int, state: str = "", attempt: int = 1) -> None:
    results = []
    for d in dispatches:
        result = pb.Result(state_id=state or f"state-{d}", dispatch_id=d, attempt=attempt)
        result.executed.SetInParent()
        results.append(result)
    recorder.up(stream, pb.RuntimeMessage(results=pb.ResultBatch(results=results)))


def test_a_runtime_that_answers_each_execute_once_passes() -> None:
    recorder = Recorder()
    stream = _stream(recorder, credit=2)
    _execute(recorder, stream, 1, 2)
    _answer(recorder, stream, 1)
    _execute(recorder, stream, 3)
    _answer(recorder, stream, 2, 3)
    audit = audit_credit(recorder)
    assert audit.problems == []
    assert (audit.executes, audit.results, audit.peaks) == (3, 3, {1: (2, 2)})


def test_duplicate_unknown_and_mismatched_results_are_found() -> None:
    recorder = Recorder()
    stream = _stream(recorder, credit=4)
    _execute(recorder, stream, 1, 2, 3)
    _answer(recorder, stream, 1)
    _answer(recorder, stream, 1)  # twice
    _answer(recorder, stream, 99)  # never sent
    _answer(recorder, stream, 2, state="state-3")  # wrong state
    _answer(recorder, stream, 3, attempt=2)  # wrong attempt
    problems = audit_credit(recorder).problems
    assert problems == [
        "stream 1: a second result: state state-1 dispatch_id 1",
        "stream 1: a result for a dispatch never sent on this stream: state state-99 dispatch_id 99",
        "stream 1: result for dispatch_id 2 echoes state state-3 attempt 1, the Execute said state state-2 attempt 1",
        "stream 1: result for dispatch_id 3 echoes state state-3 attempt 2, the Execute said state state-3 attempt 1",
    ]


def test_a_cancelled_state_frees_its_credit_and_may_be_acknowledged_once() -> None:
    recorder = Recorder()
    stream = _stream(recorder, credit=1)
    _execute(recorder, stream, 1)
    recorder.down(stream, pb.SchedulerMessage(cancel=pb.CancelBatch(state_ids=["state-1"])))
    _execute(recorder, stream, 2)  # the credit the cancel freed
    _answer(recorder, stream, 1)  # the acknowledgement
    _answer(recorder, stream, 2)
    audit = audit_credit(recorder)
    assert (audit.problems, audit.cancel_acks, audit.peaks) == ([], 1, {1: (1, 1)})


def test_more_outstanding_than_the_credit_is_found() -> None:
    recorder = Recorder()
    stream = _stream(recorder, credit=1)
    _execute(recorder, stream, 1, 2)
    assert audit_credit(recorder).problems == [
        "stream 1: 2 states outstanding at once, over max_concurrency 1",
        "stream 1: 2 states never answered (state-1, state-2)",
    ]
    recorder.closed(stream, "UNAVAILABLE: lease expired")  # unanswered when the stream ended: requeued, not judged
    assert audit_credit(recorder).problems == ["stream 1: 2 states outstanding at once, over max_concurrency 1"]


def test_the_python_conformance_nodes_match_the_spec() -> None:
    schemas = {node.__name__: node_to_schema(node) for node in PYTHON_NODES}
    assert sorted(schemas) == sorted(spec.name for spec in NODES)
    for spec in NODES:
        assert check_schema(schemas[spec.name], spec) == []


def test_descriptor_problems_are_named() -> None:
    spec = next(s for s in NODES if s.name == "StoreWrite")
    schema = common_pb2.NodeSchema(name="StoreWrite")
    schema.inputs.field.add(name="value", number=1, type=FieldDescriptorProto.TYPE_STRING)
    schema.inputs.field.add(
        name="key", number=3, type=FieldDescriptorProto.TYPE_INT32, label=FieldDescriptorProto.LABEL_REQUIRED
    )
    schema.outputs.field.add(
        name="key",
        number=1,
        type=FieldDescriptorProto.TYPE_STRING,
        label=FieldDescriptorProto.LABEL_OPTIONAL,
        default_value="k",
    )
    assert check_schema(schema, spec) == [
        "StoreWrite.Inputs fields are ['value', 'key'], expected ['key', 'value']",
        "StoreWrite.Inputs.value is without a label, expected LABEL_REQUIRED without a default",
        "StoreWrite.Inputs.key has type TYPE_INT32, expected TYPE_STRING",
        "StoreWrite.Inputs.key is numbered 3, expected 2 (declaration order)",
        "StoreWrite.Outputs.key is LABEL_OPTIONAL, expected LABEL_REQUIRED without a default",
    ]


def _drain_step(recorder: Recorder) -> tuple[StreamRecord, DrainStep]:
    stream = _stream(recorder, credit=1)
    _execute(recorder, stream, 7)
    return stream, DrainStep(stream, "state-7", 7, "run", stopped_at=recorder.now(), exit_status=0)


def _judge(recorder: Recorder, step: DrainStep) -> tuple[list[str], list[str]]:
    step.restarted_at = recorder.now()
    return judge_drain(list(recorder.of(step.stream.number, since=step.stopped_at)), step)


def test_a_runtime_that_drains_in_order_passes() -> None:
    recorder = Recorder()
    stream, step = _drain_step(recorder)
    recorder.down(stream, pb.SchedulerMessage(drain=pb.Drain(grace_ms=3000)))
    recorder.up(stream, pb.RuntimeMessage(draining=pb.Draining()))
    _answer(recorder, stream, 7)
    recorder.half_closed(stream)
    recorder.closed(stream, "OK")
    sequence, problems = _judge(recorder, step)
    assert problems == []
    assert [part.split(" +")[0] for part in sequence] == [
        "drain(grace 3000 ms)",
        "draining",
        "result",
        "half-close",
        "closed OK",
    ]


def test_drain_problems_are_named() -> None:
    recorder = Recorder()
    stream, step = _drain_step(recorder)
    recorder.down(stream, pb.SchedulerMessage(drain=pb.Drain(grace_ms=3000)))
    recorder.half_closed(stream)  # before its result, and without Draining
    recorder.closed(stream, "UNAVAILABLE: scheduler shutting down (drain grace of 3s over)")
    _answer(recorder, stream, 7)  # too late
    _, problems = _judge(recorder, step)
    assert problems == [
        "no draining before the stream ended",
        "no result before the stream ended",
        "half-closed before sending the result",
    ]

    recorder = Recorder()
    stream, step = _drain_step(recorder)
    recorder.closed(stream, "UNAVAILABLE: scheduler shutting down")  # a scheduler that does not drain
    _, problems = _judge(recorder, step)
    assert problems[0] == "the scheduler sent no Drain"


def test_results_the_scheduler_rejected_are_problems() -> None:
    recorder = Recorder()
    stream = _stream(recorder, credit=1)
    rejected = pb.RejectedResult(
        state_id="s", dispatch_id=5, attempt=1, reason=pb.REJECT_REASON_NOT_HELD, message="not outstanding here"
    )
    recorder.down(stream, pb.SchedulerMessage(results_rejected=pb.ResultsRejected(results=[rejected])))
    assert audit_credit(recorder).problems == [
        "stream 1: the scheduler rejected the result for state s dispatch_id 5 (NOT_HELD: not outstanding here)"
    ]
