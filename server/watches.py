"""Watches: a client following a live run hears of each committed change, and of the run's end once committed.

Each watcher of a run has a queue. After every group commit the engine calls :func:`notify` with the states that
commit saved; each watcher of their runs gets them as one event. A run's end is part of the run only once it is
committed: until then a watcher (and any reader) sees it PENDING (:func:`committed_view`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

from exosphere.errors import ConnectionFailedError

from .models import RunRow, StateRow
from .runstate import Run, State
from .status import RunStatus
from .store import Store

__all__ = ["committed_view", "follow", "notify"]


def committed_view(run: Run) -> RunRow:
    """The run as committed: an end not yet committed is still PENDING to the outside."""
    if run.end_committed or run.pending:
        return run
    return RunRow(
        run_id=run.run_id,
        namespace=run.namespace,
        graph_name=run.graph_name,
        graph_version=run.graph_version,
        status=RunStatus.PENDING,
        store=run.store,
        created_at_ms=run.created_at_ms,
        updated_at_ms=run.updated_at_ms,
        state_counts=run.state_counts,
    )


async def follow(
    run: Run, *, whole_end: bool = False, end_only: bool = False
) -> AsyncIterator[tuple[RunRow, list[StateRow]]]:
    """Yield the run with all its states, then the states of each commit that changed it, until its end (with
    ``whole_end``, the end with all its states: the run's final snapshot). With ``end_only``, the run as it is now
    and then its end alone: a wait costs nothing per commit before the end (its first event carries no states
    while the run is pending)."""
    queue: asyncio.Queue[list[State] | None] = asyncio.Queue()
    watchers = run.end_watchers if end_only else run.watchers
    watchers.append(queue)
    try:
        reported_end = run.end_committed
        yield committed_view(run), list(run.states) if reported_end or not end_only else []
        # The run's end is reported once it is committed; that commit always notifies this queue, so no event is
        # lost even when it lands while the consumer is busy with the previous one.
        while not reported_end:
            changed = await queue.get()
            if changed is None:  # its shard moved to another replica (Engine.release_shards)
                raise ConnectionFailedError(f"run {run.run_id} moved to another scheduler replica; watch it again")
            reported_end = run.end_committed
            yield committed_view(run), list(run.states if reported_end and whole_end else changed)
    finally:
        if queue in watchers:
            watchers.remove(queue)


def notify(changed: Sequence[State], finished: Sequence[Run]) -> None:
    """Hand each watcher of a changed or finished run the states one commit saved."""
    by_run: dict[str, tuple[Run, list[State]]] = {}
    for state in changed:
        run = state.run
        if run.watchers:
            entry = by_run.get(run.run_id)
            if entry is None:
                entry = by_run[run.run_id] = (run, [])
            entry[1].append(state)
    for run in finished:
        if run.watchers and run.run_id not in by_run:
            by_run[run.run_id] = (run, [])
        for queue in run.end_watchers:
            queue.put_nowait([])
    for run, states in by_run.values():
        for queue in run.watchers:
            queue.put_nowait(states)


class Ended:
    """How ``follow_elsewhere`` ended: with the run come to this replica (``moved_here``), or ended elsewhere."""

    __slots__ = ("moved_here",)

    def __init__(self) -> None:
        self.moved_here: Run | None = None


async def follow_elsewhere(
    store: Store, run_id: str, live: Mapping[str, Run], interval_s: float, ended: Ended
) -> AsyncIterator[tuple[RunRow, list[StateRow]]]:
    """Cluster mode: follow a pending run of a shard another replica owns through the store, until it ends there
    (yielded with its states) or its shard comes here (the owner died or left: ``ended.moved_here``)."""
    while True:
        await asyncio.sleep(interval_s)
        run = live.get(run_id)
        if run is not None:
            ended.moved_here = run
            return
        stored = store.get_run(run_id)
        if stored is None or stored.status == RunStatus.PENDING:
            continue
        yield stored, store.get_states(run_id, -1, 0)
        return
