"""How the client starts and watches runs (RunWatches): on its Watches stream, or as calls to a scheduler without
one; following a watch to its run's outcome; and the watches ``trigger()`` opens for a later ``wait()``.

``trigger()`` starts the run with a watch (``WatchRunRequest.trigger`` and ``announce``) on the client's Watches
stream: its first event names the new run, and the same watch later carries the outcome and final snapshot. The
watch is kept here, by run id, so ``wait(run_id)`` reads the outcome from it instead of asking again:
trigger-then-wait costs one request. At most ``LIMIT`` are kept per client, each buffering at most ``KEEP_BYTES``
while unread; the oldest is cancelled to make room, and one that would buffer more is cancelled instead (a
``wait()`` that comes later watches afresh). Every one is cancelled when the client closes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from exosphere._channel import CALL_TIMEOUT_S, translate_errors
from exosphere._watch_stream import Interrupted, Unread, Watch, WatchesUnsupported, WatchStream
from exosphere._wire import run_from_pb, states_from_pb
from exosphere.errors import ConnectionFailedError, ExosphereTimeoutError
from exosphere.models import RunModel, StateModel
from exosphere.v1 import common_pb2
from exosphere.v1 import scheduler_pb2 as pb

__all__ = ["KEEP_BYTES", "LIMIT", "OpenWatches", "RunWatches", "follow"]

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


class RunWatches:
    """Triggers and watches of one client: each on its Watches stream when the scheduler has one (``stream``), as a
    call otherwise; the watch a trigger starts its run with is kept (``kept``) for the ``wait()`` that follows."""

    def __init__(self, api: Callable[[], Any], metadata: Sequence[tuple[str, str]]) -> None:
        self._api = api
        self._metadata = metadata
        self.stream = WatchStream(lambda: api().Watches(metadata=metadata))
        self.kept = OpenWatches()

    async def close(self) -> None:
        self.kept.cancel_all()
        await self.stream.close()

    async def trigger(self, request: pb.TriggerGraphRequest) -> str:
        """Start a run; its id. On the stream, with the watch kept for a ``wait()``, unless the stream cannot take
        it now (a trigger never waits for a place) or did not read it: then as a TriggerGraph call."""
        if self.stream.supported is not False and self.stream.has_room():
            try:
                return await self._trigger_watched(request)
            except Interrupted as exc:  # started, then the scheduler began to stop: the run is there all the same
                return exc.run_id
            except (WatchesUnsupported, Unread):
                pass  # the scheduler did not read it, so it did not run: make it as a call
        async with translate_errors():
            response = await self._api().TriggerGraph(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        run_id: str = response.run_id
        return run_id

    async def _trigger_watched(self, trigger: pb.TriggerGraphRequest) -> str:
        # The final snapshot only when it fits in one event: the wait() it is kept for may never come.
        request = pb.WatchRunRequest(
            run_only=True, final_snapshot=True, final_snapshot_max_events=1, announce=True, trigger=trigger
        )
        watch = None
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):  # as the plain call's deadline, opening the stream included
                watch = await self.stream.watch(request)
                first = await watch.read()
        except BaseException as exc:
            if watch is not None:
                watch.cancel()
            if isinstance(exc, TimeoutError):
                raise ExosphereTimeoutError(
                    f"graph {trigger.graph_name!r}: the scheduler did not answer the trigger in {CALL_TIMEOUT_S}s"
                ) from None
            raise
        if not isinstance(first, pb.WatchRunResponse):  # grpc.aio.EOF
            raise ConnectionFailedError(f"graph {trigger.graph_name!r}: the scheduler ended the trigger unanswered")
        self.kept.keep(first.run.run_id, watch)
        return first.run.run_id

    async def outcome(
        self, request: pb.WatchRunRequest, started: list[str] | None = None
    ) -> tuple[RunModel, bool] | None:
        """Follow a new watch until the run is no longer pending (``follow``): on the stream, or as a WatchRun call
        when the scheduler has none. A trigger the stream did not take (nothing ran) is made as a TriggerGraph call
        and raises Interrupted with its run id; a plain watch raises Unread: watch again."""
        if self.stream.supported is not False:
            try:
                return await follow(await self.stream.watch(request), request.final_snapshot, started)
            except WatchesUnsupported:
                pass
            except Unread as exc:
                if not request.HasField("trigger") or started:
                    raise
                # Its trigger was not read (the scheduler is stopping): start the run with a plain call, which a
                # draining scheduler still takes, and wait for it like any run whose watch was interrupted.
                async with translate_errors():
                    response = await self._api().TriggerGraph(
                        request.trigger, metadata=self._metadata, timeout=CALL_TIMEOUT_S
                    )
                raise Interrupted(str(exc), response.run_id) from None
        call = self._api().WatchRun(request, metadata=self._metadata)
        return await follow(call, request.final_snapshot, started)
