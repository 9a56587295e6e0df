"""Trigger requests: what a client asks to start, and the check that turns it into a run's first inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from exosphere.errors import ConflictError, InvalidArgumentError

from .graph import MAX_DELAY_MS, CompiledGraph
from .models import NodeSchema
from .resolve import ResolutionError, root_inputs

__all__ = ["CheckedTrigger", "TriggerRequest", "check_trigger"]


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    """Start a run of ``graph_name``: inputs override the root's template inputs, ``store`` the store defaults."""

    namespace: str
    graph_name: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    store: Mapping[str, str] = field(default_factory=dict)
    start_delay_ms: int = 0
    # The shard of the new run (cron: the schedule's own, so its watermark and its run commit under one lease);
    # None: any shard this scheduler owns.
    shard: int | None = None


@dataclass(frozen=True, slots=True)
class CheckedTrigger:
    """A trigger that passed every check: the graph version it runs, the root's inputs and the run's store."""

    graph: CompiledGraph
    root_inputs: dict[str, str]
    store: dict[str, str]
    start_delay_ms: int
    shard: int | None = None


def check_trigger(request: TriggerRequest, graph: CompiledGraph, root_schema: NodeSchema | None) -> CheckedTrigger:
    """Check ``request`` against its graph; raise InvalidArgumentError naming every problem."""
    if not 0 <= request.start_delay_ms <= MAX_DELAY_MS:
        raise InvalidArgumentError(f"start_delay must be between 0 and {MAX_DELAY_MS} ms, got {request.start_delay_ms}")
    if graph.problem:
        raise ConflictError(graph.problem, namespace=request.namespace, graph_name=request.graph_name)
    errors = []
    root = graph.root
    declared = root_schema.input_names() if root_schema else set(root.inputs)
    unknown = sorted(set(request.inputs) - declared)
    if unknown:
        errors.append(f"inputs {unknown} are not declared by the root node {root.node_name!r}")
    config = graph.spec.store_config
    run_store = dict(config.default_values) if config else {}
    run_store.update(request.store)
    if config:
        missing = [k for k in config.required_keys if k not in run_store]
        if missing:
            errors.append(f"missing required store keys: {missing}")
    inputs: dict[str, str] = {}
    if not errors:
        try:  # the root may reference only the store (checked at upsert)
            inputs = root_inputs(root, run_store, request.inputs)
        except ResolutionError as exc:
            errors.append(str(exc))
            inputs = dict(request.inputs)
        if root_schema is not None:
            missing_inputs = [f.name for f in root_schema.inputs if f.required and f.name not in inputs]
            if missing_inputs:
                errors.append(f"root node {root.node_name!r} needs inputs {missing_inputs}")
    if errors:
        raise InvalidArgumentError("; ".join(errors))
    return CheckedTrigger(graph, inputs, run_store, request.start_delay_ms, request.shard)
