"""The storage seam: what the engine needs from a database, and an in-memory implementation for unit tests.

The engine keeps the hot path in memory and writes through this interface; it reads only at start-up (recovery)
and to answer questions about runs it no longer holds. ``write`` is one transaction: a state's result, its status
change, the states it creates and its run's store writes commit together or not at all.
SQLite (server/sqlite_store.py) is the embedded default; a PostgreSQL backend fills the same Protocol.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .models import GraphSpec, RunRow, StateRow
from .status import RunStatus

__all__ = [
    "READ_COLUMNS",
    "RUN_COLUMNS",
    "STATE_COLUMNS",
    "Fence",
    "FencedError",
    "InMemoryStore",
    "RunCursor",
    "StateRowReader",
    "Store",
    "StoreError",
    "WriteBatch",
    "prefix_range",
]

# Longer than any run id a scheduler makes; a page token naming a longer one is refused.
MAX_RUN_ID = 256
# The columns of the two tables both SQL stores keep (server/sqlite_schema.py, server/pg_schema.py), in row order.
STATE_COLUMNS = (
    "run_id, seq, identifier, node_name, status, inputs, attempt, parent_id, parent_output, path, outputs, error, "
    "pruned_data, created_at_ms, updated_at_ms, run_at_ms, runtime_name, started_at_ms, ran_ms"
)
# A state's columns as a read sends them (server/state_frames.py), in this order: its row less its run id (the
# reader's), path and parent output (not on the wire).
READ_COLUMNS = (
    "seq, identifier, node_name, status, inputs, attempt, parent_id, outputs, error, pruned_data, created_at_ms, "
    "updated_at_ms, run_at_ms, runtime_name, started_at_ms, ran_ms"
)
RUN_COLUMNS = "run_id, namespace, graph_name, graph_version, status, store, created_at_ms, updated_at_ms, state_counts"


class StoreError(Exception):
    """The database cannot be used (opened, checked or read at start-up); the message names the file and why.

    ``exosphere-server`` prints it as one line and exits non-zero.
    """


@dataclass(frozen=True, slots=True, order=True)
class RunCursor:
    """A place in the order runs are listed in: ``created_at_ms`` descending, then ``run_id`` descending.

    The run id breaks ties, so runs created in the same millisecond are neither skipped nor repeated across pages.
    """

    created_at_ms: int
    run_id: str

    @classmethod
    def of(cls, run: RunRow) -> RunCursor:
        return cls(run.created_at_ms, run.run_id)

    def token(self) -> str:
        """The cursor as a page token, ``<created_at_ms>:<run_id>`` (what ``ListRuns`` and the dashboard hand out)."""
        return f"{self.created_at_ms}:{self.run_id}"

    @classmethod
    def parse(cls, token: str) -> RunCursor:
        """A page token back as a cursor. A bare number is the token of servers before the run id broke ties:
        everything older than that millisecond. Raises ValueError saying what is wrong with it."""
        millis, sep, run_id = token.partition(":")
        try:
            created_at_ms = int(millis)
        except ValueError:
            raise ValueError("it does not start with a creation time in milliseconds") from None
        if not 0 <= created_at_ms < 2**62:
            raise ValueError("its creation time is out of range")
        if sep and not 0 < len(run_id) <= MAX_RUN_ID:
            raise ValueError(f"its run id must be 1 to {MAX_RUN_ID} characters")
        return cls(created_at_ms, run_id)


def prefix_range(prefix: str) -> tuple[str, str] | None:
    """The run ids starting with ``prefix`` are those in ``[low, high)``; None when no run id can (run ids are
    lowercase hex, server/shards.py). A range, not LIKE, so that the primary key's index serves it."""
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        return None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True, slots=True)
class Fence:
    """Cluster mode: the shard leases a commit needs. The store commits only if ``owner`` still holds every one of
    ``epochs`` (shard -> epoch) when the transaction commits, and raises FencedError otherwise."""

    owner: str
    epochs: dict[int, int]


class FencedError(StoreError):
    """A commit was refused: this scheduler no longer holds the lease of a shard it wrote to."""

    def __init__(self, shards: Sequence[int]) -> None:
        super().__init__(f"shard lease lost for shards {sorted(shards)}; another scheduler replica owns them now")
        self.shards = sorted(shards)


@dataclass(slots=True)
class WriteBatch:
    """Everything one event-loop tick changed; committed in one transaction."""

    new_states: Sequence[StateRow] = ()
    updated_states: Sequence[StateRow] = ()
    runs: Sequence[RunRow] = ()
    kv: dict[str, str] = field(default_factory=dict)
    # Set in cluster mode (server/ownership.py); a single scheduler writes unfenced.
    fence: Fence | None = None
    # The writer promises that a state's inputs never change once it is made, nor its outputs, runtime and times
    # run once its status is final (the engine's never do): a store may read those after ``prepare``, in its writer
    # thread, instead of copying them now.
    stable: bool = False

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
        """The current version of every graph; a stored graph that cannot be read is logged and left out."""

    def load_graph_version(self, namespace: str, name: str, version: int) -> GraphSpec | None:
        """That version of the graph; None when it is not stored or cannot be read (logged)."""

    def save_nodes(self, namespace: str, schemas: Sequence[tuple[str, bytes]]) -> None:
        """Save registered node schemas (name, serialized schema) in one transaction."""

    def load_nodes(self) -> list[tuple[str, str, bytes]]: ...

    def load_pending(
        self, *, shards: Collection[int] | None = None, shard_count: int = 1
    ) -> tuple[list[RunRow], list[StateRow]]:
        """Runs still PENDING, and all their states ordered by run and sequence. A backend may leave out runs not
        in ``shards`` (among ``shard_count``; server/shards.py); the caller filters anyway.

        A run whose row or any of whose states cannot be read is logged and left out whole: half a run would
        run wrongly (a unites would fire without the missing branch).
        """

    def get_run(self, run_id: str) -> RunRow | None: ...

    def count_states(self, run_id: str) -> dict[str, int]:
        """The run's states per status, as committed (a run row's counts are written only at its start and end)."""

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        """States of a run with ``seq > after_seq``, by sequence, at most ``limit`` (0: all)."""

    def list_runs(
        self,
        namespace: str,
        graph_name: str | None,
        limit: int,
        *,
        after: RunCursor | None = None,
        status: str | None = None,
    ) -> list[RunRow]:
        """At most ``limit`` runs of the namespace (of one graph and one status when given; "" means any), newest
        first in ``RunCursor`` order, starting after ``after`` (the cursor of the previous page's last run)."""

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        """At most ``limit`` (run id, namespace) pairs of the runs whose id starts with ``prefix``, by run id."""

    def get_kv(self, key: str) -> str | None: ...

    def close(self) -> None: ...


class StateRowReader(Protocol):
    """A store that also hands out states as stored, unconverted: a first read of a finished run encodes them
    straight for the wire (server/state_frames.py). Optional: reads of a store without it go through StateRow."""

    def get_state_rows(self, run_id: str, after_seq: int, limit: int) -> list[tuple[object, ...]]:
        """As ``get_states``, each state as its ``READ_COLUMNS`` (JSON columns as text)."""


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
        return (
            [_snapshot(s) for s in batch.new_states],
            [_snapshot(s) for s in batch.updated_states],
            [_copy_run(r) for r in batch.runs],
            dict(batch.kv),
        )

    def commit(self, prepared: object) -> None:
        assert isinstance(prepared, tuple)
        inserts: list[StateRow] = prepared[0]
        updates: list[StateRow] = prepared[1]
        runs: list[RunRow] = prepared[2]
        kv: dict[str, str] = prepared[3]
        for state in inserts:
            self._states.setdefault(state.run_id, {})[state.seq] = state
        for state in updates:  # like SQL's UPDATE: the result columns of a state already stored, else nothing
            stored = self._states.get(state.run_id, {}).get(state.seq)
            if stored is not None:
                stored.status, stored.attempt, stored.outputs = state.status, state.attempt, state.outputs
                stored.error, stored.pruned_data = state.error, state.pruned_data
                stored.updated_at_ms, stored.run_at_ms = state.updated_at_ms, state.run_at_ms
                stored.runtime_name, stored.started_at_ms, stored.ran_ms = (
                    state.runtime_name,
                    state.started_at_ms,
                    state.ran_ms,
                )
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

    def save_nodes(self, namespace: str, schemas: Sequence[tuple[str, bytes]]) -> None:
        for name, schema in schemas:
            self._nodes[namespace, name] = schema

    def load_nodes(self) -> list[tuple[str, str, bytes]]:
        return [(ns, name, raw) for (ns, name), raw in self._nodes.items()]

    def load_pending(
        self, *, shards: Collection[int] | None = None, shard_count: int = 1
    ) -> tuple[list[RunRow], list[StateRow]]:
        runs = [_copy_run(r) for r in self._runs.values() if r.status == RunStatus.PENDING]
        states = [_snapshot(s) for r in runs for _, s in sorted(self._states.get(r.run_id, {}).items())]
        return runs, states

    def count_states(self, run_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self._states.get(run_id, {}).values():
            counts[state.status] = counts.get(state.status, 0) + 1
        return counts

    def get_run(self, run_id: str) -> RunRow | None:
        run = self._runs.get(run_id)
        return _copy_run(run) if run is not None else None

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        rows = [s for seq, s in sorted(self._states.get(run_id, {}).items()) if seq > after_seq]
        return [_snapshot(s) for s in (rows[:limit] if limit else rows)]

    def list_runs(
        self,
        namespace: str,
        graph_name: str | None,
        limit: int,
        *,
        after: RunCursor | None = None,
        status: str | None = None,
    ) -> list[RunRow]:
        runs = [
            r
            for r in self._runs.values()
            if r.namespace == namespace
            and (not graph_name or r.graph_name == graph_name)
            and (not status or r.status == status)
            and (after is None or RunCursor.of(r) < after)
        ]
        runs.sort(key=RunCursor.of, reverse=True)
        return [_copy_run(r) for r in runs[:limit]]

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        found = sorted((r.run_id, r.namespace) for r in self._runs.values() if r.run_id.startswith(prefix))
        return found[:limit] if prefix_range(prefix) else []

    def get_kv(self, key: str) -> str | None:
        return self._kv.get(key)

    def close(self) -> None:
        pass


def _copy_run(run: RunRow) -> RunRow:
    """A copy the caller may change (the SQL stores hand out fresh rows too)."""
    return RunRow(
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
        runtime_name=state.runtime_name,
        started_at_ms=state.started_at_ms,
        ran_ms=state.ran_ms,
    )
