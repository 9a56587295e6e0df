"""Following a watch to its run's outcome, and the watches ``trigger()`` opens for a later ``wait()``.

``trigger()`` starts the run with a watch (``WatchRunRequest.trigger`` and ``announce``) on the client's Watches
stream: its first event names the new run, and the same watch later carries the outcome and final snapshot. The
watch is kept here, by run id, so ``wait(run_id)`` reads the outcome from it instead of asking again:
trigger-then-wait costs one request. At most ``LIMIT`` are kept per client, each buffering at most ``KEEP_BYTES``
while unread; the oldest is cancelled to make room, and one that would buffer more is cancelled instead (a
``wait()`` that comes later watches afresh). Every one is cancelled when the client closes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from exosphere._channel import translate_errors
from exosphere._watch_stream import Watch
from exosphere._wire import run_from_pb, states_from_pb
from exosphere.models import RunModel, StateModel
from exosphere.v1 import common_pb2
from exosphere.v1 import scheduler_pb2 as pb

__all__ = ["KEEP_BYTES", "LIMIT", "OpenWatches", "follow"]

# Watches kept per client for a wait() that may follow their trigger(), and what each may buffer unread.
LIMIT = 64
KEEP_BYTES = 512 * 1024  # the scheduler sends at most one snapshot event (about 256 KiB) on a kept watch


class OpenWatches:
    """Watches opened by ``trigger()``, each waiting for the ``wait()`` on its run."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._calls: OrderedDict[str, Watch] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def keep(self, run_id: str, watch: Watch) -> None:
        watch.keep_bytes = KEEP_BYTES
        self._calls[run_id] = watch
        while len(self._calls) > self._limit:
            _, oldest = self._calls.popitem(last=False)
            oldest.cancel()

    def take(self, run_id: str) -> Watch | None:
        """The open watch of ``run_id``, now the caller's to read (and to cancel), or None."""
        watch = self._calls.pop(run_id, None)
        if watch is not None:
            watch.keep_bytes = None
        return watch

    def cancel_all(self) -> None:
        while self._calls:
            _, call = self._calls.popitem()
            call.cancel()


async def follow(call: Any, final_snapshot: bool, started: list[str] | None = None) -> tuple[RunModel, bool] | None:
    """Read a watch (a WatchRun call, or a Watch on the Watches stream) until the run is no longer pending: the
    run, with its states when the scheduler sent its final snapshot (then ``True``); None when the watch ended
    first. It is cancelled unless it ended. ``started`` gets the run id of its first event (an announce's)."""
    final: Any = None
    states: list[StateModel] = []
    last = left_out = False
    try:
        async with translate_errors():
            # read(), not iteration: trigger() read the announce with read(), and a call cannot mix the two.
            while isinstance(event := await call.read(), pb.WatchRunResponse):
                if started is not None and not started:
                    started.append(event.run.run_id)
                if event.run.status == common_pb2.RUN_STATUS_PENDING:
                    continue  # an announce, or a scheduler before final_snapshot: run-only events while pending
                if final is None:
                    final = event.run
                if final_snapshot:
                    states.extend(states_from_pb(event.states))  # this event's, while the next one travels
                last = event.last
                left_out = event.states_left_out
                if last or not final_snapshot:
                    break
    finally:
        # The scheduler ends the stream right after its last event: cancelling it would cost both sides more
        # than letting it end, and waiting for that end would delay the answer.
        if not last:
            call.cancel()
    if final is None:
        return None
    return run_from_pb(final, states), last and final_snapshot and not left_out
