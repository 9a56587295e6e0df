"""Start-up: rebuild the engine's memory from the store after a restart or a crash.

States committed as CREATED (the engine never commits QUEUED) go back to the ready queues, so anything that was
running when the scheduler died runs again: at-least-once. Unites counters are recounted from the states.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from server import models as m
from server.graph import CompiledGraph, compile_graph
from server.models import RunRow, StateRow
from server.runstate import Run, State

if TYPE_CHECKING:
    from server.engine import Engine

__all__ = ["recover"]

logger = logging.getLogger(__name__)


def recover(engine: Engine) -> None:
    """Load registrations, graphs and pending runs into ``engine``."""
    store = engine._store
    if engine._decode_schema is not None:
        for namespace, name, raw in store.load_nodes():
            try:
                engine._nodes[namespace, name] = engine._decode_schema(namespace, raw)
            except ValueError as exc:
                logger.error("stored schema unreadable namespace=%s node=%s error=%s", namespace, name, exc)
    for spec in store.load_graphs():
        compiled = _compile(engine, spec)
        if compiled is not None:
            engine._graphs[spec.namespace, spec.name] = compiled
            engine._graph_versions[spec.namespace, spec.name, spec.version] = compiled
    run_rows, state_rows = store.load_pending()
    runs, states, requeued = load_runs(engine, run_rows, state_rows)
    logger.info(
        "recovered graphs=%d nodes=%d pending_runs=%d states=%d requeued=%d",
        len(engine._graphs),
        len(engine._nodes),
        len(runs),
        states,
        requeued,
    )


def load_runs(
    engine: Engine, run_rows: list[RunRow], state_rows: list[StateRow], *, complete: bool = True
) -> tuple[list[Run], int, int]:
    """Rebuild live runs from stored rows: link states, recount unites, requeue what was unfinished.

    Used at start-up for every pending run, and to reopen a finished run for a manual retry.
    """
    runs: dict[str, Run] = {}
    for run_row in run_rows:
        graph = _graph_version(engine, run_row.namespace, run_row.graph_name, run_row.graph_version)
        run = Run(
            run_id=run_row.run_id,
            namespace=run_row.namespace,
            graph_name=run_row.graph_name,
            graph_version=run_row.graph_version,
            status=run_row.status,
            store=run_row.store,
            created_at_ms=run_row.created_at_ms,
            updated_at_ms=run_row.updated_at_ms,
            graph=graph,  # type: ignore[arg-type]
        )
        runs[run.run_id] = run
    latest_attempt: dict[tuple[str | None, str, int], int] = {}
    for row in state_rows:
        key = (row.parent_id, row.identifier, row.parent_output)
        latest_attempt[key] = max(latest_attempt.get(key, 0), row.attempt)
    by_id: dict[str, State] = {}
    requeued = 0
    for row in state_rows:
        run = runs[row.run_id]
        if run.graph is None or row.identifier not in run.graph.nodes:
            logger.error(
                "run %s: graph version %d is missing; state %s dropped", run.run_id, run.graph_version, row.state_id
            )
            run.failed = True
            continue
        parent = by_id.get(row.parent_id) if row.parent_id else None
        node = run.graph.nodes[row.identifier]
        state = State(
            state_id=row.state_id,
            run_id=row.run_id,
            identifier=row.identifier,
            node_name=row.node_name,
            status=m.CREATED if row.status in (m.QUEUED, m.EXECUTED) else row.status,
            inputs=row.inputs,
            attempt=row.attempt,
            parent_id=row.parent_id,
            parent_output=row.parent_output,
            path=row.path,
            outputs=row.outputs,
            error=row.error,
            pruned_data=row.pruned_data,
            created_at_ms=row.created_at_ms,
            updated_at_ms=row.updated_at_ms,
            run_at_ms=row.run_at_ms,
            seq=row.seq,
            run=run,
            node=node,
            parent=parent,
        )
        if parent is not None and node.unites is not None and parent.identifier == node.unites:
            state.watchers = parent.watchers
            if parent.fired is None:
                parent.fired = set()
            parent.fired.add(node.identifier)
        elif parent is not None:
            state.watchers = (*parent.watchers, parent) if parent.node.merges else parent.watchers
        by_id[state.state_id] = state
        run.states.append(state)
        run.next_seq = max(run.next_seq, state.seq + 1)
        engine._states[state.state_id] = state
        superseded = latest_attempt[row.parent_id, row.identifier, row.parent_output] > row.attempt
        if state.status in (m.CREATED, m.QUEUED, m.EXECUTED):
            run.open_states += 1
            for watcher in state.watchers:
                watcher.open_descendants += 1
            requeued += 1
        elif superseded:
            continue
        elif state.status in m.FAILED_STATE_STATUSES:
            run.failed = run.failed or state.status != m.CANCELLED
            for watcher in state.watchers:
                watcher.descendant_failed = True
        elif state.status == m.SUCCESS:
            for watcher in state.watchers:
                if state.identifier in watcher.node.collect:
                    if watcher.collected is None:
                        watcher.collected = {}
                    watcher.collected.setdefault(state.identifier, []).append(state)
    for run in runs.values():
        engine._runs[run.run_id] = run
    for state in by_id.values():
        if state.status == m.CREATED:
            engine._dispatcher.enqueue(state)
        elif state.status == m.SUCCESS and state.node.merges:
            engine._maybe_fire(state)
    for run in runs.values():
        if complete and run.open_states == 0 and run.pending:
            engine._complete_run(run)
    return list(runs.values()), len(by_id), requeued


def _compile(engine: Engine, spec: m.GraphSpec) -> CompiledGraph | None:
    problem = None
    try:
        secrets = engine._decrypt(spec)
    except Exception as exc:  # a wrong key must not stop the scheduler; the graph refuses triggers instead
        logger.error("cannot decrypt secrets of graph %s/%s: %s", spec.namespace, spec.name, exc)
        secrets = {}
        problem = (
            f"the secrets of graph {spec.name!r} cannot be decrypted with this scheduler's secrets key; "
            "upsert the graph again with its secrets"
        )
    compiled, errors = compile_graph(spec, engine.node_schema, secrets, strict=False)
    if compiled is None:
        logger.error("stored graph %s/%s no longer compiles: %s", spec.namespace, spec.name, "; ".join(errors))
    else:
        compiled.problem = problem
    return compiled


def _graph_version(engine: Engine, namespace: str, name: str, version: int) -> CompiledGraph | None:
    key = (namespace, name, version)
    if key not in engine._graph_versions:
        spec = engine._store.load_graph_version(namespace, name, version)
        compiled = _compile(engine, spec) if spec is not None else None
        if compiled is None:
            return None
        engine._graph_versions[key] = compiled
    return engine._graph_versions[key]
