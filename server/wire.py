"""Protobuf messages to and from the scheduler's own types (server side of the wire)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from sys import intern
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message
from pydantic import ValidationError

from exosphere.errors import InvalidArgumentError
from exosphere.v1 import common_pb2, runtime_pb2, scheduler_pb2

from .descriptors import fields_of
from .engine import ResultIn
from .graph import MAX_DELAY_MS
from .models import (
    CronSpec,
    GraphNodeSpec,
    GraphSpec,
    NodeSchema,
    RetryPolicySpec,
    RunRow,
    StateRow,
    StoreConfigSpec,
    UnitesSpec,
)
from .names import check_name, check_names, name_problem
from .sizes import (
    MAX_ERROR_TEXT,
    MAX_ERROR_TYPE,
    MAX_GRAPH_NODES,
    MAX_OUTPUTS_BYTES,
    MAX_OUTPUTS_PER_RESULT,
    check_store_size,
    cut_text,
    text_bytes,
    too_many_outputs,
)
from .status import ResultKind

__all__ = [
    "graph_spec_from_pb",
    "graph_to_pb",
    "result_from_pb",
    "results_from_pb",
    "run_status_from_pb",
    "run_to_pb",
    "schema_from_pb",
    "state_to_pb",
]

T = TypeVar("T", bound=Message)
R = TypeVar("R")

_STATE_STATUS = {name.removeprefix("STATE_STATUS_"): value for name, value in common_pb2.StateStatus.items()}
_RUN_STATUS = {name.removeprefix("RUN_STATUS_"): value for name, value in common_pb2.RunStatus.items()}


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """The name of ``value`` without ``prefix``; proto3 enums are open, so a client may send any number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        raise InvalidArgumentError(f"unknown {prefix.rstrip('_')} value {value}") from None
    return name.removeprefix(prefix)


def schema_from_pb(namespace: str, schema: common_pb2.NodeSchema, *, stored: bool = False) -> NodeSchema:
    """A registered node schema; raises InvalidArgumentError naming a bad field (server/descriptors.py)."""
    check_name("node name", schema.name)
    inputs = fields_of(schema.name, "Inputs", schema.inputs, stored=stored)
    return NodeSchema(
        namespace=namespace,
        name=schema.name,
        inputs=inputs,
        outputs=fields_of(schema.name, "Outputs", schema.outputs, stored=stored),
        secrets=fields_of(schema.name, "Secrets", schema.secrets, stored=stored),
        timeout_ms=min(schema.timeout_ms, MAX_DELAY_MS),
        raw=schema.SerializeToString(),
        defaults=tuple((f.name, f.default) for f in inputs if not f.required and f.default is not None),
    )


def decode_stored_schema(namespace: str, raw: bytes) -> NodeSchema:
    """A node schema as stored; ValueError when the bytes are not a valid NodeSchema (recovery skips it)."""
    message = common_pb2.NodeSchema()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:  # not a ValueError
        raise ValueError(f"not a NodeSchema message: {exc}") from None
    return schema_from_pb(namespace, message, stored=True)


def _retry_from_pb(policy: scheduler_pb2.RetryPolicy) -> RetryPolicySpec:
    strategy = _enum_name(scheduler_pb2.RetryStrategy, policy.strategy, "RETRY_STRATEGY_")
    return RetryPolicySpec(
        max_retries=policy.max_retries,
        strategy="EXPONENTIAL" if strategy == "UNSPECIFIED" else strategy,
        backoff_factor_ms=policy.backoff_factor_ms,
        exponent=policy.exponent or 2.0,
        max_delay_ms=policy.max_delay_ms or None,
    )


def _retry_to_pb(policy: RetryPolicySpec) -> scheduler_pb2.RetryPolicy:
    return scheduler_pb2.RetryPolicy(
        max_retries=policy.max_retries,
        strategy=scheduler_pb2.RetryStrategy.Value(f"RETRY_STRATEGY_{policy.strategy}"),
        backoff_factor_ms=policy.backoff_factor_ms,
        exponent=policy.exponent,
        max_delay_ms=policy.max_delay_ms or 0,
    )


def graph_spec_from_pb(graph: scheduler_pb2.Graph) -> GraphSpec:
    """The stored form of a graph sent by a client (validation happens in the engine)."""
    check_name("namespace", graph.namespace.strip())
    check_name("graph name", graph.name.strip())
    if len(graph.nodes) > MAX_GRAPH_NODES:
        raise InvalidArgumentError(f"a graph may have at most {MAX_GRAPH_NODES} nodes, got {len(graph.nodes)}")
    try:
        return _graph_spec(graph)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidArgumentError(f"invalid graph {graph.name!r}: {problems}") from None


def _graph_spec(graph: scheduler_pb2.Graph) -> GraphSpec:
    nodes = []
    for index, node in enumerate(graph.nodes):
        # Empty names are left to graph validation, which reports them with every other problem.
        where = f"node #{index}"
        for label, value in (("node_name", node.node_name), ("namespace", node.namespace)):
            if value.strip():
                check_name(f"{where} {label}", value.strip())
        if node.identifier.strip():
            check_name(f"{where} identifier", node.identifier.strip())
        check_names(f"{where} next_nodes entry", (n.strip() for n in node.next_nodes if n.strip()))
        if node.unites.identifier.strip():
            check_name(f"{where} unites identifier", node.unites.identifier.strip())
        unites = None
        if node.HasField("unites"):
            strategy = _enum_name(scheduler_pb2.UnitesStrategy, node.unites.strategy, "UNITES_STRATEGY_")
            unites = UnitesSpec(
                identifier=node.unites.identifier.strip(),
                strategy="ALL_SUCCESS" if strategy == "UNSPECIFIED" else strategy,
            )
        nodes.append(
            GraphNodeSpec(
                node_name=node.node_name.strip(),
                namespace=node.namespace.strip() or graph.namespace,
                identifier=node.identifier.strip(),
                inputs=dict(node.inputs),
                next_nodes=[n.strip() for n in node.next_nodes],
                unites=unites,
                retry_policy=_retry_from_pb(node.retry_policy) if node.HasField("retry_policy") else None,
                timeout_ms=node.timeout_ms,
            )
        )
    if graph.HasField("store_config"):
        config = graph.store_config
        check_names("store_config required key", (k.strip() for k in config.required_keys if k.strip()))
        check_names("store_config default key", (k.strip() for k in config.default_values if k.strip()))
        check_store_size("store_config default_values", config.default_values)
    for index, trigger in enumerate(graph.triggers):
        check_names(f"trigger #{index} store key", trigger.store)
        check_store_size(
            f"trigger #{index} store with the defaults", {**graph.store_config.default_values, **trigger.store}
        )
    return GraphSpec(
        namespace=graph.namespace.strip(),
        name=graph.name.strip(),
        nodes=nodes,
        retry_policy=_retry_from_pb(graph.retry_policy) if graph.HasField("retry_policy") else None,
        store_config=StoreConfigSpec(
            required_keys=[k.strip() for k in graph.store_config.required_keys],
            default_values={k.strip(): v for k, v in graph.store_config.default_values.items()},
        )
        if graph.HasField("store_config")
        else None,
        triggers=[
            CronSpec(expression=t.expression, timezone=t.timezone or "UTC", inputs=dict(t.inputs), store=dict(t.store))
            for t in graph.triggers
        ],
    )


def run_status_from_pb(status: int) -> str | None:
    """A run status filter sent by a client (None when unset)."""
    return _enum_name(common_pb2.RunStatus, status, "RUN_STATUS_") if status else None


def graph_to_pb(spec: GraphSpec) -> scheduler_pb2.Graph:
    """A graph for clients: secret names only, never values."""
    graph = scheduler_pb2.Graph(
        namespace=spec.namespace,
        name=spec.name,
        secret_names=sorted(spec.secrets),
        version=spec.version,
        updated_at_unix_ms=spec.updated_at_ms,
    )
    for node in spec.nodes:
        message = graph.nodes.add(
            node_name=node.node_name,
            namespace=node.namespace,
            identifier=node.identifier,
            inputs=node.inputs,
            next_nodes=node.next_nodes,
            timeout_ms=node.timeout_ms,
        )
        if node.unites is not None:
            message.unites.identifier = node.unites.identifier
            message.unites.strategy = scheduler_pb2.UnitesStrategy.Value(f"UNITES_STRATEGY_{node.unites.strategy}")
        if node.retry_policy is not None:
            message.retry_policy.CopyFrom(_retry_to_pb(node.retry_policy))
    if spec.retry_policy is not None:
        graph.retry_policy.CopyFrom(_retry_to_pb(spec.retry_policy))
    if spec.store_config is not None:
        graph.store_config.required_keys.extend(spec.store_config.required_keys)
        graph.store_config.default_values.update(spec.store_config.default_values)
    for trigger in spec.triggers:
        graph.triggers.add(
            expression=trigger.expression, timezone=trigger.timezone, inputs=trigger.inputs, store=trigger.store
        )
    return graph


def state_to_pb(state: StateRow) -> scheduler_pb2.State:
    message = scheduler_pb2.State(
        state_id=state.state_id,
        run_id=state.run_id,
        identifier=state.identifier,
        node_name=state.node_name,
        status=_STATE_STATUS[state.status],
        attempt=state.attempt,
        parent_id=state.parent_id or "",
        created_at_unix_ms=state.created_at_ms,
        updated_at_unix_ms=state.updated_at_ms,
        pruned_data_json=state.pruned_data or "",
        run_at_unix_ms=state.run_at_ms,
        runtime_name=state.runtime_name,
        started_at_unix_ms=state.started_at_ms,
        ran_ms=state.ran_ms,
    )
    inputs = message.inputs
    for key, value in state.inputs.items():  # assignments: faster than a map's update() or its constructor
        inputs[key] = value
    if state.outputs:
        add = message.outputs.add
        for fields in state.outputs:
            added = add().fields
            for key, value in fields.items():
                added[key] = value
    if state.error:
        message.error.message = state.error.get("message", "")
        message.error.type = state.error.get("type", "")
        message.error.traceback = state.error.get("traceback", "")
    return message


def run_to_pb(run: RunRow) -> scheduler_pb2.Run:
    return scheduler_pb2.Run(
        run_id=run.run_id,
        namespace=run.namespace,
        graph_name=run.graph_name,
        status=_RUN_STATUS[run.status],
        created_at_unix_ms=run.created_at_ms,
        updated_at_unix_ms=run.updated_at_ms,
        state_counts=run.state_counts,
        store=run.store,
        graph_version=run.graph_version,
        waiting_for_runtime=run.waiting_for_runtime,
    )


def results_from_pb(results: Iterable[runtime_pb2.Result]) -> list[ResultIn]:
    """A batch of results. The common one (executed, a few outputs, no store writes) is decoded inline; any other
    goes through :func:`result_from_pb`."""
    decoded: list[ResultIn] = []
    append = decoded.append
    executed_kind = ResultKind.EXECUTED
    for result in results:
        if result.store_writes or not result.HasField("executed"):
            append(result_from_pb(result))
            continue
        outs = result.executed.outputs
        if len(outs) > MAX_OUTPUTS_PER_RESULT:
            append(result_from_pb(result))
            continue
        outputs = []
        size = 0
        for out in outs:
            fields = out.fields
            # Faster than dict(fields) on a upb map. Keys are interned: every output of a node repeats the same few
            # names, and each decoded key is a new string otherwise (53 bytes per output, kept while the run lives).
            values = {intern(k): fields[k] for k in fields}
            for v in values.values():
                size += len(v) if v.isascii() else len(v.encode())
            outputs.append(values)
        if size > MAX_OUTPUTS_BYTES:
            append(result_from_pb(result))
            continue
        append(ResultIn(result.state_id, result.dispatch_id, executed_kind, outputs, attempt=result.attempt))
    return decoded


def result_from_pb(result: runtime_pb2.Result) -> ResultIn:
    decoded = _outcome(result)
    decoded.attempt = result.attempt  # matched with the dispatch (server/rejects.py)
    return decoded


def _outcome(result: runtime_pb2.Result) -> ResultIn:
    kind = result.WhichOneof("outcome")
    writes = {k: result.store_writes[k] for k in result.store_writes} if result.store_writes else None
    bad_key = next((k for k in writes or () if name_problem(k) is not None), None)
    if bad_key is not None and kind == "executed":
        message = f"store key {bad_key[:80]!r} written by the node: {name_problem(bad_key)}"
        return ResultIn(
            result.state_id, result.dispatch_id, ResultKind.ERRORED, error={"message": message, "type": "StoreKeyError"}
        )
    if kind == "executed":
        count = len(result.executed.outputs)
        if count > MAX_OUTPUTS_PER_RESULT:  # refused before a dict is built for any of them
            return ResultIn(
                result.state_id,
                result.dispatch_id,
                ResultKind.ERRORED,
                error={"message": too_many_outputs(count), "type": "TooManyOutputsError"},
            )
        outputs = []
        size = 0
        for out in result.executed.outputs:
            fields = out.fields
            values = {intern(k): fields[k] for k in fields}
            size += sum(text_bytes(v) for v in values.values())
            outputs.append(values)
        if size > MAX_OUTPUTS_BYTES:  # the Python runtime refuses it first; runtimes in other languages may not
            return ResultIn(
                result.state_id,
                result.dispatch_id,
                ResultKind.ERRORED,
                error={
                    "message": f"the node returned {size} bytes of outputs; limit {MAX_OUTPUTS_BYTES}",
                    "type": "ResultTooLargeError",
                },
            )
        return ResultIn(result.state_id, result.dispatch_id, ResultKind.EXECUTED, outputs=outputs, store_writes=writes)
    if kind == "errored":
        e = result.errored
        return ResultIn(
            result.state_id,
            result.dispatch_id,
            ResultKind.ERRORED,
            error={
                "message": cut_text(e.message, MAX_ERROR_TEXT),
                "type": cut_text(e.type, MAX_ERROR_TYPE),
                "traceback": cut_text(e.traceback, MAX_ERROR_TEXT),
            },
        )
    if kind == "pruned":
        data = result.pruned.data_json or "{}"
        if text_bytes(data) > MAX_OUTPUTS_BYTES:
            return ResultIn(
                result.state_id,
                result.dispatch_id,
                ResultKind.ERRORED,
                error={
                    "message": f"PruneSignal data is {text_bytes(data)} bytes; limit {MAX_OUTPUTS_BYTES}",
                    "type": "ResultTooLargeError",
                },
            )
        try:
            json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read: keep it as text
            data = json.dumps({"raw": data[:65536]})
        return ResultIn(result.state_id, result.dispatch_id, ResultKind.PRUNED, pruned_data=data)
    if kind == "requeue_after":
        return ResultIn(result.state_id, result.dispatch_id, ResultKind.REQUEUE, delay_ms=result.requeue_after.delay_ms)
    return ResultIn(
        result.state_id,
        result.dispatch_id,
        ResultKind.ERRORED,
        error={
            "message": "result has no outcome (executed, errored, pruned or requeue_after)",
            "type": "ProtocolError",
        },
    )


def states_to_pb(states: Iterable[StateRow]) -> list[scheduler_pb2.State]:
    return [state_to_pb(s) for s in states]


def schema_to_pb(schema: NodeSchema) -> common_pb2.NodeSchema:
    message = common_pb2.NodeSchema()
    message.ParseFromString(schema.raw)
    return message
