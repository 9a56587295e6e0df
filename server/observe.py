"""What the hot path counts for operators: dispatch waits, execution times, commits. Plain Python, no locks.

The engine runs in one event loop thread, so counting needs no lock; and it counts in batches: the dispatcher hands
over the ready times of all the states one queue sent in a tick, the engine the run times of a result batch, the
group commit one call per transaction. Values are appended raw (about 40 ns each) and folded into histogram buckets
later, when ``/metrics`` is read or a backlog passes ``FOLD_AT``, so the hot path never sorts or searches.
``server/metrics.py`` turns a :class:`Tally` into Prometheus families; nothing here imports prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence

from .runstate import State
from .status import StateStatus

__all__ = ["COMMIT_BOUNDS_MS", "DISPATCH_BOUNDS_MS", "EXECUTION_BOUNDS_MS", "FINAL", "Histogram", "Tally"]

FINAL = frozenset(
    {
        StateStatus.SUCCESS,
        StateStatus.ERRORED,
        StateStatus.RETRY_CREATED,
        StateStatus.PRUNED,
        StateStatus.NEXT_CREATED_ERROR,
        StateStatus.TIMEDOUT,
        StateStatus.CANCELLED,
    }
)
# Raw values kept before they are folded into buckets (bounds the memory of a scheduler nobody scrapes).
FOLD_AT = 4096

DISPATCH_BOUNDS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000)
EXECUTION_BOUNDS_MS = (
    *(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000),
    *(300_000, 900_000, 1_800_000, 3_600_000),
)
COMMIT_BOUNDS_MS = (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)


class Histogram:
    """Bucket counts (``counts[i]`` = values ≤ ``bounds[i]`` and above the bound before; the last is +Inf)."""

    __slots__ = ("bounds", "counts", "raw", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.raw: list[float] = []

    def add(self, values: Iterable[float]) -> None:
        raw = self.raw
        raw.extend(values)
        if len(raw) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        bounds, counts = self.bounds, self.counts
        for value in self.raw:
            counts[bisect_left(bounds, value)] += 1
        self.total += sum(self.raw)
        self.raw.clear()

    def cumulative(self) -> list[int]:
        """Counts of values ≤ each bound, then the count of all (Prometheus' ``le`` buckets)."""
        self.fold()
        out, running = [], 0
        for count in self.counts:
            running += count
            out.append(running)
        return out


class Tally:
    """Counters the engine keeps for ``/metrics``; keys are ``(namespace, node_name)``."""

    def __init__(self) -> None:
        self.dispatch_wait: dict[tuple[str, str], Histogram] = {}
        self.execution: dict[tuple[str, str], Histogram] = {}
        self.commit_latency = Histogram(COMMIT_BOUNDS_MS)
        self.commits = 0
        self.committed_states = 0
        # States that reached a final status, by (namespace, node, status), once committed. Statuses on the way
        # (CREATED, QUEUED, EXECUTED) are not counted: the live gauge shows them, and skipping them halves the cost.
        self.states_finished: Counter[tuple[str, str, str]] = Counter()

    def dispatched(self, key: tuple[str, str], now: int, ready_at: Sequence[int]) -> None:
        """States of one ready queue went out at ``now`` (ms); each had been ready since ``ready_at``."""
        hist = self.dispatch_wait.get(key)
        if hist is None:
            hist = self.dispatch_wait[key] = Histogram(DISPATCH_BOUNDS_MS)
        hist.add([now - at for at in ready_at])

    def executed(self, namespace: str, now: int, states: Sequence[State]) -> None:
        """A batch of results came back at ``now`` (ms) for ``states``, each dispatched at ``dispatched_at_ms``."""
        execution = self.execution
        for state in states:
            key = (namespace, state.node_name)
            hist = execution.get(key)
            if hist is None:
                hist = execution[key] = Histogram(EXECUTION_BOUNDS_MS)
            hist.raw.append(now - state.dispatched_at_ms)
        for hist in execution.values():
            if len(hist.raw) >= FOLD_AT:
                hist.fold()

    def committed(self, latency_ms: float, changed: Sequence[State]) -> None:
        """One group commit of ``changed`` states took ``latency_ms`` (from the end of its tick to durable)."""
        self.commits += 1
        self.committed_states += len(changed)
        self.commit_latency.raw.append(latency_ms)
        if len(self.commit_latency.raw) >= FOLD_AT:
            self.commit_latency.fold()
        finished = self.states_finished
        for s in changed:
            status = s.status
            if status in FINAL and status != s.counted_status:
                s.counted_status = status
                finished[s.run.namespace, s.node_name, status] += 1
