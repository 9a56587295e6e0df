"""Reading runs for the API: a run and its states, lists of runs, ids by prefix, and following a run to its end.

A run this scheduler holds is read from memory (with the nodes it waits for a runtime for); any other run, a
finished one or, in cluster mode, one another replica holds, is read from the store. A watch of a run held elsewhere
follows it through the store until it ends or moves here (server/watches.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from exosphere.errors import RunNotFoundError

from . import watches
from .models import RunRow, StateRow
from .ownership import Shards
from .runtable import RunTable
from .sessions import Sessions
from .status import RunStatus, StateStatus
from .store import RunCursor, StateRowReader, Store

if TYPE_CHECKING:
    from .engine import EngineSettings

__all__ = ["RunQueries"]

CREATED = StateStatus.CREATED


class RunQueries:
    """The read side of runs; the engine's facade delegates to it."""

    def __init__(
        self, store: Store, table: RunTable, runtimes: Sessions, shards: Shards, settings: EngineSettings
    ) -> None:
        self._store = store
        self._table = table
        self._runtimes = runtimes
        self._shards = shards
        self._settings = settings

    def get_run(self, run_id: str, page_size: int = 0, after_seq: int = -1) -> tuple[RunRow, list[StateRow], int]:
        """The run, a page of its states (by sequence), and the last sequence returned (-1 when none)."""
        run = self._table.runs.get(run_id)
        if run is not None:
            states: list[StateRow] = [s for s in run.states if s.seq > after_seq]
            del states[page_size or len(states) :]
            run.waiting_for_runtime = self._runtimes.waiting_for_runtime(run)
            return run, states, states[-1].seq if states else -1
        row = self._stored_row(run_id)
        rows = self._store.get_states(run_id, after_seq, page_size)
        return row, rows, rows[-1].seq if rows else -1

    def get_run_row(self, run_id: str) -> RunRow:
        """The run without its states (a page of a run read page by page needs no state to find its row)."""
        run = self._table.runs.get(run_id)
        if run is not None:
            run.waiting_for_runtime = self._runtimes.waiting_for_runtime(run)
            return run
        return self._stored_row(run_id)

    def _stored_row(self, run_id: str) -> RunRow:
        row = self._store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        if row.status == RunStatus.PENDING:  # another replica's run: its row's counts are those of its start
            row.state_counts = self._store.count_states(run_id)
        return row

    def get_states(self, run_id: str, after_seq: int = -1, limit: int = 0) -> list[StateRow]:
        """States of a run not held here, from the store (by sequence; all with ``limit`` 0)."""
        return self._store.get_states(run_id, after_seq, limit)

    def get_state_rows(self, run_id: str, after_seq: int = -1, limit: int = 0) -> list[tuple[object, ...]] | None:
        """As ``get_states``, unconverted (server/store.py StateRowReader); None when the store cannot."""
        if not hasattr(self._store, "get_state_rows"):  # an optional part of a store (SQLite has it)
            return None
        return cast(StateRowReader, self._store).get_state_rows(run_id, after_seq, limit)

    def list_runs(
        self, namespace: str, graph_name: str | None, limit: int, after: RunCursor | None, status: str | None = None
    ) -> list[RunRow]:
        rows = self._store.list_runs(namespace, graph_name, limit, after=after, status=status)
        for i, row in enumerate(rows):
            live = self._table.runs.get(row.run_id)
            if live is not None:
                live.waiting_for_runtime = self._runtimes.waiting_for_runtime(live)
                rows[i] = live
            elif row.status == RunStatus.PENDING:  # another replica's run: its row's counts are those of its start
                row.state_counts = self._store.count_states(row.run_id)
        return rows

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        """(run id, namespace) of at most ``limit`` runs whose id starts with ``prefix`` (server/prefixes.py)."""
        return self._store.find_runs(prefix, limit)

    async def watch_run(
        self, run_id: str, *, whole_end: bool = False, end_only: bool = False
    ) -> AsyncIterator[tuple[RunRow, list[StateRow]]]:
        """Yield the run with all its states, then the changed ones per commit, until its end (all, with whole_end;
        with end_only, nothing between its first event and its end: server/watches.py follow)."""
        run = self._table.runs.get(run_id)
        if run is None:
            row, states, _ = self.get_run(run_id)
            yield row, states
            if row.status != RunStatus.PENDING or self._shards.owns(run_id):
                return
            ended = watches.Ended()
            async for event in watches.follow_elsewhere(
                self._store, run_id, self._table.runs, self._settings.remote_watch_interval_s, ended
            ):
                yield event
            run = ended.moved_here
            if run is None:
                return
        async for row, states in watches.follow(run, whole_end=whole_end, end_only=end_only):
            # Counted only while the run has CREATED states (the counts are refreshed at most every 50 ms).
            if row.state_counts.get(CREATED, 0) or run.waiting_for_runtime:
                run.waiting_for_runtime = self._runtimes.waiting_for_runtime(run)
            row.waiting_for_runtime = run.waiting_for_runtime
            yield row, states
