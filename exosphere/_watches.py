"""Following a run's watch stream to its outcome, and the watches ``trigger()`` opens for a later ``wait()``.

``trigger()`` on a scheduler that announces (``TriggerGraphResponse.announces``) starts the run with
``WatchRun(trigger=..., announce=True)``: the first event names the new run, and the same stream later carries
its outcome and final snapshot. The open call is kept here, keyed by run id, so ``wait(run_id)`` reads the
outcome from it instead of opening a watch of its own: trigger-then-wait costs the scheduler and the network one
call, not two. At most ``LIMIT`` are kept per client; the oldest is cancelled to make room (its ``wait()``, if it
ever comes, opens a watch as before), and every one is cancelled when the client closes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from exosphere._channel import translate_errors
from exosphere._wire import run_from_pb, states_from_pb
from exosphere.models import RunModel, StateModel
from exosphere.v1 import common_pb2
from exosphere.v1 import scheduler_pb2 as pb

__all__ = ["LIMIT", "OpenWatches", "follow"]

# Watch streams kept open per client for a wait() that may follow its trigger().
LIMIT = 64


class OpenWatches:
    """Watch calls opened by ``trigger()``, each waiting for the ``wait()`` on its run."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._calls: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def keep(self, run_id: str, call: Any) -> None:
        self._calls[run_id] = call
        while len(self._calls) > self._limit:
            _, oldest = self._calls.popitem(last=False)
            oldest.cancel()

    def take(self, run_id: str) -> Any | None:
        """The open watch of ``run_id``, now the caller's to read (and to cancel), or None."""
        return self._calls.pop(run_id, None)

    def cancel_all(self) -> None:
        while self._calls:
            _, call = self._calls.popitem()
            call.cancel()


async def follow(call: Any, final_snapshot: bool) -> tuple[RunModel, bool] | None:
    """Read a watch until the run is no longer pending: the run, with its states when the scheduler sent its
    final snapshot (then ``True``); None when the stream ended first. The call is cancelled unless it ended."""
    final: Any = None
    states: list[StateModel] = []
    last = False
    try:
        async with translate_errors():
            # read(), not iteration: trigger() read the announce with read(), and one call cannot mix the two.
            while isinstance(event := await call.read(), pb.WatchRunResponse):
                if event.run.status == common_pb2.RUN_STATUS_PENDING:
                    continue  # an announce, or a scheduler before final_snapshot: run-only events while pending
                if final is None:
                    final = event.run
                if final_snapshot:
                    states.extend(states_from_pb(event.states))  # this event's, while the next one travels
                last = event.last
                if last or not final_snapshot:
                    break
    finally:
        # The scheduler ends the stream right after its last event: cancelling it would cost both sides more
        # than letting it end, and waiting for that end would delay the answer.
        if not last:
            call.cancel()
    if final is None:
        return None
    return run_from_pb(final, states), last and final_snapshot
