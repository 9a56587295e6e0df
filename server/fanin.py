"""Fan-in bookkeeping: when the merge states of a ``unites`` node may be created.

A state whose node is named by some merge node's ``unites`` is a *united* state. Every state below it (its
descendants, across fan-outs and retries) lists it among its ``watchers`` and counts in its ``open_descendants``
(kept in ``state.aside``, made when first needed: most states are not united).
When that count falls to zero nothing below the united state can change any more, and its merge nodes fire:
``ALL_DONE`` always, ``ALL_SUCCESS`` only if no descendant failed (otherwise a manual retry of the failed branch
may still make it fire later). The functions here only count; creating the merge states is the state machine's.
"""

from __future__ import annotations

from .graph import CompiledNode
from .runstate import Aside, Run, State
from .status import FAILED_STATE_STATUSES, StateStatus

__all__ = [
    "closed",
    "collected",
    "due_merges",
    "opened",
    "recount_failures",
    "release",
    "replaced",
    "restore",
    "watchers_of",
]

# Enum members bound once: attribute access on an Enum class costs ~70 ns on Python 3.11 and the hot path makes
# dozens per state.
CANCELLED = StateStatus.CANCELLED
CREATED = StateStatus.CREATED
EXECUTED = StateStatus.EXECUTED
QUEUED = StateStatus.QUEUED
SUCCESS = StateStatus.SUCCESS


def watchers_of(parent: State | None, node: CompiledNode) -> tuple[State, ...]:
    """The united states that a new state of ``node``, created below ``parent``, reports to."""
    if parent is None:
        return ()
    if node.unites is not None and parent.identifier == node.unites:
        return parent.watchers  # a merge state reports where its united state reports
    return (*parent.watchers, parent) if parent.node.merges else parent.watchers


def opened(state: State) -> None:
    """A new state is open below each of its watchers."""
    for watcher in state.watchers:
        (watcher.aside or _aside(watcher)).open_descendants += 1


def replaced(state: State) -> None:
    """A failed attempt handed its place to a new attempt (automatic retry): it no longer counts as open."""
    for watcher in state.watchers:
        (watcher.aside or _aside(watcher)).open_descendants -= 1


def closed(state: State, *, failed: bool) -> list[State]:
    """``state`` reached its final status. Returns the watchers that nothing open is left below."""
    ready = []
    ident = state.identifier
    for watcher in state.watchers:
        counts = watcher.aside or _aside(watcher)
        counts.open_descendants -= 1
        if failed or state.status == CANCELLED:
            counts.descendant_failed = True
        elif state.status == SUCCESS and ident in watcher.node.collect:
            _collect(counts, state)
        if counts.open_descendants == 0:
            ready.append(watcher)
    return ready


def due_merges(united: State) -> list[CompiledNode]:
    """The merge nodes of ``united`` to create now; each is returned once (marked fired)."""
    if united.status != SUCCESS or not united.node.merges:
        return []
    counts = united.aside or _aside(united)
    if counts.open_descendants > 0:
        return []
    if counts.fired is None:
        counts.fired = set()
    due = []
    for merge in united.node.merges:
        if merge.identifier in counts.fired:
            continue
        if united.run.cancelled or (merge.unites_strategy == "ALL_SUCCESS" and counts.descendant_failed):
            continue  # not fired: a manual retry of the failed branch may still succeed
        counts.fired.add(merge.identifier)
        due.append(merge)
    return due


def release(united: State) -> None:
    """Once every merge of ``united`` is created, drop the branch states it collected for them."""
    counts = united.aside
    if counts is not None and len(counts.fired or ()) == len(united.node.merges):
        counts.collected = None


def restore(state: State, *, superseded: bool) -> None:
    """Count a state loaded from the store (recovery) as ``closed``/``opened`` did when it ran."""
    if state.node.unites is not None and state.parent is not None and state.parent.identifier == state.node.unites:
        counts = state.parent.aside or _aside(state.parent)
        if counts.fired is None:
            counts.fired = set()
        counts.fired.add(state.identifier)
    if state.status in (CREATED, QUEUED, EXECUTED):
        opened(state)
    elif superseded:
        return
    elif state.status in FAILED_STATE_STATUSES:
        for watcher in state.watchers:
            (watcher.aside or _aside(watcher)).descendant_failed = True
    elif state.status == SUCCESS:
        for watcher in state.watchers:
            if state.identifier in watcher.node.collect:
                _collect(watcher.aside or _aside(watcher), state)


def recount_failures(run: Run) -> None:
    """Recompute which failures still count once a failed attempt has a newer one (manual retry)."""
    latest: dict[tuple[str | None, str, int], int] = {}
    for s in run.states:
        key = (s.parent_id, s.identifier, s.parent_output)
        latest[key] = max(latest.get(key, 0), s.attempt)
    run.failed = False
    for s in run.states:
        for watcher in s.watchers:
            (watcher.aside or _aside(watcher)).descendant_failed = False
    for s in run.states:
        if s.status in FAILED_STATE_STATUSES and s.status != CANCELLED:
            if latest[s.parent_id, s.identifier, s.parent_output] > s.attempt:
                continue
            run.failed = True
            for watcher in s.watchers:
                (watcher.aside or _aside(watcher)).descendant_failed = True


def collected(united: State, identifier: str) -> list[State]:
    """The succeeded states of node ``identifier`` collected below ``united`` for its merges (empty once released)."""
    counts = united.aside
    return (counts.collected or {}).get(identifier, []) if counts is not None else []


def _aside(state: State) -> Aside:
    state.aside = Aside()
    return state.aside


def _collect(counts: Aside, state: State) -> None:
    if counts.collected is None:
        counts.collected = {}
    counts.collected.setdefault(state.identifier, []).append(state)
