"""RuntimeService: the bidirectional stream each runtime holds. Decode, hand to the engine, write what it gives."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from exosphere.errors import InvalidArgumentError
from exosphere.v1 import runtime_pb2 as pb
from exosphere.v1 import runtime_pb2_grpc
from server.auth import Authenticator
from server.engine import Engine
from server.errors import status_from_errors
from server.models import NodeSchema
from server.runstate import Session
from server.wire import result_from_pb, schema_from_pb

__all__ = ["RuntimeApi"]

logger = logging.getLogger(__name__)

# Cap a batch so the two processes overlap instead of taking turns on one huge message.
MAX_BATCH = 256
# Registrations with more node schemas than this are decoded off the event loop.
MANY_NODES = 1000


class RuntimeApi(runtime_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, engine: Engine, auth: Authenticator) -> None:
        self._engine = engine
        self._auth = auth

    # Written with context.read()/write() rather than as a generator, so reads and writes run independently.
    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        async with status_from_errors(context):
            await self._connect(context)

    async def _connect(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        engine = self._engine
        try:
            first = await asyncio.wait_for(context.read(), timeout=30)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Register message within 30s")
            return
        if first is grpc.aio.EOF:
            return
        if not first.HasField("register"):
            raise InvalidArgumentError("the first message on the runtime stream must be Register")
        register = first.register
        self._auth.check(context, register.namespace)
        if len(register.nodes) > MANY_NODES:  # decoding tens of thousands of schemas would stall the loop
            schemas = await asyncio.to_thread(_schemas, register)
        else:
            schemas = _schemas(register)
        session = engine.runtimes.register(
            namespace=register.namespace,
            runtime_name=register.runtime_name,
            runtime_id=register.runtime_id,
            sdk_version=register.sdk_version,
            schemas=schemas,
            max_concurrency=register.max_concurrency,
        )
        try:
            await context.write(
                pb.SchedulerMessage(
                    registered=pb.Registered(
                        session_id=session.session_id,
                        heartbeat_interval_ms=engine.settings.heartbeat_interval_ms,
                        lease_ms=engine.settings.lease_ms,
                    )
                )
            )
            writer = asyncio.create_task(
                self._write_loop(context, session), name=f"session-writer-{session.session_id}"
            )
            reader = asyncio.create_task(self._read_loop(context, session), name=f"session-reader-{session.session_id}")
            closed = asyncio.create_task(session.closed_event.wait(), name=f"session-closed-{session.session_id}")
            try:
                done, _ = await asyncio.wait({reader, writer, closed}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not closed and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                for task in (reader, writer, closed):
                    task.cancel()
                await asyncio.gather(reader, writer, closed, return_exceptions=True)
        finally:
            engine.runtimes.unregister(session)
        if session.close_reason and not context.done():
            # The runtime reconnects (with backoff) when its stream ends this way.
            try:
                await context.abort(grpc.StatusCode.UNAVAILABLE, session.close_reason)
            except grpc.aio.AbortError:
                raise
            except Exception:  # the stream ended meanwhile (scheduler stopping): no one to tell
                logger.debug("stream gone before its status session=%s", session.session_id)

    async def KeepAlive(
        self, request: pb.KeepAliveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeepAliveResponse:
        async with status_from_errors(context):
            session = self._engine.runtimes.get(request.session_id)
            if session is None:
                return pb.KeepAliveResponse(known=False)
            self._auth.check(context, session.namespace)
            self._engine.runtimes.touch(session)
        return pb.KeepAliveResponse(known=True)

    async def _read_loop(self, context: grpc.aio.ServicerContext[Any, Any], session: Session) -> None:
        engine = self._engine
        while not session.closed:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("kind")
            if kind == "results":
                engine.handle_results(session, [result_from_pb(r) for r in message.results.results])
            elif kind == "heartbeat":
                engine.runtimes.touch(session)
            elif kind == "draining":
                engine.runtimes.touch(session)
                engine.runtimes.draining(session)
            elif kind == "register":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Register may only be sent once per stream")

    async def _write_loop(self, context: grpc.aio.ServicerContext[Any, Any], session: Session) -> None:
        while not session.closed:
            await session.wake.wait()
            session.wake.clear()
            if session.cancels:
                cancels, session.cancels = session.cancels, []
                await context.write(pb.SchedulerMessage(cancel=pb.CancelBatch(state_ids=cancels)))
            while session.outbox:
                batch = session.outbox[:MAX_BATCH]
                del session.outbox[:MAX_BATCH]
                items = [_execute(state) for state in batch if state.session is session]
                if items:
                    await context.write(pb.SchedulerMessage(execute=pb.ExecuteBatch(items=items)))


def _schemas(register: pb.Register) -> list[NodeSchema]:
    return [schema_from_pb(register.namespace, s) for s in register.nodes]


def _execute(state: Any) -> pb.Execute:
    node = state.node
    run = state.run
    return pb.Execute(
        state_id=state.state_id,
        run_id=state.run_id,
        node_name=state.node_name,
        inputs=state.inputs,
        secrets=node.secrets,
        attempt=state.attempt,
        deadline_unix_ms=state.deadline_ms,
        dispatch_id=state.dispatch_id,
        store=run.store,
        graph_name=run.graph_name,
        traceparent=state.traceparent,
    )
