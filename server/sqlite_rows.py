"""What the SQLite store writes per group commit: the statements, and each batch turned into their parameters.

``prepare`` runs in the event loop's thread (the states keep changing after the tick) and ``write`` in the writer
thread. SQLite's cost per row grows with the values bound (about 0.75 us of a 3.5 us insert for the six columns a
new state leaves at their defaults), so the common rows go through narrower statements: a new state not run yet
(no outputs, error or prune data, no runtime), and a state changed with no error, prune data or delayed start (a
success): its attempt never changes, and error, prune data and start time, once set, are never cleared, so the
stored ones are still right. Any other row is written whole.

The narrow statements' rows of a big batch (``WRITER_ROWS_FROM``) are built as ``executemany`` reads them, in the
writer thread: ``prepare`` keeps beside each state only what may change after the tick. For a new state that is its
status, update and start times, and its inputs as JSON text unless the batch is ``stable`` (a state's ids, attempt,
parent and path never change); for a state that finished, in a stable batch, its status and update time (its
outputs, runtime and times run are final then; a united state may still fail its merge). A burst of 100,000 new
states from the engine then holds about 40 bytes each until its commit instead of about 260 (a tuple and two JSON
texts), and a burst of results about 24 instead of 112, on top of the live states.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from .jsontext import dumps, int_list, str_map
from .models import RunRow, StateRow
from .packed import outputs_json
from .status import TERMINAL_STATE_STATUSES, StateStatus
from .store import RUN_COLUMNS, STATE_COLUMNS, WriteBatch

__all__ = ["STATE_COLUMNS", "DoneRows", "NewRows", "PreparedRows", "prepare", "write"]

_NEW_COLUMNS = (
    "run_id, seq, identifier, node_name, status, inputs, attempt, parent_id, parent_output, path, created_at_ms, "
    "updated_at_ms, run_at_ms"
)


def _insert(columns: str) -> str:
    return f"INSERT OR REPLACE INTO states ({columns}) VALUES ({','.join('?' * len(columns.split(',')))})"


INSERT_STATE = _insert(STATE_COLUMNS)
INSERT_NEW_STATE = _insert(_NEW_COLUMNS)
UPDATE_STATE = (
    "UPDATE states SET status=?, attempt=?, outputs=?, error=?, pruned_data=?, updated_at_ms=?, run_at_ms=?, "
    "runtime_name=?, started_at_ms=?, ran_ms=? WHERE run_id=? AND seq=?"
)
UPDATE_DONE_STATE = (
    "UPDATE states SET status=?, outputs=?, updated_at_ms=?, runtime_name=?, started_at_ms=?, ran_ms=? "
    "WHERE run_id=? AND seq=?"
)
INSERT_RUN = f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
INSERT_KV = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"

# Narrow rows of a batch with at least this many are made in the writer thread; fewer, in prepare. Made there, they
# cost the scheduler 0.2-0.5 us a row more, the two threads contending for the GIL (and the fan-out 1 -> 10,000 -> 1
# about 4 % of its rate, paired with rows made in prepare); a batch under it holds at most about 4 MiB of rows.
WRITER_ROWS_FROM = 16_384


@dataclass(slots=True)
class NewRows:
    """New states not run yet, for the narrow insert: the states, and as columns what may change after prepare."""

    states: list[StateRow]
    statuses: list[StateStatus]
    # The inputs as JSON text, made in prepare; empty when the batch's inputs never change (made in ``rows``).
    inputs: list[str]
    updated_at_ms: list[int]
    run_at_ms: list[int]
    # The rows, when made in prepare (a batch under WRITER_ROWS_FROM rows).
    made: list[tuple[object, ...]] | None = None

    def __len__(self) -> int:
        return len(self.states)

    def rows(self) -> Iterator[tuple[object, ...]]:
        """The parameters of each row: made in prepare, or made as they are read (again for each commit attempt)."""
        return iter(self.made) if self.made is not None else self._make()

    def _make(self) -> Iterator[tuple[object, ...]]:
        texts = self.inputs or map(_inputs_json, self.states)
        for s, status, inputs, updated_at_ms, run_at_ms in zip(
            self.states, self.statuses, texts, self.updated_at_ms, self.run_at_ms, strict=True
        ):
            yield (
                s.run_id, s.seq, s.identifier, s.node_name, status, inputs, s.attempt, s.parent_id,
                s.parent_output, int_list(s.path), s.created_at_ms, updated_at_ms, run_at_ms,
            )  # fmt: skip


@dataclass(slots=True)
class DoneRows:
    """Finished states for the narrow update, from a stable batch: the states, and as columns what may still change
    after prepare (a united state that fails its merge changes status and update time)."""

    states: list[StateRow]
    statuses: list[StateStatus]
    updated_at_ms: list[int]
    # The rows, when made in prepare (a batch under WRITER_ROWS_FROM rows).
    made: list[tuple[object, ...]] | None = None

    def __len__(self) -> int:
        return len(self.states)

    def rows(self) -> Iterator[tuple[object, ...]]:
        """The parameters of each row: made in prepare, or made as they are read (again for each commit attempt)."""
        return iter(self.made) if self.made is not None else self._make()

    def _make(self) -> Iterator[tuple[object, ...]]:
        for s, status, updated_at_ms in zip(self.states, self.statuses, self.updated_at_ms, strict=True):
            outputs = None if s.outputs is None else outputs_json(s.outputs)
            yield (status, outputs, updated_at_ms, s.runtime_name, s.started_at_ms, s.ran_ms, s.run_id, s.seq)


@dataclass(slots=True)
class PreparedRows:
    inserts: list[tuple[object, ...]]
    new_inserts: NewRows
    updates: list[tuple[object, ...]]
    done_updates: list[tuple[object, ...]]
    done_rows: DoneRows
    runs: list[tuple[object, ...]]
    kv: list[tuple[str, str]]


def prepare(batch: WriteBatch) -> PreparedRows:
    """The batch's parameters, snapshotted now."""
    inserts: list[tuple[object, ...]] = []
    new_inserts = NewRows([], [], [], [], [])
    states, statuses, inputs = new_inserts.states, new_inserts.statuses, new_inserts.inputs
    inputs_now = not batch.stable
    updated_at, run_at = new_inserts.updated_at_ms, new_inserts.run_at_ms
    for s in batch.new_states:
        if (
            s.outputs is None
            and s.error is None
            and s.pruned_data is None
            and not (s.runtime_name or s.started_at_ms or s.ran_ms)
        ):
            states.append(s)
            statuses.append(s.status)
            if inputs_now:
                inputs.append(str_map(s.inputs))
            updated_at.append(s.updated_at_ms)
            run_at.append(s.run_at_ms)
        else:
            inserts.append(state_params(s))
    updates: list[tuple[object, ...]] = []
    done_updates: list[tuple[object, ...]] = []
    done_rows = DoneRows([], [], [])
    stable = batch.stable
    for s in batch.updated_states:
        if s.error is None and s.pruned_data is None and not s.run_at_ms:
            if stable and s.status in TERMINAL_STATE_STATUSES:
                done_rows.states.append(s)
                done_rows.statuses.append(s.status)
                done_rows.updated_at_ms.append(s.updated_at_ms)
                continue
            outputs = None if s.outputs is None else outputs_json(s.outputs)
            done_updates.append(
                (s.status, outputs, s.updated_at_ms, s.runtime_name, s.started_at_ms, s.ran_ms, s.run_id, s.seq)
            )
        else:
            updates.append(_update_params(s))
    for columns in (new_inserts, done_rows):
        if 0 < len(columns) < WRITER_ROWS_FROM:
            columns.made = list(columns.rows())
    return PreparedRows(
        inserts=inserts,
        new_inserts=new_inserts,
        updates=updates,
        done_updates=done_updates,
        done_rows=done_rows,
        runs=[_run_params(r) for r in batch.runs],
        kv=list(batch.kv.items()),
    )


def write(db: sqlite3.Connection, rows: PreparedRows) -> None:
    """Execute the prepared statements (in the caller's transaction)."""
    for statement, params in (
        (INSERT_STATE, rows.inserts),
        (INSERT_NEW_STATE, rows.new_inserts),
        (UPDATE_STATE, rows.updates),
        (UPDATE_DONE_STATE, rows.done_updates),
        (UPDATE_DONE_STATE, rows.done_rows),
        (INSERT_RUN, rows.runs),
        (INSERT_KV, rows.kv),
    ):
        if params:
            db.executemany(statement, params.rows() if isinstance(params, NewRows | DoneRows) else params)


def _inputs_json(s: StateRow) -> str:
    return str_map(s.inputs)


def state_params(s: StateRow) -> tuple[object, ...]:
    """A whole state row, in STATE_COLUMNS order."""
    return (
        s.run_id, s.seq, s.identifier, s.node_name, s.status, str_map(s.inputs), s.attempt, s.parent_id,
        s.parent_output, int_list(s.path), None if s.outputs is None else outputs_json(s.outputs),
        None if s.error is None else dumps(s.error), s.pruned_data, s.created_at_ms, s.updated_at_ms, s.run_at_ms,
        s.runtime_name, s.started_at_ms, s.ran_ms,
    )  # fmt: skip


def _update_params(s: StateRow) -> tuple[object, ...]:
    return (
        s.status, s.attempt, None if s.outputs is None else outputs_json(s.outputs),
        None if s.error is None else dumps(s.error), s.pruned_data, s.updated_at_ms, s.run_at_ms, s.runtime_name,
        s.started_at_ms, s.ran_ms, s.run_id, s.seq,
    )  # fmt: skip


def _run_params(r: RunRow) -> tuple[object, ...]:
    return (
        r.run_id, r.namespace, r.graph_name, r.graph_version, r.status, dumps(r.store), r.created_at_ms,
        r.updated_at_ms, dumps(r.state_counts),
    )  # fmt: skip
