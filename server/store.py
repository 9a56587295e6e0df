"""The storage seam: what the engine needs from a database, and an in-memory implementation for unit tests.

The engine keeps the hot path in memory and writes through this interface; it reads only at start-up (recovery)
and to answer questions about runs it no longer holds. ``write`` is one transaction: a state's result, its status
change, the states it creates and its run's store writes commit together or not at all.
SQLite (server/sqlite_store.py) is the embedded default; a PostgreSQL backend fills the same Protocol.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from server.models import GraphSpec, RunRow, StateRow

__all__ = ["InMemoryStore", "Store", "WriteBatch"]


@dataclass(slots=True)
class WriteBatch:
    """Everything one event-loop tick changed; committed in one transaction."""

    new_states: Sequence[StateRow] = ()
    updated_states: Sequence[StateRow] = ()
    runs: Sequence[RunRow] = ()
    kv: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.new_states or self.updated_states or self.runs or self.kv)


class Store(Protocol):
    """Durable storage of graphs, registrations, runs and states."""

    def write(self, batch: WriteBatch) -> None:
        """Commit the batch in one transaction."""

    def prepare(self, batch: WriteBatch) -> object:
        """Snapshot the batch in the event loop's thread, for ``commit`` in the writer thread."""

    def commit(self, prepared: object) -> None:
        """Commit a prepared batch in one transaction (called from one writer thread, in order)."""

    def save_graph(self, spec: GraphSpec) -> None:
        """Save a graph version (also kept by version, for runs started on it)."""

    def delete_graph(self, namespace: str, name: str) -> None: ...

    def load_graphs(self) -> list[GraphSpec]:
        """The current version of every graph."""

    def load_graph_version(self, namespace: str, name: str, version: int) -> GraphSpec | None: ...

    def save_node(self, namespace: str, name: str, schema: bytes) -> None: ...

    def load_nodes(self) -> list[tuple[str, str, bytes]]: ...

    def load_pending(self) -> tuple[list[RunRow], list[StateRow]]:
        """Runs still PENDING, and all their states ordered by run and sequence."""

    def get_run(self, run_id: str) -> RunRow | None: ...

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        """States of a run with ``seq > after_seq``, by sequence, at most ``limit`` (0: all)."""

    def list_runs(
        self, namespace: str, graph_name: str | None, before_ms: int, limit: int, status: str | None = None
    ) -> list[RunRow]:
        """Runs created strictly before ``before_ms`` (0: any), newest first (ties by run id, descending, so pages
        are stable), optionally of one status."""

    def get_kv(self, key: str) -> str | None: ...

    def close(self) -> None: ...


class InMemoryStore:
    """A Store in process memory: for unit tests and throwaway schedulers."""

    def __init__(self) -> None:
        self._graphs: dict[tuple[str, str], GraphSpec] = {}
        self._versions: dict[tuple[str, str, int], GraphSpec] = {}
        self._nodes: dict[tuple[str, str], bytes] = {}
        self._runs: dict[str, RunRow] = {}
        self._states: dict[str, dict[int, StateRow]] = {}
        self._kv: dict[str, str] = {}

    def write(self, batch: WriteBatch) -> None:
        self.commit(self.prepare(batch))

    def prepare(self, batch: WriteBatch) -> object:
        runs = [
            RunRow(
                run_id=run.run_id,
                namespace=run.namespace,
                graph_name=run.graph_name,
                graph_version=run.graph_version,
                status=run.status,
                store=dict(run.store),
                created_at_ms=run.created_at_ms,
                updated_at_ms=run.updated_at_ms,
                state_counts=dict(run.state_counts),
            )
            for run in batch.runs
        ]
        states = [_snapshot(s) for s in (*batch.new_states, *batch.updated_states)]
        return states, runs, dict(batch.kv)

    def commit(self, prepared: object) -> None:
        assert isinstance(prepared, tuple)
        states: list[StateRow] = prepared[0]
        runs: list[RunRow] = prepared[1]
        kv: dict[str, str] = prepared[2]
        for state in states:
            self._states.setdefault(state.run_id, {})[state.seq] = state
        for run in runs:
            self._runs[run.run_id] = run
        self._kv.update(kv)

    def save_graph(self, spec: GraphSpec) -> None:
        self._graphs[spec.namespace, spec.name] = spec
        self._versions[spec.namespace, spec.name, spec.version] = spec

    def delete_graph(self, namespace: str, name: str) -> None:
        self._graphs.pop((namespace, name), None)

    def load_graphs(self) -> list[GraphSpec]:
        return list(self._graphs.values())

    def load_graph_version(self, namespace: str, name: str, version: int) -> GraphSpec | None:
        return self._versions.get((namespace, name, version))

    def save_node(self, namespace: str, name: str, schema: bytes) -> None:
        self._nodes[namespace, name] = schema

    def load_nodes(self) -> list[tuple[str, str, bytes]]:
        return [(ns, name, raw) for (ns, name), raw in self._nodes.items()]

    def load_pending(self) -> tuple[list[RunRow], list[StateRow]]:
        runs = [r for r in self._runs.values() if r.status == "PENDING"]
        states = [_snapshot(s) for r in runs for _, s in sorted(self._states.get(r.run_id, {}).items())]
        return runs, states

    def get_run(self, run_id: str) -> RunRow | None:
        return self._runs.get(run_id)

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        rows = [s for seq, s in sorted(self._states.get(run_id, {}).items()) if seq > after_seq]
        return rows[:limit] if limit else rows

    def list_runs(
        self, namespace: str, graph_name: str | None, before_ms: int, limit: int, status: str | None = None
    ) -> list[RunRow]:
        runs = [
            r
            for r in self._runs.values()
            if r.namespace == namespace
            and (graph_name is None or r.graph_name == graph_name)
            and (status is None or r.status == status)
            and (not before_ms or r.created_at_ms < before_ms)
        ]
        runs.sort(key=lambda r: (r.created_at_ms, r.run_id), reverse=True)
        return runs[:limit]

    def get_kv(self, key: str) -> str | None:
        return self._kv.get(key)

    def close(self) -> None:
        pass


def _snapshot(state: StateRow) -> StateRow:
    return StateRow(
        state_id=state.state_id,
        run_id=state.run_id,
        identifier=state.identifier,
        node_name=state.node_name,
        status=state.status,
        inputs=dict(state.inputs),
        attempt=state.attempt,
        parent_id=state.parent_id,
        parent_output=state.parent_output,
        path=state.path,
        outputs=copy.deepcopy(state.outputs),
        error=dict(state.error) if state.error else None,
        pruned_data=state.pruned_data,
        created_at_ms=state.created_at_ms,
        updated_at_ms=state.updated_at_ms,
        run_at_ms=state.run_at_ms,
        seq=state.seq,
    )
