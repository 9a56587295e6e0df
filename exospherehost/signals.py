"""exospherehost's signals, with its messages; they are our signals, so any runtime handles them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from exosphere import signals as _ours

__all__ = ["PruneSignal", "ReQueueAfterSignal"]

_NOTE = "\n NOTE: Do not catch this Exception, let it bubble up to Runtime for handling at StateManager"


class PruneSignal(_ours.PruneSignal):
    """End this branch: the state becomes PRUNED with ``data`` kept, and no next states are created."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        super().__init__(data)
        self.args = (f"Prune signal received with data: {self.data} {_NOTE}",)


class ReQueueAfterSignal(_ours.ReQueueAfterSignal):
    """Run the same state again after ``delay`` (> 0), without counting a retry."""

    def __init__(self, delay: timedelta) -> None:
        if isinstance(delay, timedelta) and delay.total_seconds() <= 0:
            raise ValueError("Delay must be greater than 0")
        super().__init__(delay)
        self.args = (f"ReQueueAfter signal received with timedelta: {delay} {_NOTE}",)
