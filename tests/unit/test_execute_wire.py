"""Execute batches built as bytes (server/execute_wire.py) parse as the messages they stand for."""

from __future__ import annotations

from exosphere.v1 import runtime_pb2 as pb
from exosphere.wireformat import passthrough
from server.execute_wire import SharedParts, execute_bytes, execute_message
from server.graph import CompiledNode
from server.models import RetryPolicySpec
from server.runstate import Run, State
from server.runtime_api import SERVICE, RuntimeApi, add_runtime_service
from server.status import RunStatus, StateStatus


def _state(run: Run, node: CompiledNode, seq: int, inputs: dict[str, str], **extra: object) -> State:
    state = State(
        state_id=f"{run.run_id}-{seq}", run_id=run.run_id, identifier=node.identifier, node_name=node.node_name,
        status=StateStatus.QUEUED, inputs=inputs, attempt=2, parent_id=None, parent_output=0, path=(), seq=seq,
        run=run, node=node, dispatch_id=1000 + seq, deadline_ms=1_764_000_000_000 + seq,
    )  # fmt: skip
    for name, value in extra.items():
        setattr(state, name, value)
    return state


def _fixtures() -> tuple[Run, CompiledNode]:
    node = CompiledNode(
        identifier="work", node_name="Work", namespace="ns", inputs={}, literal_inputs={},
        retry=RetryPolicySpec(), timeout_ms=0, secrets={"api_key": "k3y"},
    )  # fmt: skip
    run = Run(
        run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING,
        store={"cursor": "7", "wide": "é" * 300},
    )  # fmt: skip
    return run, node


def test_an_item_is_the_execute_message_of_its_state() -> None:
    run, node = _fixtures()
    state = _state(run, node, 3, {"item": "ü" * 200, "n": "1"}, traceparent="00-abc-def-01")
    shared = SharedParts()
    item = pb.Execute.FromString(execute_bytes(state, state.inputs, shared))
    assert item == pb.Execute(
        state_id="r1-3", run_id="r1", node_name="Work", inputs={"item": "ü" * 200, "n": "1"},
        secrets={"api_key": "k3y"}, attempt=2, deadline_unix_ms=1_764_000_000_003, dispatch_id=1003,
        store=run.store, graph_name="g", traceparent="00-abc-def-01",
    )  # fmt: skip
    later = pb.Execute.FromString(execute_bytes(_state(run, node, 4, {}), {}, shared, store_as_previous=True))
    assert later.store_as_previous and not later.store and later.secrets == {"api_key": "k3y"}
    assert later.state_id == "r1-4" and later.run_id == "r1" and not later.traceparent


def test_shared_parts_follow_the_store_once_cleared() -> None:
    run, node = _fixtures()
    shared = SharedParts()
    execute_bytes(_state(run, node, 1, {}), {}, shared)
    run.store = {"cursor": "8"}
    assert pb.Execute.FromString(execute_bytes(_state(run, node, 2, {}), {}, shared)).store["cursor"] == "7"
    shared.clear()
    assert pb.Execute.FromString(execute_bytes(_state(run, node, 3, {}), {}, shared)).store == {"cursor": "8"}


def test_a_batch_is_a_scheduler_message_and_passes_the_serializer_unchanged() -> None:
    run, node = _fixtures()
    shared = SharedParts()
    items = [execute_bytes(_state(run, node, seq, {}), {"item": "x" * seq}, shared) for seq in range(300)]
    data = execute_message(items)
    message = pb.SchedulerMessage.FromString(data)
    assert [i.state_id for i in message.execute.items] == [f"r1-{seq}" for seq in range(300)]
    assert message.execute.items[299].inputs["item"] == "x" * 299
    assert passthrough(data) is data
    registered = pb.SchedulerMessage(registered=pb.Registered(session_id="s"))
    assert passthrough(registered) == registered.SerializeToString()


def test_the_runtime_service_registers_every_rpc_of_the_proto() -> None:
    class Server:
        def __init__(self) -> None:
            self.methods: set[str] = set()

        def add_generic_rpc_handlers(self, handlers: object) -> None:
            return None

        def add_registered_method_handlers(self, service: str, handlers: dict[str, object]) -> None:
            assert service == SERVICE
            self.methods = set(handlers)

    server = Server()
    add_runtime_service(RuntimeApi(None, None), server)  # type: ignore[arg-type]
    assert server.methods == set(pb.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name)


def test_every_field_of_execute_is_built_by_execute_wire() -> None:
    # A field added to Execute must be set in execute_bytes or in SharedParts (server/execute_wire.py).
    built = {"state_id", "attempt", "deadline_unix_ms", "dispatch_id", "inputs", "traceparent"} | {
        "run_id", "node_name", "secrets", "graph_name", "store", "store_as_previous",
    }  # fmt: skip
    assert {f.name for f in pb.Execute.DESCRIPTOR.fields} == built
