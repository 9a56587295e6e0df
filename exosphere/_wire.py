"""SDK models to and from scheduler protos (client side)."""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from exosphere.models import (
    CronTrigger,
    GraphModel,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    RunModel,
    RunStatus,
    RuntimeModel,
    StateModel,
    StateStatus,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from exosphere.v1 import common_pb2, scheduler_pb2

__all__ = ["graph_from_pb", "graph_to_pb", "run_from_pb", "state_from_pb", "states_from_pb"]


def _ts(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def retry_policy_to_pb(policy: RetryPolicyModel) -> scheduler_pb2.RetryPolicy:
    return scheduler_pb2.RetryPolicy(
        max_retries=policy.max_retries,
        strategy=scheduler_pb2.RetryStrategy.Value(f"RETRY_STRATEGY_{policy.strategy.value}"),
        backoff_factor_ms=policy.backoff_factor,
        exponent=policy.exponent,
        max_delay_ms=policy.max_delay or 0,
    )


def retry_policy_from_pb(policy: scheduler_pb2.RetryPolicy) -> RetryPolicyModel:
    strategy = scheduler_pb2.RetryStrategy.Name(policy.strategy).removeprefix("RETRY_STRATEGY_")
    return RetryPolicyModel(
        max_retries=policy.max_retries,
        strategy=RetryStrategyEnum(strategy) if strategy != "UNSPECIFIED" else RetryStrategyEnum.EXPONENTIAL,
        backoff_factor=policy.backoff_factor_ms,
        exponent=policy.exponent or 2,
        max_delay=policy.max_delay_ms or None,
    )


def graph_node_to_pb(node: GraphNodeModel) -> scheduler_pb2.GraphNode:
    message = scheduler_pb2.GraphNode(
        node_name=node.node_name,
        namespace=node.namespace,
        identifier=node.identifier,
        inputs=node.inputs,
        next_nodes=node.next_nodes or [],
        timeout_ms=node.timeout_ms or 0,
    )
    if node.unites is not None:
        message.unites.identifier = node.unites.identifier
        message.unites.strategy = scheduler_pb2.UnitesStrategy.Value(f"UNITES_STRATEGY_{node.unites.strategy.value}")
    if node.retry_policy is not None:
        message.retry_policy.CopyFrom(retry_policy_to_pb(node.retry_policy))
    return message


def graph_to_pb(
    namespace: str,
    name: str,
    nodes: list[GraphNodeModel],
    retry_policy: RetryPolicyModel | None,
    store_config: StoreConfigModel | None,
    triggers: list[CronTrigger] | None,
) -> scheduler_pb2.Graph:
    graph = scheduler_pb2.Graph(namespace=namespace, name=name, nodes=[graph_node_to_pb(n) for n in nodes])
    if retry_policy is not None:
        graph.retry_policy.CopyFrom(retry_policy_to_pb(retry_policy))
    if store_config is not None:
        graph.store_config.required_keys.extend(store_config.required_keys)
        graph.store_config.default_values.update(store_config.default_values)
    for trigger in triggers or []:
        graph.triggers.add(
            expression=trigger.expression, timezone=trigger.timezone, inputs=trigger.inputs, store=trigger.store
        )
    return graph


def graph_from_pb(graph: scheduler_pb2.Graph) -> GraphModel:
    nodes = []
    for node in graph.nodes:
        unites = None
        if node.HasField("unites"):
            strategy = scheduler_pb2.UnitesStrategy.Name(node.unites.strategy).removeprefix("UNITES_STRATEGY_")
            unites = UnitesModel(
                identifier=node.unites.identifier,
                strategy=UnitesStrategyEnum(strategy) if strategy != "UNSPECIFIED" else UnitesStrategyEnum.ALL_SUCCESS,
            )
        nodes.append(
            GraphNodeModel(
                node_name=node.node_name,
                namespace=node.namespace or graph.namespace,
                identifier=node.identifier,
                inputs=dict(node.inputs),
                next_nodes=list(node.next_nodes),
                unites=unites,
                retry_policy=retry_policy_from_pb(node.retry_policy) if node.HasField("retry_policy") else None,
                timeout_ms=node.timeout_ms or None,
            )
        )
    return GraphModel(
        namespace=graph.namespace,
        name=graph.name,
        nodes=nodes,
        retry_policy=retry_policy_from_pb(graph.retry_policy) if graph.HasField("retry_policy") else None,
        store_config=StoreConfigModel(
            required_keys=list(graph.store_config.required_keys),
            default_values=dict(graph.store_config.default_values),
        )
        if graph.HasField("store_config")
        else None,
        triggers=[
            CronTrigger(
                expression=t.expression, timezone=t.timezone or "UTC", inputs=dict(t.inputs), store=dict(t.store)
            )
            for t in graph.triggers
        ],
        secret_names=list(graph.secret_names),
        version=graph.version,
        updated_at=_ts(graph.updated_at_unix_ms),
    )


# Status numbers to models, looked up once per state (a number a newer server sends that this SDK does not know
# falls back to the enum's own error).
_STATE_STATUS = {
    v.number: StateStatus(v.name.removeprefix("STATE_STATUS_"))
    for v in common_pb2.StateStatus.DESCRIPTOR.values
    if v.number
}
# A state from the wire is typed already (protobuf strings and ints, converted field by field below), so it is built
# as ``model_construct`` builds a model, without its per-call overhead: validating 10,000 states again cost a read
# of a big run about a fifth of its time. tests/unit/test_state_conversion.py holds it equal to a validated model.
_new = object.__new__
_set = object.__setattr__
_STATE_FIELDS = frozenset(StateModel.model_fields)


def _state_status(number: int) -> StateStatus:
    status = _STATE_STATUS.get(number)
    if status is None:
        return StateStatus(common_pb2.StateStatus.Name(number).removeprefix("STATE_STATUS_"))  # type: ignore[arg-type]
    return status


def _time(ms: int, times: dict[int, datetime | None]) -> datetime | None:
    try:
        return times[ms]
    except KeyError:
        when = times[ms] = _ts(ms)
        return when


def state_from_pb(state: scheduler_pb2.State, times: dict[int, datetime | None] | None = None) -> StateModel:
    """One state as the SDK's model. Reads of big runs convert thousands of these, so it avoids the slow paths:
    ``dict(map_field)``, keyword construction and validation cost several times comprehensions and a model built
    as ``model_construct`` does, and ``times`` (shared by the states of one read, immutable values) makes each
    distinct timestamp once."""
    if times is None:
        times = {}
    error = None
    if state.HasField("error"):
        e = state.error
        error = {"message": e.message, "type": e.type, "traceback": e.traceback}
    inputs = state.inputs
    outputs = state.outputs
    pruned = state.pruned_data_json
    model = _new(StateModel)
    _set(
        model,
        "__dict__",
        {
            "state_id": state.state_id,
            "run_id": state.run_id,
            "identifier": state.identifier,
            "node_name": state.node_name,
            "status": _state_status(state.status),
            "inputs": {k: inputs[k] for k in inputs},
            "outputs": [{k: f[k] for k in f} for f in [o.fields for o in outputs]] if outputs else [],
            "error": error,
            "attempt": state.attempt,
            "parent_id": state.parent_id or None,
            "created_at": _time(state.created_at_unix_ms, times),
            "updated_at": _time(state.updated_at_unix_ms, times),
            "run_at": _time(state.run_at_unix_ms, times),
            "pruned_data": json.loads(pruned) if pruned else None,
            "runtime_name": state.runtime_name,
            "started_at": _time(state.started_at_unix_ms, times),
            "ran_ms": state.ran_ms,
        },
    )
    _set(model, "__pydantic_fields_set__", set(_STATE_FIELDS))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


# Converting this many states at once pauses the cyclic garbage collector: a page of a big run makes tens of
# thousands of containers (a model, its dicts and lists), none of them garbage, and the collector's passes over
# them (triggered by the allocations alone) cost the conversion about as much again.
GC_PAUSE_STATES = 500


def states_from_pb(states: Sequence[scheduler_pb2.State]) -> list[StateModel]:
    times: dict[int, datetime | None] = {}
    if len(states) < GC_PAUSE_STATES or not gc.isenabled():
        return [state_from_pb(s, times) for s in states]
    gc.disable()
    try:
        return [state_from_pb(s, times) for s in states]
    finally:
        gc.enable()


def run_from_pb(run: scheduler_pb2.Run, states: Sequence[StateModel] = ()) -> RunModel:
    """The run, with ``states`` already converted (``states_from_pb``), so a read can convert page by page."""
    return RunModel(
        run_id=run.run_id,
        namespace=run.namespace,
        graph_name=run.graph_name,
        status=RunStatus(common_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_")),
        created_at=_ts(run.created_at_unix_ms),
        updated_at=_ts(run.updated_at_unix_ms),
        state_counts=dict(run.state_counts),
        store=dict(run.store),
        graph_version=run.graph_version,
        states=list(states),
        waiting_for_runtime=list(run.waiting_for_runtime),
    )


def runtime_from_pb(r: scheduler_pb2.RuntimeInfo) -> RuntimeModel:
    return RuntimeModel(
        runtime_id=r.runtime_id,
        runtime_name=r.runtime_name,
        namespace=r.namespace,
        node_names=list(r.node_names),
        max_concurrency=r.max_concurrency,
        in_flight=r.in_flight,
        connected_at=_ts(r.connected_at_unix_ms),
        last_heartbeat=_ts(r.last_heartbeat_unix_ms),
        sdk_version=r.sdk_version,
        draining=r.draining,
    )
