"""In-memory objects of the hot path: live states, runs and runtime sessions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .graph import CompiledGraph, CompiledNode
from .models import RunRow, StateRow
from .status import RunStatus

__all__ = ["Aside", "Run", "Session", "State"]


@dataclass(slots=True, eq=False)
class State(StateRow):
    """A state of a live run: the stored row plus links the engine follows."""

    run: Run = None  # type: ignore[assignment]
    node: CompiledNode = None  # type: ignore[assignment]
    parent: State | None = None
    # States above this one whose merge nodes wait for it (see server/fanin.py).
    watchers: tuple[State, ...] = ()
    session: Session | None = None
    dispatch_id: int = 0
    deadline_ms: int = 0
    # When it was last handed to a runtime (ms): execution time is measured from here.
    dispatched_at_ms: int = 0
    # The status last counted for /metrics (server/observe.py): a state committed again unchanged counts once.
    counted_status: str = ""
    # Tracing (server/tracing.py), only when on: the W3C traceparent of its dispatch span, for the runtime.
    traceparent: str = ""
    # What few states need (a united state's fan-in counts, a traced state's open span); set on united states.
    aside: Aside | None = None


@dataclass(slots=True, eq=False)
class Aside:
    """What few states hold, kept off ``State`` itself, where each field costs every live state 8 bytes.

    A united state (one that merge nodes wait for, server/fanin.py) counts its open descendants, whether one failed,
    the merges created and the branch states collected for them; a dispatched state, when tracing is on, holds its
    open span (server/tracing.py).
    """

    open_descendants: int = 0
    descendant_failed: bool = False
    fired: set[str] | None = None
    collected: dict[str, list[State]] | None = None
    trace_span: Any = None

    def holds_nothing(self) -> bool:
        """As good as no Aside at all: whoever needs one makes it again (server/fanin.py, server/tracing.py)."""
        return not (
            self.open_descendants
            or self.descendant_failed
            or self.fired
            or self.collected
            or self.trace_span is not None
        )


@dataclass(slots=True, eq=False)
class Run(RunRow):
    """A live run."""

    graph: CompiledGraph = None  # type: ignore[assignment]
    states: list[State] = field(default_factory=list)
    # The trigger span's context (W3C headers) when tracing is on: dispatch spans are its children.
    trace_carrier: dict[str, str] | None = None
    open_states: int = 0
    failed: bool = False
    cancelled: bool = False
    # The run's final status is committed (watchers may stop).
    end_committed: bool = False
    watchers: list[asyncio.Queue[list[State] | None]] = field(default_factory=list)
    # Watchers of its end alone (a wait): told once, when the end is committed, not of every commit before it.
    end_watchers: list[asyncio.Queue[list[State] | None]] = field(default_factory=list)
    next_seq: int = 0
    # Its shard was let go: nothing of it is dispatched or changed here any more (server/shards.py).
    dropped: bool = False

    @property
    def pending(self) -> bool:
        return self.status == RunStatus.PENDING

    def counts(self) -> dict[str, int]:
        """States per status: kept current by the run table (server/runtable.py), so this is a copy, not a count."""
        return dict(self.state_counts)


@dataclass(slots=True, eq=False)
class Session:
    """One connected runtime stream."""

    session_id: str
    namespace: str
    runtime_name: str
    runtime_id: str
    sdk_version: str
    node_names: frozenset[str]
    max_concurrency: int
    connected_at_ms: int
    last_seen: float
    # Dispatched states by dispatch id; an entry stays until the runtime answers (it holds one credit).
    in_flight: dict[int, State] = field(default_factory=dict)
    outbox: list[State] = field(default_factory=list)
    # Dispatches the scheduler cancelled, by dispatch id, with when (monotonic): their credit returns on the
    # runtime's acknowledgement or after a lease.
    cancelled: dict[int, float] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the scheduler ends the session (lease expired, shutting down).
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    # Set when the stopping scheduler asks the runtime to drain (SchedulerMessage.drain, sent once).
    drain_grace_ms: int | None = None
    drain_sent: bool = False
    # Results that matched no dispatch (server/rejects.py), to answer with ResultsRejected.
    rejected: list[Any] = field(default_factory=list)
    # Cluster mode: the set of live replicas changed since this runtime last heard it.
    replicas_changed: bool = False
    closed: bool = False
    close_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def credit(self) -> int:
        return 0 if self.draining or self.closed else self.max_concurrency - len(self.in_flight)
