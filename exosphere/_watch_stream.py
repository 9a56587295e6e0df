"""The client's one SchedulerService.Watches stream: each watch a message on an open stream, not a call of its own.

A message each way on an open stream costs about half the round trip of a new call, and trigger() then wait() or
trigger_and_wait() is a watch. The stream is opened on first use, and nothing is written on it before the
scheduler's first headers say it serves it (WATCHES_HEADER): grpc.aio reports a write that crosses the end of a refused
stream as INTERNAL, which would hide the UNIMPLEMENTED of a scheduler without Watches (grpc/grpc#36066). That
scheduler is remembered in ``supported``, and the client makes WatchRun calls instead.

When the stream ends (the scheduler restarted, the network failed) every watch open on it fails as its call would
have (ConnectionFailedError, which wait() answers by watching again) and the next watch opens a new stream. A
request the scheduler never read fails with ``Unread`` instead (a ConnectionFailedError too): it did not run, so a
trigger may be made again. That is the case of every request still open when a stopping scheduler ends a stream it
has nothing left to answer on (WATCHES_UNREAD_TRAILER), of a stream it refused before its headers, and of a
request whose write failed.

At most LIMIT_MAX_WATCHES_PER_STREAM requests are open at once (the scheduler's bound): more wait for a place. A
cancelled watch gives its place back once its cancel is written, so the scheduler never counts one too many.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from exosphere._channel import error_from_status, to_exosphere_error
from exosphere.errors import (
    RUN_ID_TRAILER,
    WATCHES_HEADER,
    WATCHES_UNREAD_TRAILER,
    ConnectionFailedError,
    ExosphereError,
)
from exosphere.v1 import common_pb2
from exosphere.v1 import scheduler_pb2 as pb

__all__ = [
    "Interrupted",
    "Unread",
    "Watch",
    "WatchStream",
    "WatchesUnsupported",
]

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# What grpc.aio reports in place of a stream's status when a write crossed its end (grpc/grpc#36066).
_CROSSED_WRITE = "Internal error from Core"


class WatchesUnsupported(Exception):
    """The scheduler has no Watches stream: the request did not run; make it as a WatchRun call."""


class Unread(ConnectionFailedError):
    """The scheduler did not read the request (see the module docstring): it did not run and may be made again."""


class Interrupted(ConnectionFailedError):
    """The request's run was started (``run_id``), then its watch ended (the scheduler is stopping): wait for it."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class Watch:
    """One watch on the stream, read as a WatchRun call is: ``await read()`` gives each event, then
    ``grpc.aio.EOF``; an error ends it by raising the ExosphereError its call would have. ``cancel()`` stops it."""

    def __init__(self, stream: WatchStream, request_id: int) -> None:
        self.id = request_id
        self._stream = stream
        self._events: deque[pb.WatchRunResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._placed = True  # holds one of the stream's places until it ends (or its cancel is written)
        # While kept unread for a wait() that may never come (OpenWatches), the most it buffers before it is
        # cancelled instead; None while someone reads it.
        self.keep_bytes: int | None = None
        self._kept_bytes = 0

    async def read(self) -> Any:
        while not self._events:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return grpc.aio.EOF
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()

    def cancel(self) -> None:
        if not self._ended:
            self._finish(None, release=False)
            self._stream._cancel(self)  # gives the place back once the cancel is written

    def _deliver(self, event: pb.WatchRunResponse) -> bool:
        """Hand over ``event``; False when the watch was cancelled instead (kept, and over ``keep_bytes``)."""
        if self.keep_bytes is not None:
            self._kept_bytes += event.ByteSize()
            if self._kept_bytes > self.keep_bytes:  # its wait(), if it comes, watches afresh
                self.cancel()
                return False
        self._events.append(event)
        self._wake()
        return True

    def _finish(self, error: BaseException | None, *, release: bool = True) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()
        if release:
            self._release()

    def _release(self) -> None:
        if self._placed:
            self._placed = False
            self._stream._slots.release()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class WatchStream:
    """Opens the stream with ``open_call`` (a Watches call with the client's metadata) when a watch needs it."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._open_call = open_call
        self._call: Any = None
        self._watches: dict[int, Watch] = {}  # the open watches of the current stream, by request id
        self._ids = itertools.count(1)  # never reused on a stream: late messages of a cancelled id are dropped
        self._lock = asyncio.Lock()  # one write at a time
        self._opening = asyncio.Lock()
        self._slots = asyncio.Semaphore(common_pb2.LIMIT_MAX_WATCHES_PER_STREAM)
        self._reader: asyncio.Task[None] | None = None
        self._cancels: set[asyncio.Task[None]] = set()
        # None until a scheduler answered a stream; False once one said it has no Watches.
        self.supported: bool | None = None

    def has_room(self) -> bool:
        """Whether a watch would start now, without waiting for a place."""
        return not self._slots.locked()

    async def watch(self, request: pb.WatchRunRequest) -> Watch:
        """Start ``request``; what the scheduler answers is read from the returned Watch. Raises what opening the
        stream raised: WatchesUnsupported, Unread (refused: nothing ran), or the refusal's ExosphereError."""
        await self._slots.acquire()
        watch: Watch | None = None
        try:
            call, watches = self._call, self._watches
            if call is None:
                call, watches = await self._open()
            watch = Watch(self, next(self._ids))
            watches[watch.id] = watch
            if not await self._write(call, pb.WatchesRequest(id=watch.id, watch=request)):  # the stream is over
                watches.pop(watch.id, None)
                watch._finish(Unread("the watches stream ended before the request was sent"))
        except BaseException:
            if watch is None:
                self._slots.release()
            else:  # cancelled before or while writing: tell the scheduler (it ignores an id it never read)
                watch.cancel()
            raise
        return watch

    async def _open(self) -> tuple[Any, dict[int, Watch]]:
        """The stream, opened if need be; nothing is written before the scheduler's headers (module docstring)."""
        async with self._opening:
            if self._call is not None:  # another watch opened it meanwhile
                return self._call, self._watches
            if self.supported is False:  # another watch learned meanwhile that it cannot be
                raise WatchesUnsupported("the scheduler has no Watches")
            call = self._open_call()
            try:
                metadata = await call.initial_metadata()
                if not any(key == WATCHES_HEADER for key, _ in metadata or ()):
                    refusal = await _refusal(call)
                    if isinstance(refusal, WatchesUnsupported):
                        self.supported = False
                    raise refusal
            except BaseException:
                call.cancel()
                raise
            self.supported = True
            self._call, self._watches = call, {}
            self._reader = asyncio.create_task(self._read(call, self._watches), name="exosphere-watches-reader")
            return call, self._watches

    async def close(self) -> None:
        """End the stream, and with it every watch open on it; returns once its reader has ended."""
        reader, self._reader = self._reader, None
        if self._call is not None:
            self._call.cancel()
        for task in (*self._cancels, *([reader] if reader is not None else [])):
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its watches were told; nothing to add
                await task

    def _cancel(self, watch: Watch) -> None:
        call = self._call
        if call is None or self._watches.pop(watch.id, None) is None:  # over already: nothing to tell
            watch._release()
            return
        task = asyncio.get_running_loop().create_task(
            self._send_cancel(call, watch), name=f"exosphere-watches-cancel-{watch.id}"
        )
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, call: Any, watch: Watch) -> None:
        try:
            await self._write(call, pb.WatchesRequest(id=watch.id, cancel=True))  # or the stream is over, and it too
        finally:
            watch._release()

    async def _write(self, call: Any, message: pb.WatchesRequest) -> bool:
        """Write ``message`` after the writes before it; False when the stream is over. Shielded from its caller's
        cancel: grpc.aio cancels the whole call when a write is cancelled, which would end every watch on it."""
        return await asyncio.shield(self._locked_write(call, message))

    async def _locked_write(self, call: Any, message: pb.WatchesRequest) -> bool:
        async with self._lock:
            try:
                await call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return False
        return True

    async def _read(self, call: Any, watches: dict[int, Watch]) -> None:
        error: BaseException = ConnectionFailedError("the scheduler ended the watches stream; watch again")
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                watch = watches.get(message.id)
                if watch is None:  # cancelled here: what was in flight for it
                    continue
                if message.WhichOneof("kind") == "event":
                    if watch._deliver(message.event) and message.event.last:  # over: no end follows
                        del watches[message.id]
                        watch._finish(None)
                    continue
                del watches[message.id]
                end = message.end
                if end.code == grpc.StatusCode.OK.value[0]:
                    watch._finish(None)
                else:
                    watch._finish(_end_error(end))
        except grpc.aio.AioRpcError as exc:
            error = _stream_error(exc)
        finally:
            if self._call is call:
                self._call = None
            for watch in list(watches.values()):
                watch._finish(error)
            watches.clear()


def _end_error(end: pb.WatchEnd) -> ExosphereError:
    """What a request's error end stands for: Interrupted when it names the run it started, else the error."""
    code = _CODES.get(end.code, grpc.StatusCode.UNKNOWN)
    run_id = end.trailers.get(RUN_ID_TRAILER)
    if code == grpc.StatusCode.UNAVAILABLE and run_id:
        return Interrupted(f"{end.message} (run {run_id} was started)", run_id)
    return error_from_status(code, end.message, end.trailers.items())


def _stream_error(exc: grpc.aio.AioRpcError) -> ExosphereError:
    """What a stream's end means for the watches still open on it."""
    if any(key == WATCHES_UNREAD_TRAILER for key, _ in exc.trailing_metadata() or ()):
        return Unread(f"{exc.details()} (the request was not read)")
    if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _CROSSED_WRITE:
        # A write crossed the stream's end, and grpc.aio put INTERNAL in place of its status: the stream broke, as
        # far as anyone can tell, and its watches may be asked again.
        return ConnectionFailedError(f"the watches stream broke ({_CROSSED_WRITE}); watch again")
    return to_exosphere_error(exc)


async def _refusal(call: Any) -> BaseException:
    """Why a stream opened without its header: WatchesUnsupported (UNIMPLEMENTED, or a server that answered without
    it), Unread (UNAVAILABLE: nothing was written, so nothing ran), or the error its status stands for."""
    if not call.done():
        return WatchesUnsupported("the server opened the stream without saying it serves Watches")
    code = await call.code()
    details = await call.details() or ""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return WatchesUnsupported(details or "no Watches")
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unread(f"scheduler unavailable: {details}")
    return error_from_status(code, details, await call.trailing_metadata() or ())
