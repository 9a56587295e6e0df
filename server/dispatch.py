"""Ready queues and dispatch: which runtime session runs which state, within its free credit.

One FIFO queue per (namespace, node); a state whose start time is in the future waits in a heap behind one timer.
Dispatch runs once per loop tick (coalesced) and spreads each queue over the sessions hosting that node, never
past a session's free credit. Sessions of one namespace never see another namespace's states.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from .graph import MAX_DELAY_MS
from .observe import Tally
from .runstate import Session, State
from .runtable import RunTable
from .status import StateStatus

__all__ = ["Dispatcher"]

# Enum members bound once: attribute access on an Enum class costs ~70 ns on Python 3.11 and the hot path makes
# dozens per state.
CREATED = StateStatus.CREATED


class Dispatcher:
    def __init__(
        self,
        table: RunTable,
        *,
        loop: Callable[[], asyncio.AbstractEventLoop | None],
        clock: Callable[[], int],
        default_timeout_ms: int,
        tally: Tally | None = None,
    ) -> None:
        self._table = table
        self._tally = tally or Tally()
        # server/tracing.Tracing when traces are on (set by the engine).
        self.tracing: Any = None
        self._loop = loop
        self._clock = clock
        self._default_timeout_ms = default_timeout_ms
        self._ready: dict[tuple[str, str], deque[State]] = {}
        self._ready_keys: set[tuple[str, str]] = set()
        self.by_namespace: dict[str, list[Session]] = {}
        self._delayed: list[tuple[int, int, State]] = []
        self._delay_counter = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._dispatch_seq = itertools.count(1)
        self._scheduled = False

    def add_session(self, session: Session) -> None:
        self.by_namespace.setdefault(session.namespace, []).append(session)
        self.schedule()

    def remove_session(self, session: Session) -> None:
        peers = self.by_namespace.get(session.namespace, [])
        if session in peers:
            peers.remove(session)

    def depths(self) -> dict[tuple[str, str], int]:
        """Ready states waiting for a runtime's credit, by (namespace, node); delayed states not yet due excluded."""
        return {key: len(queue) for key, queue in self._ready.items()}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def enqueue(self, state: State) -> None:
        """Queue a CREATED state: now, or at its ``run_at_ms``."""
        if state.run_at_ms and state.run_at_ms > self._clock():
            heapq.heappush(self._delayed, (state.run_at_ms, next(self._delay_counter), state))
            self._arm_timer()
            return
        key = (state.run.namespace, state.node_name)
        queue = self._ready.get(key)
        if queue is None:
            queue = self._ready[key] = deque()
        queue.append(state)
        self._ready_keys.add(key)
        if not self._scheduled:  # once per tick, not per state
            self.schedule()

    def _arm_timer(self) -> None:
        loop = self._loop()
        if not self._delayed or loop is None:
            return
        first = self._delayed[0][0]
        if self._timer is not None and self._timer_at <= first:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = first
        self._timer = loop.call_later(max(0.0, (first - self._clock()) / 1000), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.release_due()

    def release_due(self) -> None:
        """Queue the delayed states whose start time has come (the timer does; the sweep double-checks)."""
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, state = heapq.heappop(self._delayed)
            if state.status == CREATED and not state.run.dropped:
                self.enqueue(state)
        self._arm_timer()

    def schedule(self) -> None:
        """Dispatch at the end of this tick (once, however many calls)."""
        loop = self._loop()
        if not self._scheduled and loop is not None:
            self._scheduled = True
            loop.call_soon(self.dispatch)

    def dispatch(self) -> None:
        """Hand ready states to sessions with free credit, spreading each queue over its sessions."""
        self._scheduled = False
        if not self._ready_keys:
            return
        now = self._clock()
        tally, tracing = self._tally, self.tracing
        deadlines: dict[int, int] = {}
        for key in list(self._ready_keys):
            queue = self._ready[key]
            namespace, node_name = key
            sessions = [s for s in self.by_namespace.get(namespace, ()) if node_name in s.node_names and s.credit > 0]
            # When each state sent became ready (created, requeued, or its start time): one batch for the metrics.
            ready_at: list[int] = []
            while queue and sessions:
                share = max(1, -(-len(queue) // len(sessions)))
                for session in sessions:
                    take = min(share, session.credit, len(queue))
                    for _ in range(take):
                        state = queue.popleft()
                        if state.status == CREATED and not state.run.dropped:
                            ready_at.append(max(state.updated_at_ms, state.run_at_ms))
                            self._assign(session, state, now, deadlines)
                            if tracing is not None:
                                tracing.dispatched(state, session, now)
                    if take:
                        session.wake.set()
                sessions = [s for s in sessions if s.credit > 0]
            if ready_at:
                tally.dispatched(key, now, ready_at)
            if not queue:
                self._ready_keys.discard(key)

    def _assign(self, session: Session, state: State, now: int, deadlines: dict[int, int]) -> None:
        timeout = state.node.timeout_ms or self._default_timeout_ms
        # One deadline object per timeout and tick, shared by the states it applies to (an int each otherwise).
        deadline = deadlines.get(timeout)
        if deadline is None:
            deadline = deadlines[timeout] = now + min(timeout, MAX_DELAY_MS)
        self._table.dispatched(state, session, next(self._dispatch_seq), deadline, now)
        session.outbox.append(state)
