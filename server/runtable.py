"""The run table: live runs and their states in memory, and the one place that changes a state's status.

Every change of a state's status goes through :meth:`RunTable.transition` (or, for handing a state to a runtime
and taking it back, :meth:`dispatched` / :meth:`undispatched`, which the database never sees: it keeps CREATED for
both). That one function writes the status, the timestamp and the commit mark, so no caller can forget one. New
states enter through :meth:`add_state`, runs through :meth:`add_run`, and a run's end through :meth:`end_run`;
all of them are marked for the next group commit (server/commit.py). :meth:`load` rebuilds runs from stored rows
(start-up recovery, and reopening a finished run for a manual retry).
"""

from __future__ import annotations

import dataclasses
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence

from . import fanin
from .commit import GroupCommit
from .graph import CompiledGraph, CompiledNode
from .models import RunRow, StateRow
from .packed import pack
from .runstate import Run, Session, State
from .status import FAILED_STATE_STATUSES, LIVE_STATE_STATUSES, RunStatus, StateStatus

__all__ = ["RunTable"]

logger = logging.getLogger(__name__)

# Enum members bound once: attribute access on an Enum class costs ~70 ns on Python 3.11 and the hot path makes
# dozens per state.
CANCELLED = StateStatus.CANCELLED
CREATED = StateStatus.CREATED
QUEUED = StateStatus.QUEUED
RUN_CANCELLED = RunStatus.CANCELLED
RUN_FAILED = RunStatus.FAILED
RUN_PENDING = RunStatus.PENDING
RUN_SUCCESS = RunStatus.SUCCESS


# The leading fields of State, in declaration order, as new_state passes them.
_NEW_STATE_FIELDS = (
    "state_id", "run_id", "identifier", "node_name", "status", "inputs", "attempt", "parent_id", "parent_output",
    "path", "outputs", "error", "pruned_data", "created_at_ms", "updated_at_ms", "run_at_ms", "seq", "runtime_name",
    "started_at_ms", "ran_ms", "run", "node", "parent", "watchers",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(State))[: len(_NEW_STATE_FIELDS)] != _NEW_STATE_FIELDS:
    raise TypeError("State's fields changed order: update _NEW_STATE_FIELDS and RunTable.new_state")


class RunTable:
    """Live runs by id (and through them their states); the only writer of statuses, timestamps and commit marks."""

    def __init__(self, commit: GroupCommit) -> None:
        self.runs: dict[str, Run] = {}
        self._commit = commit

    def state(self, state_id: str) -> State | None:
        """A live state by id: found in its run's states (in sequence order) rather than kept in an index of its own,
        which would cost every live state about 50 bytes and an insertion."""
        run_id, _, seq_text = state_id.rpartition("-")
        run = self.runs.get(run_id)
        if run is None or not seq_text.isdigit():
            return None
        seq, states = int(seq_text), run.states
        index = seq if seq < len(states) and states[seq].seq == seq else bisect_left(states, seq, key=_seq)
        if index < len(states) and states[index].state_id == state_id:
            return states[index]
        return None

    def live_states(self) -> Iterator[State]:
        """Every state of the runs held in memory."""
        for run in self.runs.values():
            yield from run.states

    # ------------------------------------------------------------------ runs

    def add_run(self, run: Run) -> None:
        self.runs[run.run_id] = run
        self._commit.mark_run(run)

    def end_run(self, run: Run, now: int) -> None:
        """The run has no open state left: its final status, committed; watchers hear of it after the commit."""
        run.status = RUN_CANCELLED if run.cancelled else RUN_FAILED if run.failed else RUN_SUCCESS
        run.updated_at_ms = now
        self._commit.finish_run(run)

    def reopen_run(self, run: Run, now: int) -> None:
        """A finished run is PENDING again (a manual retry created a new attempt in it)."""
        run.status = RUN_PENDING
        run.end_committed = False
        run.updated_at_ms = now
        self._commit.mark_run(run)

    def write_store(self, run: Run, writes: Mapping[str, str]) -> None:
        run.store.update(writes)
        self._commit.mark_run(run)

    def forget(self, run: Run) -> None:
        """Drop a run whose end is committed; reads go to the store from now on."""
        self.runs.pop(run.run_id, None)

    # ------------------------------------------------------------------ states

    def new_state(
        self,
        run: Run,
        node: CompiledNode,
        inputs: dict[str, str],
        parent: State | None,
        parent_output: int,
        path: tuple[int, ...],
        now: int,
        *,
        attempt: int = 1,
        run_at_ms: int = 0,
        watchers: tuple[State, ...] | None = None,
    ) -> State:
        """Create a CREATED state in ``run``, counted open in the run and below its watchers, marked for commit.

        ``watchers`` may be given when the caller computed them once for many siblings (see fanin.watchers_of)."""
        seq = run.next_seq
        run.next_seq = seq + 1
        run_id = run.run_id
        # Positional, in _NEW_STATE_FIELDS order: a dataclass of 35 fields is built 3x faster so (0.49 against 1.63 us).
        state = State(
            f"{run_id}-{seq}", run_id, node.identifier, node.node_name, CREATED, inputs, attempt,
            parent.state_id if parent is not None else None, parent_output, path, None, None, None, now, now,
            run_at_ms, seq, "", 0, 0, run, node, parent,
            fanin.watchers_of(parent, node) if watchers is None else watchers,
        )  # fmt: skip
        fanin.opened(state)
        run.states.append(state)
        _count(run, None, CREATED)
        run.open_states += 1
        self._commit.add_state(state)
        return state

    def transition(
        self,
        state: State,
        status: StateStatus,
        now: int,
        *,
        outputs: Sequence[dict[str, str]] | None = None,
        error: dict[str, str] | None = None,
        pruned_data: str | None = None,
        run_at_ms: int | None = None,
    ) -> None:
        """Change ``state``'s status (with what comes with it), stamp it, and mark it for the next commit."""
        _count(state.run, state.status, status)
        state.status = status
        state.updated_at_ms = now
        if outputs is not None:
            state.outputs = outputs
        if error is not None:
            state.error = error
        if pruned_data is not None:
            state.pruned_data = pruned_data
        if run_at_ms is not None:
            state.run_at_ms = run_at_ms
        self._commit.mark(state)

    def dispatched(self, state: State, session: Session, dispatch_id: int, deadline_ms: int, now: int) -> None:
        """CREATED → QUEUED: handed to a runtime. Not committed: after a crash it runs again (at-least-once)."""
        _count(state.run, state.status, QUEUED)
        state.status = QUEUED
        state.session = session
        state.dispatch_id = dispatch_id
        state.deadline_ms = deadline_ms
        state.dispatched_at_ms = now
        session.in_flight[dispatch_id] = state

    def answered(self, state: State, runtime_name: str, now: int) -> None:
        """The runtime that held ``state`` answered: who ran it, since when, for how long (committed with the
        status change the answer brings)."""
        state.runtime_name = runtime_name
        state.started_at_ms = state.dispatched_at_ms
        state.ran_ms = max(0, now - state.dispatched_at_ms)
        # Past: their ints (often one per state each) need not live as long as the run.
        state.deadline_ms = state.dispatch_id = 0

    def undispatched(self, state: State) -> None:
        """QUEUED → CREATED: its runtime went away before answering. The database still holds CREATED."""
        _count(state.run, state.status, CREATED)
        state.status = CREATED
        state.session = None

    # ------------------------------------------------------------------ loading from the store

    def load(
        self,
        run_rows: Sequence[RunRow],
        state_rows: Sequence[StateRow],
        graph_of: Callable[[RunRow], CompiledGraph | None],
    ) -> list[Run]:
        """Rebuild live runs from stored rows: link states, recount open states and fan-in, keep failures.

        A state that was dispatched (or executed without its result committed) is CREATED again. The caller
        continues the runs (queues CREATED states, fires due merges, ends runs with nothing open).
        """
        runs: dict[str, Run] = {}
        for run_row in run_rows:
            runs[run_row.run_id] = Run(
                run_id=run_row.run_id,
                namespace=run_row.namespace,
                graph_name=run_row.graph_name,
                graph_version=run_row.graph_version,
                status=run_row.status,
                store=run_row.store,
                created_at_ms=run_row.created_at_ms,
                updated_at_ms=run_row.updated_at_ms,
                graph=graph_of(run_row),  # type: ignore[arg-type]
                state_counts={},  # counted again from the states below
            )
        loaded: dict[str, State] = {}  # a parent is always in its child's run, and loaded before it
        latest: dict[tuple[str | None, str, int], int] = {}
        for row in state_rows:
            key = (row.parent_id, row.identifier, row.parent_output)
            latest[key] = max(latest.get(key, 0), row.attempt)
        for row in state_rows:
            run = runs.get(row.run_id)
            if run is None:
                continue
            if run.graph is None or row.identifier not in run.graph.nodes:
                logger.error(
                    "graph version missing; state dropped run_id=%s graph_version=%d state_id=%s",
                    run.run_id, run.graph_version, row.state_id,
                )  # fmt: skip
                run.failed = True
                continue
            node = run.graph.nodes[row.identifier]
            parent = loaded.get(row.parent_id) if row.parent_id else None
            if parent is not None and parent.run is not run:
                parent = None
            state = State(
                state_id=row.state_id,
                run_id=row.run_id,
                identifier=row.identifier,
                node_name=row.node_name,
                status=CREATED if row.status in LIVE_STATE_STATUSES else StateStatus(row.status),
                inputs=row.inputs,
                attempt=row.attempt,
                parent_id=row.parent_id,
                parent_output=row.parent_output,
                path=row.path,
                # Packed as a live leaf's are (server/machine.py): read again only by a merge, a read, its row.
                outputs=pack(row.outputs) if row.outputs and not node.next else row.outputs,
                error=row.error,
                pruned_data=row.pruned_data,
                created_at_ms=row.created_at_ms,
                updated_at_ms=row.updated_at_ms,
                run_at_ms=row.run_at_ms,
                seq=row.seq,
                runtime_name=row.runtime_name,
                started_at_ms=row.started_at_ms,
                ran_ms=row.ran_ms,
                run=run,
                node=node,
                parent=parent,
                watchers=fanin.watchers_of(parent, node),
            )
            run.states.append(state)
            _count(run, None, state.status)
            run.next_seq = max(run.next_seq, state.seq + 1)
            loaded[state.state_id] = state
            superseded = latest[row.parent_id, row.identifier, row.parent_output] > row.attempt
            fanin.restore(state, superseded=superseded)
            if state.status == CREATED:
                run.open_states += 1
            elif not superseded and state.status in FAILED_STATE_STATUSES and state.status != CANCELLED:
                run.failed = True
        for run in runs.values():
            self.runs[run.run_id] = run
        return list(runs.values())


def _count(run: Run, old: StateStatus | None, new: StateStatus) -> None:
    """Keep ``run.state_counts`` (states per status, no zeros) current: every status change passes here."""
    counts = run.state_counts
    if old is not None:
        left = counts.get(old, 0) - 1
        if left > 0:
            counts[old] = left
        else:
            counts.pop(old, None)
    counts[new] = counts.get(new, 0) + 1


def _seq(state: State) -> int:
    return state.seq
