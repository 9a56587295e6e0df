"""RuntimeService: the bidirectional stream each runtime holds. Decode, hand to the engine, write what it gives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import grpc

from exosphere.errors import InvalidArgumentError
from exosphere.v1 import runtime_pb2 as pb
from exosphere.v1 import runtime_pb2_grpc
from exosphere.wireformat import framed_size, passthrough

from .auth import Authenticator
from .decode import BadRequest, refuse
from .engine import Engine, ResultIn
from .errors import status_from_errors
from .execute_wire import SharedParts, execute_bytes, execute_message
from .models import NodeSchema
from .names import check_name, check_text
from .rejects import Rejected
from .runstate import Session
from .sizes import (
    BATCH_BYTES,
    MAX_ITEM_BYTES,
    MAX_STORE_BYTES,
    store_bytes,
    text_bytes,
)
from .status import ResultKind
from .wire import (
    results_from_pb,
    schema_from_pb,
)

__all__ = ["RuntimeApi", "add_runtime_service"]

logger = logging.getLogger(__name__)

# Cap a batch so the two processes overlap instead of taking turns on one huge message.
MAX_BATCH = 256
SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"].full_name
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
        if isinstance(first, BadRequest):
            await refuse(context, first)
        if not first.HasField("register"):
            raise InvalidArgumentError("the first message on the runtime stream must be Register")
        register = first.register
        check_name("namespace", register.namespace)
        check_name("runtime_name", register.runtime_name)
        if register.runtime_id:  # optional: runtimes in other languages may leave it out
            check_name("runtime_id", register.runtime_id)
        check_text("sdk_version", register.sdk_version)
        self._auth.check(context, register.namespace)
        if engine.runtimes.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is stopping; reconnect later")
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
        half_closed = False
        try:
            await context.write(
                pb.SchedulerMessage(
                    registered=pb.Registered(
                        session_id=session.session_id,
                        heartbeat_interval_ms=engine.settings.heartbeat_interval_ms,
                        lease_ms=engine.settings.lease_ms,
                        replicas=engine.runtimes.replicas,
                        replica_address=engine.runtimes.replica_address,
                    )
                )
            )
            writer = asyncio.create_task(
                self._write_loop(context, session, shares_stores=register.shares_stores),
                name=f"session-writer-{session.session_id}",
            )
            reader = asyncio.create_task(self._read_loop(context, session), name=f"session-reader-{session.session_id}")
            closed = asyncio.create_task(session.closed_event.wait(), name=f"session-closed-{session.session_id}")
            try:
                done, _ = await asyncio.wait({reader, writer, closed}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not closed and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                # The runtime half-closed (after a drain, or stopping): its stream ends with OK.
                half_closed = reader in done and not session.close_reason
            finally:
                for task in (reader, writer, closed):
                    task.cancel()
                await asyncio.gather(reader, writer, closed, return_exceptions=True)
        finally:
            engine.runtimes.unregister(session)
        if session.close_reason and not half_closed and not context.done():
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
            if isinstance(message, BadRequest):
                await refuse(context, message)
            kind = message.WhichOneof("kind")
            if kind == "results":
                results = results_from_pb(message.results.results)
                _bound_store_writes(session, results)
                rejected = engine.handle_results(session, results)
                if rejected:
                    session.rejected.extend(rejected)
                    session.wake.set()
                await asyncio.sleep(0)  # let their commit start before the next read is asked of the stream
            elif kind == "heartbeat":
                engine.runtimes.touch(session)
            elif kind == "draining":
                engine.runtimes.touch(session)
                engine.runtimes.draining(session)
            elif kind == "register":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Register may only be sent once per stream")

    async def _write_loop(
        self, context: grpc.aio.ServicerContext[Any, Any], session: Session, *, shares_stores: bool
    ) -> None:
        while not session.closed:
            await session.wake.wait()
            session.wake.clear()
            if session.replicas_changed:
                session.replicas_changed = False
                await context.write(pb.SchedulerMessage(replicas=pb.Replicas(addresses=self._engine.runtimes.replicas)))
            if session.cancels:
                cancels, session.cancels = session.cancels, []
                await context.write(pb.SchedulerMessage(cancel=pb.CancelBatch(state_ids=cancels)))
            if session.rejected:
                rejected, session.rejected = session.rejected, []
                await context.write(pb.SchedulerMessage(results_rejected=_rejected(rejected)))
            while session.outbox:
                batch = session.outbox[:MAX_BATCH]
                del session.outbox[:MAX_BATCH]
                await self._send(context, session, batch, shares_stores)
            if session.drain_grace_ms is not None and not session.drain_sent:  # after the last ExecuteBatch
                session.drain_sent = True
                await context.write(pb.SchedulerMessage(drain=pb.Drain(grace_ms=session.drain_grace_ms)))

    async def _send(
        self, context: grpc.aio.ServicerContext[Any, Any], session: Session, states: list[Any], shares_stores: bool
    ) -> None:
        """Write ``states`` in batches cut by size; a state whose item alone cannot fit fails instead.

        To a runtime that shares stores, a run's store travels once per batch (Execute.store_as_previous). Items are
        built without awaiting in between, so every item of one batch sees the same store.
        """
        items: list[bytes] = []
        size = 0
        undeliverable: list[ResultIn] = []
        in_batch: set[str] = set()  # runs whose store an earlier item of this batch carries
        shared = SharedParts()
        nodes = self._engine.runtimes.nodes
        for state in states:
            if state.session is not session:
                continue
            inputs = _with_defaults(nodes.get((session.namespace, state.node_name)), state.inputs)
            as_previous = state.run_id in in_batch
            item = execute_bytes(state, inputs, shared, store_as_previous=as_previous)
            item_size = framed_size(len(item))
            if item_size > MAX_ITEM_BYTES:
                undeliverable.append(_too_large(state, item, item_size))
                continue
            if items and size + item_size > BATCH_BYTES:
                await context.write(execute_message(items))
                items, size = [], 0
                in_batch.clear()
                shared.clear()  # a store may change while the batch is written
                if as_previous:  # its store went with the batch just written
                    item = execute_bytes(state, inputs, shared)
                    item_size = framed_size(len(item))
                    if item_size > MAX_ITEM_BYTES:
                        undeliverable.append(_too_large(state, item, item_size))
                        continue
            items.append(item)
            if shares_stores:
                in_batch.add(state.run_id)
            size += item_size
        if items:
            await context.write(execute_message(items))
        if undeliverable:
            # Through the runtime-result path, so the failure is committed, retried and reported like any other.
            self._engine.handle_results(session, undeliverable)


def add_runtime_service(api: RuntimeApi, server: grpc.aio.Server) -> None:
    """Serve ``api`` as exosphere.v1.RuntimeService: the generated registration, except that Connect writes
    Execute batches already serialized (server/execute_wire.py)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            api.Connect, request_deserializer=pb.RuntimeMessage.FromString, response_serializer=passthrough
        ),
        "KeepAlive": grpc.unary_unary_rpc_method_handler(
            api.KeepAlive,
            request_deserializer=pb.KeepAliveRequest.FromString,
            response_serializer=pb.KeepAliveResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _schemas(register: pb.Register) -> list[NodeSchema]:
    return [schema_from_pb(register.namespace, s) for s in register.nodes]


def _bound_store_writes(session: Session, results: list[ResultIn]) -> None:
    """Turn results whose store writes would grow their run's store past MAX_STORE_BYTES into errored ones."""
    sizes: dict[str, int] = {}  # run id -> its store's size with the writes of this batch accepted so far
    written: dict[str, dict[str, str]] = {}
    for result in results:
        writes = result.store_writes
        if result.kind != ResultKind.EXECUTED or not writes:
            continue
        state = session.in_flight.get(result.dispatch_id)
        if state is None:
            continue  # a stale result, ignored by the engine
        store, earlier = state.run.store, written.setdefault(state.run_id, {})
        size = sizes[state.run_id] if state.run_id in sizes else store_bytes(store)
        for key, value in writes.items():
            old = earlier.get(key, store.get(key))
            size += text_bytes(value) - (text_bytes(old) if old is not None else -text_bytes(key))
        if size > MAX_STORE_BYTES:
            result.kind, result.outputs, result.store_writes = ResultKind.ERRORED, [], None
            result.error = {
                "message": f"the node's store writes would make its run's store {size} bytes; a run's store may "
                f"hold at most {MAX_STORE_BYTES}",
                "type": "StoreTooLargeError",
            }
            continue
        sizes[state.run_id] = size
        earlier.update(writes)


def _too_large(state: Any, data: bytes, size: int) -> ResultIn:
    item = pb.Execute.FromString(data)
    parts = {"inputs": item.inputs, "store": item.store, "secrets": item.secrets}
    sizes = ", ".join(
        f"{name} {sum(len(k.encode()) + len(v.encode()) for k, v in m.items())}" for name, m in parts.items()
    )
    message = (
        f"state {state.state_id} cannot be sent to a runtime: its Execute message is {size} bytes ({sizes}), over "
        f"the {MAX_ITEM_BYTES}-byte limit of one item (LIMIT_MAX_MESSAGE_BYTES less room for the batch)"
    )
    logger.warning("state undeliverable state_id=%s node=%r bytes=%d", state.state_id, state.node_name, size)
    return ResultIn(
        state.state_id,
        state.dispatch_id,
        ResultKind.ERRORED,
        error={"message": message, "type": "MessageTooLargeError"},
        attempt=state.attempt,
    )


def _rejected(rejected: list[Rejected]) -> pb.ResultsRejected:
    return pb.ResultsRejected(
        results=[
            pb.RejectedResult(
                state_id=r.state_id,
                dispatch_id=r.dispatch_id,
                attempt=r.attempt,
                reason=pb.RejectReason.Value(f"REJECT_REASON_{r.reason}"),
                message=r.message,
            )
            for r in rejected
        ]
    )


def _with_defaults(schema: NodeSchema | None, inputs: Mapping[str, str]) -> Mapping[str, str]:
    """``inputs`` with the declared defaults of the inputs it lacks (LABEL_OPTIONAL fields with a default_value)."""
    if schema is None or not schema.defaults:
        return inputs
    missing = {name: value for name, value in schema.defaults if name not in inputs}
    return {**inputs, **missing} if missing else inputs
