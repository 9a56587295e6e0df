"""Manual retries: a user asks for a new attempt of a failed state, at most once per request id.

Only the last attempt of a state may be retried, and only if it failed (ERRORED, TIMEDOUT, NEXT_CREATED_ERROR) in a
run that was not cancelled. A finished run is loaded back from the store and reopened. Request ids are scoped by
namespace: the same id in two namespaces names two requests. The id and the new state are committed with the new
attempt, in one transaction, so a repeated request gets the same answer even after a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from exosphere.errors import ConflictError, ExosphereError, StateNotFoundError

from .catalog import GraphCatalog
from .commit import GroupCommit
from .machine import StateMachine
from .models import RunRow
from .runstate import Run, State
from .runtable import RunTable
from .status import RETRYABLE_STATE_STATUSES, RunStatus
from .store import Store

__all__ = ["ManualRetries"]

logger = logging.getLogger(__name__)


class ManualRetries:
    def __init__(
        self,
        store: Store,
        table: RunTable,
        catalog: GraphCatalog,
        machine: StateMachine,
        commit: GroupCommit,
        *,
        clock: Callable[[], int],
        forget: Callable[[Run], None],
    ) -> None:
        self._store = store
        self._table = table
        self._catalog = catalog
        self._machine = machine
        self._commit = commit
        self._clock = clock
        self._forget = forget
        self._pending: dict[str, str] = {}  # request keys not committed yet -> the new state id

    async def retry(self, state_id: str, request_id: str) -> str:
        """The id of the new attempt of ``state_id`` (the same one for a repeated ``request_id``)."""
        run_id = state_id.rpartition("-")[0]
        row = (self._table.runs.get(run_id) or self._store.get_run(run_id)) if run_id else None
        if row is None:
            raise StateNotFoundError(state_id)
        key = f"retry-request:{row.namespace}:{request_id}" if request_id else ""
        previous = (self._pending.get(key) or self._commit.get_kv(key)) if key else None
        if previous is not None:
            return previous
        reopened = run_id not in self._table.runs
        state = self._table.state(state_id) or self._reopen(row, state_id)
        try:
            _check_retryable(state)
        except ExosphereError:
            if reopened:
                self._forget(state.run)
            raise
        new = self._machine.retry(state, self._clock())
        if key:
            self._commit.put_kv(key, new.state_id)
            self._pending[key] = new.state_id
        try:
            await self._commit.wait()
        finally:
            self._pending.pop(key, None)
        logger.info("state retried by request state_id=%s new_state_id=%s", state_id, new.state_id)
        return new.state_id

    def _reopen(self, row: RunRow, state_id: str) -> State:
        """Load a finished run back into memory."""
        if row.status == RunStatus.CANCELLED:
            raise ConflictError(
                f"run {row.run_id!r} was cancelled; its states cannot be retried", run_id=row.run_id, state_id=state_id
            )
        rows = self._store.get_states(row.run_id, -1, 0)
        runs = self._table.load(
            [row], rows, lambda r: self._catalog.version(r.namespace, r.graph_name, r.graph_version)
        )
        for run in runs:
            if run.graph is not None:
                self._catalog.acquire(run.graph)
        self._machine.resume(runs, self._clock(), end=False)
        state = self._table.state(state_id)
        if state is None:
            for run in runs:
                self._forget(run)
            raise StateNotFoundError(state_id)
        return state


def _check_retryable(state: State) -> None:
    run = state.run
    later = any(
        s.identifier == state.identifier
        and s.parent_id == state.parent_id
        and s.parent_output == state.parent_output
        and s.attempt > state.attempt
        for s in run.states
    )
    if state.status not in RETRYABLE_STATE_STATUSES or run.cancelled or later:
        why = "a later attempt exists" if later else f"it is {state.status}"
        raise ConflictError(
            f"state {state.state_id!r} cannot be retried: {why}; only the last failed attempt can",
            run_id=run.run_id,
            state_id=state.state_id,
        )
