"""Control-flow signals a node raises from ``execute`` to steer its state. Nodes must not catch them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = ["PruneSignal", "ReQueueAfterSignal", "Signal"]


class Signal(Exception):
    """Base class of the signals."""


class PruneSignal(Signal):
    """End this branch: the state becomes PRUNED, ``data`` is kept, and no next states are created.

    A pruned branch counts as done, not as a failure.
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        super().__init__(f"prune with data {self.data!r}")


class ReQueueAfterSignal(Signal):
    """Run the same state again after ``delay``, with the same inputs, without counting a retry."""

    def __init__(self, delay: timedelta) -> None:
        if not isinstance(delay, timedelta):
            raise TypeError(f"ReQueueAfterSignal delay must be a timedelta, got {type(delay).__name__}")
        if delay <= timedelta(0):
            raise ValueError(f"ReQueueAfterSignal delay must be greater than 0, got {delay}")
        self.delay = delay
        super().__init__(f"requeue after {delay}")
