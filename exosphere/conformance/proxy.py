"""A recording gRPC proxy for ``RuntimeService``: the runtime under test talks to the scheduler through it.

Every ``Connect`` stream is forwarded message by message both ways (and the runtime's half-close, and the
scheduler's final status), every ``KeepAlive`` call is forwarded, and all of it is recorded with its time and
direction (``recording.py``). The proxy changes nothing: a stream to a scheduler that is down ends with the status
the runtime would have seen from it. It listens on 127.0.0.1 and follows the scheduler's current address, so the
runtime keeps one address while the kit restarts the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc

from exosphere.conformance.recording import Recorder, StreamRecord
from exosphere.v1 import common_pb2, runtime_pb2_grpc
from exosphere.v1 import runtime_pb2 as pb

__all__ = ["RecordingProxy"]

logger = logging.getLogger(__name__)

_FORWARDED_METADATA = ("x-api-key",)
# The scheduler's own limit: the proxy must not refuse what the scheduler would take.
_MAX_MESSAGE_BYTES = common_pb2.LIMIT_MAX_MESSAGE_BYTES
_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
]
_KEEPALIVE_TIMEOUT_S = 5.0


def _status(code: grpc.StatusCode, details: str | None) -> str:
    return "OK" if code == grpc.StatusCode.OK else f"{code.name}: {details or ''}"


class _Servicer(runtime_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, recorder: Recorder, upstream: Callable[[], str]) -> None:
        self._recorder = recorder
        self._upstream = upstream
        # KeepAlive calls come often (every heartbeat interval): they share one channel per scheduler address.
        self._keepalive: tuple[str, grpc.aio.Channel] | None = None

    def _keepalive_stub(self) -> runtime_pb2_grpc.RuntimeServiceAsyncStub:
        address = self._upstream()
        if self._keepalive is None or self._keepalive[0] != address:
            self._keepalive = (address, grpc.aio.insecure_channel(address, options=_OPTIONS))
        return runtime_pb2_grpc.RuntimeServiceStub(self._keepalive[1])

    async def close(self) -> None:
        if self._keepalive is not None:
            await self._keepalive[1].close()

    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        stream = self._recorder.open_stream()
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k in _FORWARDED_METADATA)
        options = [*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(self._upstream(), options=options) as channel:
            call = runtime_pb2_grpc.RuntimeServiceStub(channel).Connect(metadata=metadata)
            up = asyncio.create_task(self._forward_up(context, call, stream), name=f"proxy-up-{stream.number}")
            try:
                code, details = await self._forward_down(context, call, stream)
            except asyncio.CancelledError:  # the runtime cancelled its call
                self._recorder.closed(stream, "CANCELLED by the runtime")
                raise
            finally:
                up.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await up
                call.cancel()
        self._recorder.closed(stream, _status(code, details))
        if code != grpc.StatusCode.OK:
            await context.abort(code, details or "")

    async def _forward_up(self, context: grpc.aio.ServicerContext[Any, Any], call: Any, stream: StreamRecord) -> None:
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    self._recorder.half_closed(stream)
                    await call.done_writing()
                    return
                self._recorder.up(stream, message)
                await call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # The scheduler's side ended; _forward_down reports how.
            logger.debug("proxy stream %d: upstream write failed: %s", stream.number, exc)

    async def _forward_down(
        self, context: grpc.aio.ServicerContext[Any, Any], call: Any, stream: StreamRecord
    ) -> tuple[grpc.StatusCode, str | None]:
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                self._recorder.down(stream, message)
                await context.write(message)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details()
        return await call.code(), await call.details()

    async def KeepAlive(
        self, request: pb.KeepAliveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeepAliveResponse:
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k in _FORWARDED_METADATA)
        try:
            reply = await self._keepalive_stub().KeepAlive(request, metadata=metadata, timeout=_KEEPALIVE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self._recorder.keepalive(request.session_id, _status(exc.code(), exc.details()))
            await context.abort(exc.code(), exc.details() or "")
        self._recorder.keepalive(request.session_id, f"known={reply.known}")
        return reply


class RecordingProxy:
    """``await RecordingProxy.start(recorder, upstream=lambda: scheduler.address)``; ``address`` is for the
    runtime. ``close()`` ends every stream still open."""

    def __init__(self, server: grpc.aio.Server, servicer: _Servicer, port: int) -> None:
        self._server = server
        self._servicer = servicer
        self.address = f"127.0.0.1:{port}"

    @classmethod
    async def start(cls, recorder: Recorder, *, upstream: Callable[[], str]) -> RecordingProxy:
        server = grpc.aio.server(options=_OPTIONS)
        servicer = _Servicer(recorder, upstream)
        runtime_pb2_grpc.add_RuntimeServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return cls(server, servicer, port)

    async def close(self) -> None:
        await self._server.stop(grace=None)
        await self._servicer.close()
