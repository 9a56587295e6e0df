"""The Runtime: a worker process that hosts nodes over one bidirectional stream to the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc

from exosphere import __version__
from exosphere._channel import Backoff, metadata, open_channel, to_exosphere_error
from exosphere._convert import node_to_schema
from exosphere._eager import start_eager
from exosphere._executor import execute_item
from exosphere._keepalive import KeepAlive
from exosphere._limiter import Limiter
from exosphere._metrics import RuntimeMetrics
from exosphere._stream import CONNECT, LazyEvent, first_leaf, flush, log_rejected, loop_factory
from exosphere.config import ClientConfig
from exosphere.errors import AuthenticationError, ExosphereError, InvalidArgumentError, PermissionDeniedError
from exosphere.logs import setup_default_logging
from exosphere.node import BaseNode, validate_nodes
from exosphere.v1 import runtime_pb2 as pb
from exosphere.wireformat import passthrough

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)

# Registration errors no retry can fix: the runtime stops and raises them.
_FATAL = (InvalidArgumentError, AuthenticationError, PermissionDeniedError)


class Runtime:
    """Hosts ``nodes`` for ``namespace`` and executes what the scheduler pushes, up to ``max_concurrency`` at once.

    ``start()`` blocks (on uvloop) until SIGINT/SIGTERM or ``stop()``; inside a running loop use ``await run()``.
    The scheduler address and API key come from the arguments, else ``EXOSPHERE_SCHEDULER_ADDRESS`` and
    ``EXOSPHERE_API_KEY``. A lost connection is retried with capped, jittered backoff. With ``metrics_port`` (0
    picks one, then read ``runtime.metrics_port``) the runtime serves its own Prometheus ``/metrics`` on
    ``metrics_host`` while ``run()`` runs (needs ``exosphere[metrics]``).

    Against a cluster (several scheduler replicas on PostgreSQL) the runtime is given one address, learns the live
    replicas from it, and holds one stream to each (a *link*); it never executes more than ``max_concurrency``
    states at once across all of them.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        nodes: Sequence[type[BaseNode]],
        *,
        max_concurrency: int = 64,
        address: str | None = None,
        key: str | None = None,
        tls_ca_file: str | None = None,
        shutdown_grace: timedelta = timedelta(seconds=30),
        runtime_id: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        errors = []
        if not isinstance(namespace, str) or not namespace.strip():
            errors.append("namespace must be a non-empty string")
        if not isinstance(name, str) or not name.strip():
            errors.append("name must be a non-empty string")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            errors.append(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        if errors:
            raise InvalidArgumentError("; ".join(errors))
        self._nodes = {node.__name__: node for node in validate_nodes(nodes)}
        self.namespace = namespace.strip()
        self.name = name.strip()
        self.max_concurrency = max_concurrency
        self.runtime_id = runtime_id or str(uuid.uuid4())
        self._config = ClientConfig.resolve(address=address, api_key=key, tls_ca_file=tls_ca_file)
        self._shutdown_grace = shutdown_grace
        self._created = LazyEvent()
        # A stop asked for before run() made its event (``start()`` then ``stop()`` at once) still counts.
        self._stop_requested = False
        # Set when run() returns or raises, with what it raised: wait_registered() must not outwait a dead runtime.
        self._ended: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._registered: asyncio.Event | None = None
        # Executing states by dispatch id.
        self._in_flight: dict[int, tuple[asyncio.Task[None], pb.Execute]] = {}
        self._outbox: list[pb.Result] = []
        self._wake_writer: asyncio.Event | None = None
        # One stream's drain: set on stop() or the scheduler's Drain; then Draining is sent, held states finish and
        # are reported, the stream is half-closed, and (unless stopping) the runtime reconnects.
        self._leave: asyncio.Event | None = None
        self._draining = False
        self._drain_grace_s: float | None = None
        self.executed_count = 0
        # Prometheus /metrics of this runtime (exosphere/_metrics.py) when metrics_port is set (0 picks a port,
        # found in self.metrics_port once run() started).
        self._metrics = (
            RuntimeMetrics(
                runtime=self.name,
                namespace=self.namespace,
                in_flight=lambda: len(self._in_flight),
                credit=max_concurrency,
            )
            if metrics_port is not None
            else None
        )
        self._metrics_address = (metrics_host, metrics_port or 0)
        self.metrics_port = 0
        # Cluster mode: streams to the other replicas, each a Runtime of its own sharing this one's limiter.
        self._root: Runtime = self
        self._limiter: Limiter | None = None
        self._links: dict[str, tuple[Runtime, asyncio.Task[None]]] = {}
        self._unlinking: set[asyncio.Task[None]] = set()
        self._replicas: tuple[str, ...] = ()
        self._own_replica = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None] | None:
        """Run until stopped. Blocks, unless an event loop is already running: then returns the runtime's task."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            return loop.create_task(self.run(), name=f"exosphere-runtime-{self.name}")
        setup_default_logging()
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(self._run_with_signals())
        return None

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        # Only the main thread may install signal handlers; start() in a daemon thread (the exospherehost docs'
        # pattern) runs without them and stops with its process.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
        await self.run()

    def stop(self) -> None:
        """Stop taking work, finish in-flight states within the grace period, then return from ``run()``."""
        self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()
        if self._leave is not None:
            self._leave.set()
        for link, _ in self._links.values():
            link.stop()

    async def wait_registered(self, timeout: float = 10.0) -> None:
        """Wait until the runtime's nodes are registered with the scheduler (useful in tests and scripts)."""
        async with asyncio.timeout(timeout):
            await self._created.wait()
            assert self._registered is not None and self._ended is not None
            registered = asyncio.ensure_future(self._registered.wait())
            ended = asyncio.ensure_future(self._ended.wait())
            try:
                await asyncio.wait({registered, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                registered.cancel()
                ended.cancel()
            if not self._registered.is_set():
                if self._error is not None:
                    raise self._error
                raise ExosphereError(f"runtime {self.name!r} stopped before it registered")

    async def run(self) -> None:
        """Connect, register and execute until ``stop()``; reconnects with backoff when the stream is lost."""
        self._stopping = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._registered = asyncio.Event()
        self._ended = asyncio.Event()
        self._error = None
        self._wake_writer = asyncio.Event()
        if self._root is self:
            self._limiter = Limiter(self.max_concurrency)
        self._created.set()
        try:
            if self._metrics is not None:
                self.metrics_port = self._metrics.serve(*self._metrics_address)
            await self._run()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._stop_requested = False
            await self._stop_links(set(self._links))
            if self._metrics is not None:
                await asyncio.to_thread(self._metrics.close)
            self._ended.set()

    async def _run(self) -> None:
        assert self._stopping is not None and self._registered is not None
        backoff = Backoff()
        schemas = [node_to_schema(node) for node in self._nodes.values()]
        while not self._stopping.is_set():
            channel = open_channel(self._config)
            try:
                registered = await self._session(channel, schemas)
                if registered:
                    backoff.reset()
            except _FATAL:
                raise
            except (ExosphereError, OSError, asyncio.InvalidStateError) as exc:
                logger.warning("runtime stream lost runtime=%s error=%s", self.name, exc)
            finally:
                self._registered.clear()
                await self._cancel_in_flight()
                await channel.close(grace=None)
            if self._stopping.is_set():
                break
            delay_s = backoff.next_delay_s()
            logger.info("runtime reconnecting runtime=%s in_s=%.2f", self.name, delay_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stopping.wait()
        logger.info("runtime stopped runtime=%s executed=%d", self.name, self.executed_count)

    # ------------------------------------------------------------------ one stream session

    async def _session(self, channel: grpc.aio.Channel, schemas: list[Any]) -> bool:
        """One stream's life. Returns whether registration succeeded; raises on errors."""
        assert self._stopping is not None and self._registered is not None
        # The generated stub, except that results are written already serialized (_stream.results_message).
        connect = channel.stream_stream(
            CONNECT, request_serializer=passthrough, response_deserializer=pb.SchedulerMessage.FromString
        )
        call = connect(metadata=metadata(self._config))
        register = pb.Register(
            namespace=self.namespace,
            runtime_name=self.name,
            runtime_id=self.runtime_id,
            sdk_version=f"exosphere-python/{__version__}",
            nodes=schemas,
            max_concurrency=self.max_concurrency,
            shares_stores=True,
        )
        stack = contextlib.ExitStack()
        try:
            await call.write(pb.RuntimeMessage(register=register))
            first = await call.read()
            if not isinstance(first, pb.SchedulerMessage) or not first.HasField("registered"):
                raise ExosphereError("scheduler closed the stream before registering the runtime")
            registered = first.registered
            self._registered.set()
            if self._root is self and registered.replicas:
                self._own_replica = registered.replica_address
                self._on_replicas(registered.replicas)
            logger.info(
                "runtime registered runtime=%s namespace=%s nodes=%s session=%s",
                self.name,
                self.namespace,
                ",".join(self._nodes),
                registered.session_id,
            )
            heartbeat_s = max(0.05, registered.heartbeat_interval_ms / 1000)
            keepalive = KeepAlive(self._config, registered.session_id, heartbeat_s)
            keepalive.start()
            stack.callback(keepalive.stop)
            self._leave, self._draining, self._drain_grace_s = asyncio.Event(), False, None
            if self._stopping.is_set():
                self._leave.set()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read_loop(call), name="runtime-reader")
                writer = tg.create_task(self._write_loop(call, heartbeat_s), name="runtime-writer")
                leaver = tg.create_task(self._leave.wait(), name="runtime-leave-watch")
                done, _ = await asyncio.wait({reader, writer, leaver}, return_when=asyncio.FIRST_COMPLETED)
                if leaver in done:
                    await self._drain(reader, heartbeat_s)
                for task in (reader, writer, leaver):
                    task.cancel()
            return True
        except grpc.aio.AioRpcError as exc:
            raise to_exosphere_error(exc) from exc
        except ExceptionGroup as group:  # from the TaskGroup: surface the first stream error
            first = first_leaf(group)
            if isinstance(first, grpc.aio.AioRpcError):
                raise to_exosphere_error(first) from group
            raise first from group
        finally:
            stack.close()
            call.cancel()

    async def _drain(self, reader: asyncio.Task[None], heartbeat_s: float) -> None:
        """Take no more work: the writer sends Draining, reports the held states as they finish and half-closes the
        stream once none is left; the scheduler then ends it. Bounded by the grace (ours when stopping, the
        scheduler's when it asked); what is still running after it is cancelled when the stream goes."""
        assert self._wake_writer is not None
        grace_s = self._shutdown_grace.total_seconds()
        if self._drain_grace_s is not None:
            grace_s = min(grace_s, self._drain_grace_s)
        logger.info("runtime draining runtime=%s held=%d grace_s=%.1f", self.name, len(self._in_flight), grace_s)
        self._draining = True
        self._wake_writer.set()
        await asyncio.wait({reader}, timeout=grace_s + heartbeat_s)

    async def _read_loop(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                if self._draining:  # the end a drain asks for
                    return
                raise ExosphereError("scheduler closed the runtime stream")
            kind = message.WhichOneof("kind")
            if kind == "execute":
                stores: dict[str, Any] = {}  # run id -> its store, sent once per batch (Execute.store_as_previous)
                for item in message.execute.items:
                    if item.store_as_previous:
                        store = stores.get(item.run_id)
                        if store is None:
                            store = item.store
                    else:
                        store = stores[item.run_id] = item.store
                    self._start(item, store)
                await asyncio.sleep(0)  # let the states start (on 3.11 they are tasks) before the next read is asked
            elif kind == "cancel":
                self._cancel(set(message.cancel.state_ids))
            elif kind == "replicas":
                self._root._on_replicas(message.replicas.addresses)
            elif kind == "drain":
                self._drain_grace_s = message.drain.grace_ms / 1000
                logger.info("scheduler asked runtime to drain runtime=%s grace_s=%.1f", self.name, self._drain_grace_s)
                assert self._leave is not None
                self._leave.set()
            elif kind == "results_rejected":
                log_rejected(self.name, message.results_rejected)

    def _start(self, item: pb.Execute, store: Any) -> None:
        node_cls = self._nodes.get(item.node_name)
        if node_cls is None:  # the scheduler never sends these; answer instead of hanging the state
            result = pb.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
            result.errored.message = f"node {item.node_name!r} is not hosted by runtime {self.name!r}"
            result.errored.type = "UnknownNodeError"
            self._push(result)
            return
        task = start_eager(self._run_item(node_cls, item, store), f"exosphere-state-{item.state_id}")
        if not task.done():  # cancellable until it finishes
            self._in_flight[item.dispatch_id] = (task, item)

    async def _run_item(self, node_cls: type[BaseNode], item: pb.Execute, store: Any) -> None:
        limiter = self._root._limiter
        metrics = self._root._metrics  # a cluster link counts into the runtime it belongs to
        started = RuntimeMetrics.clock() if metrics is not None else 0.0
        try:
            if limiter is None:
                result = await execute_item(node_cls, item, store)
            else:  # shared by the streams to every replica: max_concurrency across all of them
                if not limiter.try_acquire():
                    await limiter.acquire()
                try:
                    result = await execute_item(node_cls, item, store)
                finally:
                    limiter.release()
        finally:
            self._in_flight.pop(item.dispatch_id, None)
        if metrics is not None:
            metrics.executed(item.node_name, result.WhichOneof("outcome") or "none", started)
        self._root.executed_count += 1
        self._push(result)

    # ------------------------------------------------------------------ cluster mode: one stream per replica

    def _on_replicas(self, addresses: Sequence[str]) -> None:
        """The live replicas: hold a link to each but the one this runtime's own stream reaches."""
        self._replicas = tuple(addresses)
        wanted = set(addresses) - {self._own_replica}
        loop = asyncio.get_running_loop()
        for address in sorted(wanted - set(self._links)):
            link = Runtime(
                self.namespace, self.name, list(self._nodes.values()),
                max_concurrency=self.max_concurrency, address=address, key=self._config.api_key,
                tls_ca_file=self._config.tls_ca_file, runtime_id=self.runtime_id, shutdown_grace=self._shutdown_grace,
            )  # fmt: skip
            link._root = self
            self._links[address] = (link, loop.create_task(link.run(), name=f"exosphere-runtime-link-{address}"))
            logger.info("runtime linked to scheduler replica runtime=%s replica=%s", self.name, address)
        if gone := set(self._links) - wanted:
            task = loop.create_task(self._stop_links(gone), name="exosphere-runtime-unlink")
            self._unlinking.add(task)
            task.add_done_callback(self._unlinking.discard)

    async def _stop_links(self, addresses: set[str]) -> None:
        links = [(a, *self._links.pop(a)) for a in sorted(addresses) if a in self._links]
        for _, link, _ in links:
            link.stop()
        for address, _, task in links:
            try:
                await task
            except Exception as exc:  # a link that failed is replaced when the replica comes back
                logger.warning("runtime link ended with an error replica=%s: %s", address, exc)

    def _push(self, result: pb.Result) -> None:
        self._outbox.append(result)
        assert self._wake_writer is not None
        self._wake_writer.set()

    async def _write_loop(self, call: Any, heartbeat_s: float) -> None:
        """The stream's only writer: results as they come, a heartbeat when idle, and a drain's messages."""
        assert self._wake_writer is not None
        wake = self._wake_writer
        said_draining = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(heartbeat_s):
                    await wake.wait()
            wake.clear()
            if self._draining and not said_draining:
                said_draining = True
                await call.write(pb.RuntimeMessage(draining=pb.Draining()))
            if self._outbox:
                await flush(call, self._outbox)
            else:
                await call.write(pb.RuntimeMessage(heartbeat=pb.Heartbeat(in_flight=len(self._in_flight))))
            if self._draining and not self._in_flight and not self._outbox:
                await call.done_writing()
                return

    def _cancel(self, state_ids: set[str]) -> None:
        """Stop states the scheduler cancelled (timed out, run cancelled) and acknowledge each, freeing its credit."""
        for dispatch_id, (task, item) in list(self._in_flight.items()):
            if item.state_id not in state_ids:
                continue
            del self._in_flight[dispatch_id]
            task.cancel()
            ack = pb.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=dispatch_id)
            ack.errored.message = "cancelled by the scheduler"
            ack.errored.type = "CancelledError"
            self._push(ack)

    async def _cancel_in_flight(self) -> None:
        tasks = [task for task, _ in self._in_flight.values()]
        self._in_flight.clear()
        self._outbox.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
