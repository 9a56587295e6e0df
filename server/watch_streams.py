"""SchedulerService.Watches: many WatchRun requests over one long-lived stream.

Each request is answered by the same ``WatchRun`` handler a single call would reach, in a task of its own, through
a context that shares the stream's metadata (so its API key and namespace checks are the same) and turns the
handler's ``abort`` into a ``WatchEnd`` for that request alone. One request's error never ends the stream; a
message that does not parse does (INVALID_ARGUMENT), as it would end any call.

Writes go out one at a time, in the order the answering tasks reach the stream; each task waits for its own write,
so a client that stops reading holds up its own stream's tasks and nothing else. A cancel from the client, or the
stream's end, cancels the answering tasks.

A stream outlives any one run, so a stopping scheduler ends it rather than wait for it (``stop()``):
- a watch ends with UNAVAILABLE, which the SDK's ``wait()`` answers by watching again (here once restarted, or on
  another replica); a trigger ends so once its run is started and announced, so the client learns its run id;
- the stream goes on reading meanwhile: a trigger is served as above, a plain watch ended at once;
- once nothing is open on it, the stream ends UNAVAILABLE with WATCHES_UNREAD_TRAILER: what the client sent that was
  not read did not run, and the SDK makes it again (a trigger as a TriggerGraph call, which a stopping scheduler
  still takes during its drain). A stream opened while stopping is refused so before its header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import grpc

from exosphere.errors import WATCHES_HEADER, WATCHES_UNREAD_TRAILER
from exosphere.v1 import common_pb2
from exosphere.v1 import scheduler_pb2 as pb

from .decode import BadRequest, refuse

__all__ = ["WatchStreams"]

logger = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]
# Requests one stream may have open at once; more are ended with RESOURCE_EXHAUSTED.
MAX_OPEN = common_pb2.LIMIT_MAX_WATCHES_PER_STREAM
STOPPING = "the scheduler is stopping; watch again"

WatchHandler = Callable[[pb.WatchRunRequest, Any], AsyncGenerator[pb.WatchRunResponse, None]]


class _Ended(grpc.aio.AbortError):
    """A request's handler aborted: the status it chose, ended for that request alone."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = trailers


class _Gone(Exception):
    """A write found the stream over."""


class _RequestContext:
    """What a WatchRun handler needs of its call, for one request of a Watches stream. The handler sets trailing
    metadata once it has started the run it was asked to (RUN_ID_TRAILER): from then on the request is a watch,
    ended at once when the scheduler stops, and its end carries those trailers (the run id, to wait on)."""

    def __init__(self, stream: Ctx, started: Callable[[], None]) -> None:
        self._stream = stream
        self._started = started
        self.trailers: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None:
        self.trailers = tuple(trailing_metadata)
        self._started()

    def invocation_metadata(self) -> Any:
        return self._stream.invocation_metadata()

    def peer(self) -> str:
        return str(self._stream.peer())

    def done(self) -> bool:
        return bool(self._stream.done())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        raise _Ended(code, details, (*self.trailers, *trailing_metadata))  # the run it started, if it did


class WatchStreams:
    """Serves Watches streams with ``watch_run``, the WatchRun handler."""

    def __init__(self, watch_run: WatchHandler) -> None:
        self._watch_run = watch_run
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """The scheduler is stopping: end every stream (see the module docstring), and each one opened from now."""
        self._stopping.set()

    async def serve(self, context: Ctx) -> None:
        if self._stopping.is_set():  # before the header: the client has written nothing (it falls back to calls)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, STOPPING, trailing_metadata=((WATCHES_UNREAD_TRAILER, "1"),)
            )
        try:
            await _Stream(context, self._watch_run, self._stopping).run()
        except asyncio.CancelledError:
            if context.done():  # the client left, or the server's grace ran out: the call is over already
                return
            raise


class _Stream:
    def __init__(self, context: Ctx, watch_run: WatchHandler, stopping: asyncio.Event) -> None:
        self._context = context
        self._watch_run = watch_run
        self._stopping = stopping
        self._lock = asyncio.Lock()
        self._answering: dict[int, asyncio.Task[None]] = {}  # open requests (what the limit counts), by id
        self._tasks: set[asyncio.Task[None]] = set()  # every answering task until it is over, its last write too
        self._watching: set[int] = set()  # requests past starting a run: ended at once when the scheduler stops
        self._stopped: set[int] = set()  # requests ended because it stops: each is cancelled once, never twice
        self._closing = False  # the stream is ending: what is read now is left unread (nothing of it runs)

    async def run(self) -> None:
        # Say so before anything else: the client writes nothing before it knows (exosphere/_watch_stream.py).
        await self._context.send_initial_metadata(((WATCHES_HEADER, "1"),))
        reader = asyncio.create_task(self._read(), name="exosphere-watches-reader")
        stopping = asyncio.create_task(self._stopping.wait(), name="exosphere-watches-stopping")
        try:
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not stopping.done():
                reader.result()  # a message that did not parse ends the stream here
                # The client is done asking: answer what it asked, then end (at once if the scheduler stops).
                while self._tasks and not stopping.done():
                    await asyncio.wait({stopping, *self._tasks}, return_when=asyncio.FIRST_COMPLETED)
                if not stopping.done():
                    return
            # Stopping: every watch ends now; a trigger still starting its run ends once it is announced; requests
            # read meanwhile are answered so too (server/watch_streams.py module docstring).
            for request_id in list(self._watching):
                self._stop(request_id)
            while self._tasks:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            # Nothing open, and nothing more is taken from here on: whatever else the client sent was not read. The
            # lock: every write begun (an end, shielded from its task's cancel) goes out before the status.
            self._closing = True
            async with self._lock:
                await self._context.abort(
                    grpc.StatusCode.UNAVAILABLE, STOPPING, trailing_metadata=((WATCHES_UNREAD_TRAILER, "1"),)
                )
        finally:
            tasks = (reader, stopping, *self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self) -> None:
        while (message := await self._context.read()) is not grpc.aio.EOF:
            if self._closing:
                continue
            if isinstance(message, BadRequest):
                await refuse(self._context, message)
            request_id = message.id
            if message.WhichOneof("kind") == "cancel":
                task = self._answering.pop(request_id, None)
                self._watching.discard(request_id)
                if task is not None:
                    task.cancel()
            elif request_id in self._answering:
                await self._write(_end(request_id, grpc.StatusCode.INVALID_ARGUMENT, f"request {request_id} is open"))
            elif self._stopping.is_set() and not message.watch.HasField("trigger"):
                await self._write(_end(request_id, grpc.StatusCode.UNAVAILABLE, STOPPING))
            elif len(self._answering) >= MAX_OPEN:
                await self._write(_end(request_id, grpc.StatusCode.RESOURCE_EXHAUSTED, f"over {MAX_OPEN} open"))
            else:
                if not message.watch.HasField("trigger"):
                    self._watching.add(request_id)
                task = self._answering[request_id] = asyncio.create_task(
                    self._answer(request_id, message.watch, _RequestContext(self._context, self._started(request_id))),
                    name=f"exosphere-watches-{request_id}",
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(0)  # start it (its trigger) before asking the stream for the next message

    async def _write(self, message: pb.WatchesResponse) -> None:
        """Write ``message`` after the writes before it; raises _Gone when the stream is over. A cancel of the caller
        does not reach the write itself: the message goes out whole, or not at all."""
        if not await asyncio.shield(self._locked_write(message)):
            raise _Gone

    async def _locked_write(self, message: pb.WatchesResponse) -> bool:
        async with self._lock:
            try:
                await self._context.write(message)
            except Exception:  # grpc's ways of saying the call is over (the client left, or cancelled it)
                return False
        return True

    def _started(self, request_id: int) -> Callable[[], None]:
        """What a request's handler calls once its run is started: from then on it is a watch."""

        def started() -> None:
            self._watching.add(request_id)
            if self._stopping.is_set():  # started during the drain: end it as the others were
                asyncio.get_running_loop().call_soon(self._stop, request_id)

        return started

    def _stop(self, request_id: int) -> None:
        """End a request because the scheduler stops (its answering task writes why): once."""
        task = self._answering.get(request_id)
        if task is not None and request_id in self._watching and request_id not in self._stopped:
            self._stopped.add(request_id)
            task.cancel()

    async def _answer(self, request_id: int, request: pb.WatchRunRequest, context: _RequestContext) -> None:
        try:
            end: pb.WatchesResponse | None = None  # after an event marked last, the request is over without one
            try:
                async with contextlib.aclosing(self._watch_run(request, context)) as events:
                    async for event in events:
                        if event.last:  # its last message: no end follows
                            await self._write_last(request_id, pb.WatchesResponse(id=request_id, event=event))
                            break
                        await self._write(pb.WatchesResponse(id=request_id, event=event))
                        if self._stopping.is_set() and request_id in self._watching:  # its run is started
                            self._stopped.add(request_id)  # ended here, not cancelled as well
                            end = _end(request_id, grpc.StatusCode.UNAVAILABLE, STOPPING, context.trailers)
                            break
                    else:
                        end = _end(request_id, grpc.StatusCode.OK, "")
            except _Ended as ended:
                end = _end(request_id, ended.code, ended.details, ended.trailers)
            except asyncio.CancelledError:
                if request_id not in self._stopped:
                    raise  # cancelled by the client, or the stream is over: no one to tell
                end = _end(request_id, grpc.StatusCode.UNAVAILABLE, STOPPING, context.trailers)
            if end is not None:
                await self._write_last(request_id, end)
        except _Gone:  # the stream ended under it: no one to tell
            pass
        except Exception:  # a bug: WatchRun's handler turns every error into a status, and writes fail as _Gone
            logger.exception("watches request %d failed", request_id)
        finally:
            self._forget(request_id)

    async def _write_last(self, request_id: int, message: pb.WatchesResponse) -> None:
        """A request's last message. The request stops counting as open once the write is queued, not when its
        task is over: the client frees its place when it reads the message, and may send another at once. The write
        is queued (on the lock, in order) before anything can end the stream after it, so it goes out first."""
        written = asyncio.shield(self._locked_write(message))
        self._forget(request_id)
        if not await written:
            raise _Gone

    def _forget(self, request_id: int) -> None:
        self._watching.discard(request_id)
        if self._answering.get(request_id) is asyncio.current_task():
            del self._answering[request_id]


def _end(
    request_id: int, code: grpc.StatusCode, message: str, trailers: Sequence[tuple[str, str]] = ()
) -> pb.WatchesResponse:
    status = code.value[0]
    return pb.WatchesResponse(id=request_id, end=pb.WatchEnd(code=status, message=message, trailers=dict(trailers)))
