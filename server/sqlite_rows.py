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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .jsontext import dumps, int_list, str_map, str_maps
from .models import RunRow, StateRow
from .packed import PackedOutputs, outputs_json
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

# Narrow rows of a batch with at least this many new states (or, apart, changed states) are made in the writer
# thread; fewer, in prepare. Made there, they cost the scheduler 0.2-0.5 us a row more, the two threads contending for
# the GIL (and the fan-out 1 -> 10,000 -> 1 about 4 % of its rate, paired with rows made in prepare); a batch under
# it holds at most about 4 MiB of rows. Told by the batch's length, before any row: a small batch's loop makes its
# rows as it goes.
WRITER_ROWS_FROM = 16_384


@dataclass(slots=True)
class _Rows:
    """Rows of one statement: made in prepare (a small batch), or made in the writer thread from the states and, as
    columns, what may change after prepare (a batch of WRITER_ROWS_FROM)."""

    # The rows, when made in prepare; None when made from the states and columns.
    made: list[tuple[object, ...]] | None = None
    states: Sequence[StateRow] = ()
    statuses: Sequence[StateStatus] = ()

    def __len__(self) -> int:
        return len(self.made) if self.made is not None else len(self.states)

    def rows(self) -> Iterator[tuple[object, ...]]:
        """The parameters of each row: made in prepare, or made as they are read (again for each commit attempt)."""
        return iter(self.made) if self.made is not None else self._make()

    def _make(self) -> Iterator[tuple[object, ...]]:
        raise NotImplementedError


@dataclass(slots=True)
class NewRows(_Rows):
    """New states not run yet, for the narrow insert."""

    # The inputs as JSON text, made in prepare; empty when the batch's inputs never change (made in ``rows``).
    inputs: Sequence[str] = ()
    updated_at_ms: Sequence[int] = ()
    run_at_ms: Sequence[int] = ()

    def _make(self) -> Iterator[tuple[object, ...]]:
        texts = self.inputs or map(_inputs_json, self.states)
        for s, status, inputs, updated_at_ms, run_at_ms in zip(
            self.states, self.statuses, texts, self.updated_at_ms, self.run_at_ms, strict=True
        ):
            yield _new_row(s, status, inputs, updated_at_ms, run_at_ms)


@dataclass(slots=True)
class DoneRows(_Rows):
    """Finished states for the narrow update, from a stable batch (a united state that fails its merge changes
    status and update time after prepare: those are the columns)."""

    updated_at_ms: Sequence[int] = ()

    def _make(self) -> Iterator[tuple[object, ...]]:
        for s, status, updated_at_ms in zip(self.states, self.statuses, self.updated_at_ms, strict=True):
            yield _done_row(s, status, updated_at_ms)


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
    """The batch's parameters, snapshotted now (but for the narrow rows of a big batch: see the module docstring).

    Whether a batch is big is told from its length before the loop: a small one (the common commit of a few states)
    makes its rows as it goes, with no columns, generator or zip (1.0 against 2.1 us a row for one new and one
    finished state)."""
    inserts: list[tuple[object, ...]] = []
    if len(batch.new_states) >= WRITER_ROWS_FROM:
        new_inserts = _new_columns(batch, inserts)
    else:
        made: list[tuple[object, ...]] = []
        for s in batch.new_states:
            if (
                s.outputs is None
                and s.error is None
                and s.pruned_data is None
                and not (s.runtime_name or s.started_at_ms or s.ran_ms)
            ):
                made.append((
                    s.run_id, s.seq, s.identifier, s.node_name, s.status, str_map(s.inputs), s.attempt, s.parent_id,
                    s.parent_output, int_list(s.path), s.created_at_ms, s.updated_at_ms, s.run_at_ms,
                ))  # fmt: skip
            else:
                inserts.append(state_params(s))
        new_inserts = NewRows(made)
    updates: list[tuple[object, ...]] = []
    done_updates: list[tuple[object, ...]] = []
    if len(batch.updated_states) >= WRITER_ROWS_FROM:
        done_rows = _done_columns(batch, updates, done_updates)
    else:
        done_made: list[tuple[object, ...]] = []
        stable = batch.stable
        for s in batch.updated_states:
            if s.error is None and s.pruned_data is None and not s.run_at_ms:
                outputs = s.outputs  # outputs_json and the row inlined: two calls less per row
                (done_made if stable and s.status in TERMINAL_STATE_STATUSES else done_updates).append((
                    s.status, None if outputs is None else outputs.json if type(outputs) is PackedOutputs
                    else str_maps(outputs), s.updated_at_ms, s.runtime_name, s.started_at_ms, s.ran_ms, s.run_id,
                    s.seq,
                ))  # fmt: skip
            else:
                updates.append(_update_params(s))
        done_rows = DoneRows(done_made)
    # Positional, in field order: keywords cost 0.17 us more a batch (a third of a small batch's whole row cost).
    return PreparedRows(
        inserts,
        new_inserts,
        updates,
        done_updates,
        done_rows,
        [_run_params(r) for r in batch.runs],
        list(batch.kv.items()),
    )


def _new_columns(batch: WriteBatch, inserts: list[tuple[object, ...]]) -> NewRows:
    """A big batch's new states: the narrow ones as columns (their rows made in the writer thread), the others'
    rows in ``inserts``."""
    states: list[StateRow] = []
    statuses: list[StateStatus] = []
    inputs: list[str] = []
    updated_at: list[int] = []
    run_at: list[int] = []
    inputs_now = not batch.stable
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
    return NewRows(None, states, statuses, inputs, updated_at, run_at)


def _done_columns(
    batch: WriteBatch, updates: list[tuple[object, ...]], done_updates: list[tuple[object, ...]]
) -> DoneRows:
    """A big batch's changed states: the finished ones of a stable batch as columns (their rows made in the writer
    thread), the other narrow rows in ``done_updates``, the rest in ``updates``."""
    states: list[StateRow] = []
    statuses: list[StateStatus] = []
    updated_at: list[int] = []
    stable = batch.stable
    for s in batch.updated_states:
        if s.error is None and s.pruned_data is None and not s.run_at_ms:
            if stable and s.status in TERMINAL_STATE_STATUSES:
                states.append(s)
                statuses.append(s.status)
                updated_at.append(s.updated_at_ms)
            else:
                done_updates.append(_done_row(s, s.status, s.updated_at_ms))
        else:
            updates.append(_update_params(s))
    return DoneRows(None, states, statuses, updated_at)


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


def _new_row(s: StateRow, status: str, inputs: str, updated_at_ms: int, run_at_ms: int) -> tuple[object, ...]:
    """A new state's row for INSERT_NEW_STATE."""
    return (
        s.run_id, s.seq, s.identifier, s.node_name, status, inputs, s.attempt, s.parent_id, s.parent_output,
        int_list(s.path), s.created_at_ms, updated_at_ms, run_at_ms,
    )  # fmt: skip


def _done_row(s: StateRow, status: str, updated_at_ms: int) -> tuple[object, ...]:
    """A changed state's row for UPDATE_DONE_STATE."""
    outputs = None if s.outputs is None else outputs_json(s.outputs)
    return (status, outputs, updated_at_ms, s.runtime_name, s.started_at_ms, s.ran_ms, s.run_id, s.seq)


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
