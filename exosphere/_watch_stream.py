"""The client's one SchedulerService.Watches stream: each watch a message on an open stream, not a call of its own.

A message each way on an open stream costs about half the round trip of a new call, and trigger() then wait() or
trigger_and_wait() is a watch. The stream is opened on first use. When it ends (the scheduler restarted, the
network failed) every watch open on it fails as its call would have (ConnectionFailedError, which wait() answers
by watching again) and the next watch opens a new stream. A scheduler without Watches (UNIMPLEMENTED: nothing ran)
is remembered in ``supported``, and the client uses WatchRun calls instead.
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
from exosphere.errors import ConnectionFailedError
from exosphere.v1 import common_pb2
from exosphere.v1 import scheduler_pb2 as pb

__all__ = ["Watch", "WatchStream", "WatchesUnsupported"]

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# The header a scheduler opens a Watches stream with: it serves it.
HEADER = "exosphere-watches"


class WatchesUnsupported(Exception):
    """The scheduler has no Watches stream: the request did not run; make it as a WatchRun call."""


class Watch:
    """One watch on the stream, read as a WatchRun call is: ``await read()`` gives each event, then
    ``grpc.aio.EOF``; an error ends it by raising the ExosphereError its call would have. ``cancel()`` stops it."""

    def __init__(self, stream: WatchStream, request_id: int) -> None:
        self.id = request_id
        self._stream = stream
        self._slot = True  # holds one of the stream's LIMIT_MAX_WATCHES_PER_STREAM places until it ends
        self._events: deque[pb.WatchRunResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
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
            self._stream._cancel(self)
            self._finish(None)

    def _deliver(self, event: pb.WatchRunResponse) -> None:
        if self.keep_bytes is not None:
            self._kept_bytes += event.ByteSize()
            if self._kept_bytes > self.keep_bytes:  # its wait(), if it comes, watches afresh
                self.cancel()
                return
        self._events.append(event)
        self._wake()

    def _finish(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()
        if self._slot:
            self._slot = False
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
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._opening = asyncio.Lock()
        # Requests open at once, within what the scheduler allows on one stream: more wait for a place.
        self._slots = asyncio.Semaphore(common_pb2.LIMIT_MAX_WATCHES_PER_STREAM)
        self._reader: asyncio.Task[None] | None = None
        self._cancels: set[asyncio.Task[None]] = set()
        # None until the scheduler answers the first stream; False once it said it has no Watches.
        self.supported: bool | None = None

    async def watch(self, request: pb.WatchRunRequest) -> Watch:
        """Start ``request``; what the scheduler answers is read from the returned Watch (a stream that fails
        meanwhile fails the Watch, which raises WatchesUnsupported when the scheduler has no Watches)."""
        await self._slots.acquire()
        try:
            call, watches = self._call, self._watches
            if call is None:
                call, watches = await self._open()
        except BaseException:
            self._slots.release()
            raise
        watch = Watch(self, next(self._ids))
        watches[watch.id] = watch
        try:
            async with self._lock:
                await call.write(pb.WatchesRequest(id=watch.id, watch=request))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the stream is over: its reader ends this watch with the reason, which read() raises
        return watch

    async def _open(self) -> tuple[Any, dict[int, Watch]]:
        """A new stream, once the scheduler has said it serves it: its first headers carry HEADER. Nothing is written
        before: grpc.aio reports a write that crosses the end of a refused stream as INTERNAL, which would hide the
        UNIMPLEMENTED of a scheduler without Watches (grpc/grpc#36066)."""
        async with self._opening:
            if self._call is not None:  # another watch opened it meanwhile
                return self._call, self._watches
            call = self._open_call()
            try:
                metadata = await call.initial_metadata()
                if not any(key == HEADER for key, _ in metadata or ()):
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
        if call is None or self._watches.pop(watch.id, None) is None:
            return
        task = asyncio.get_running_loop().create_task(self._send_cancel(call, watch.id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, call: Any, request_id: int) -> None:
        try:
            async with self._lock:
                await call.write(pb.WatchesRequest(id=request_id, cancel=True))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the stream is over, and the request with it

    async def _read(self, call: Any, watches: dict[int, Watch]) -> None:
        error: BaseException = ConnectionFailedError("the scheduler ended the watches stream; watch again")
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                watch = watches.get(message.id)
                if watch is None:  # cancelled here; its end crossed the cancel
                    continue
                if message.WhichOneof("kind") == "event":
                    watch._deliver(message.event)
                    if message.event.last:  # the request is over: no end follows
                        del watches[message.id]
                        watch._finish(None)
                    continue
                del watches[message.id]
                end = message.end
                if end.code == grpc.StatusCode.OK.value[0]:
                    watch._finish(None)
                else:
                    code = _CODES.get(end.code, grpc.StatusCode.UNKNOWN)
                    watch._finish(error_from_status(code, end.message, end.trailers.items()))
        except grpc.aio.AioRpcError as exc:
            error = to_exosphere_error(exc)
            if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == "Internal error from Core":
                # A write crossed the stream's end, and grpc.aio put INTERNAL in place of its status (#36066):
                # the stream broke, as far as anyone can tell; its watches may be asked again.
                error = ConnectionFailedError(f"the watches stream broke ({exc.details()}); watch again")
        finally:
            if self._call is call:
                self._call = None
            for watch in watches.values():
                watch._finish(error)
            watches.clear()


async def _refusal(call: Any) -> BaseException:
    """Why a stream opened without HEADER: the scheduler's refusal (WatchesUnsupported for UNIMPLEMENTED, else the
    error the status stands for), or WatchesUnsupported for a server that answered but does not serve it."""
    if not call.done():
        return WatchesUnsupported("the server opened the stream without saying it serves Watches")
    code = await call.code()
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return WatchesUnsupported(await call.details() or "no Watches")
    return error_from_status(code, await call.details() or "", await call.trailing_metadata() or ())
