"""The Runtime: a worker process that hosts nodes over one bidirectional stream to the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc

from exosphere import __version__
from exosphere._channel import Backoff, metadata, open_channel, to_exosphere_error
from exosphere._convert import node_to_schema
from exosphere._executor import execute_item
from exosphere._keepalive import KeepAlive
from exosphere._metrics import RuntimeMetrics
from exosphere.config import ClientConfig
from exosphere.errors import AuthenticationError, ExosphereError, InvalidArgumentError, PermissionDeniedError
from exosphere.logs import setup_default_logging
from exosphere.node import BaseNode, validate_nodes
from exosphere.v1 import runtime_pb2 as pb
from exosphere.v1 import runtime_pb2_grpc

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)

# Cap a batch so the two processes overlap instead of taking turns on one huge message.
MAX_BATCH = 256
# Registration errors no retry can fix: the runtime stops and raises them.
_FATAL = (InvalidArgumentError, AuthenticationError, PermissionDeniedError)


class Runtime:
    """Hosts ``nodes`` for ``namespace`` and executes what the scheduler pushes, up to ``max_concurrency`` at once.

    ``start()`` blocks (on uvloop) until SIGINT/SIGTERM or ``stop()``; inside a running loop use ``await run()``.
    The scheduler address and API key come from the arguments, else ``EXOSPHERE_SCHEDULER_ADDRESS`` and
    ``EXOSPHERE_API_KEY``. A lost connection is retried with capped, jittered backoff. With ``metrics_port`` (0
    picks one, then read ``runtime.metrics_port``) the runtime serves its own Prometheus ``/metrics`` on
    ``metrics_host`` while ``run()`` runs (needs ``exosphere[metrics]``).
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
        self._created = _LazyEvent()
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
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._run_with_signals())
        return None

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self.run()

    def stop(self) -> None:
        """Stop taking work, finish in-flight states within the grace period, then return from ``run()``."""
        self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()

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
        stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
        call = stub.Connect(metadata=metadata(self._config))
        register = pb.Register(
            namespace=self.namespace,
            runtime_name=self.name,
            runtime_id=self.runtime_id,
            sdk_version=f"exosphere-python/{__version__}",
            nodes=schemas,
            max_concurrency=self.max_concurrency,
        )
        stack = contextlib.ExitStack()
        try:
            await call.write(pb.RuntimeMessage(register=register))
            first = await call.read()
            if not isinstance(first, pb.SchedulerMessage) or not first.HasField("registered"):
                raise ExosphereError("scheduler closed the stream before registering the runtime")
            registered = first.registered
            self._registered.set()
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
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read_loop(call), name="runtime-reader")
                writer = tg.create_task(self._write_loop(call, heartbeat_s), name="runtime-writer")
                stopper = tg.create_task(self._stopping.wait(), name="runtime-stop-watch")
                done, _ = await asyncio.wait({reader, writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    await self._drain(call)
                for task in (reader, writer, stopper):
                    task.cancel()
            return True
        except grpc.aio.AioRpcError as exc:
            raise to_exosphere_error(exc) from exc
        except ExceptionGroup as group:  # from the TaskGroup: surface the first stream error
            first = _first_leaf(group)
            if isinstance(first, grpc.aio.AioRpcError):
                raise to_exosphere_error(first) from group
            raise first from group
        finally:
            stack.close()
            call.cancel()

    async def _drain(self, call: Any) -> None:
        """Tell the scheduler we take no more work, finish in-flight states, flush their results."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(pb.RuntimeMessage(draining=pb.Draining()))
        deadline = time.monotonic() + self._shutdown_grace.total_seconds()
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.wait([t for t, _ in self._in_flight.values()], timeout=deadline - time.monotonic())
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._flush(call)
            await call.done_writing()

    async def _read_loop(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise ExosphereError("scheduler closed the runtime stream")
            kind = message.WhichOneof("kind")
            if kind == "execute":
                for item in message.execute.items:
                    self._start(item)
            elif kind == "cancel":
                self._cancel(set(message.cancel.state_ids))
            elif kind == "drain":
                logger.info("scheduler asked runtime to drain runtime=%s", self.name)
                self.stop()

    def _start(self, item: pb.Execute) -> None:
        node_cls = self._nodes.get(item.node_name)
        if node_cls is None:  # the scheduler never sends these; answer instead of hanging the state
            result = pb.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
            result.errored.message = f"node {item.node_name!r} is not hosted by runtime {self.name!r}"
            result.errored.type = "UnknownNodeError"
            self._push(result)
            return
        task = asyncio.get_running_loop().create_task(self._run_item(node_cls, item))
        self._in_flight[item.dispatch_id] = (task, item)

    async def _run_item(self, node_cls: type[BaseNode], item: pb.Execute) -> None:
        started = RuntimeMetrics.clock() if self._metrics is not None else 0.0
        try:
            result = await execute_item(node_cls, item)
        finally:
            self._in_flight.pop(item.dispatch_id, None)
        if self._metrics is not None:
            self._metrics.executed(item.node_name, result.WhichOneof("outcome") or "none", started)
        self.executed_count += 1
        self._push(result)

    def _push(self, result: pb.Result) -> None:
        self._outbox.append(result)
        assert self._wake_writer is not None
        self._wake_writer.set()

    async def _flush(self, call: Any) -> None:
        while self._outbox:
            batch = self._outbox[:MAX_BATCH]
            del self._outbox[:MAX_BATCH]
            await call.write(pb.RuntimeMessage(results=pb.ResultBatch(results=batch)))

    async def _write_loop(self, call: Any, heartbeat_s: float) -> None:
        assert self._wake_writer is not None
        wake = self._wake_writer
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(heartbeat_s):
                    await wake.wait()
            wake.clear()
            if self._outbox:
                await self._flush(call)
            else:
                await call.write(pb.RuntimeMessage(heartbeat=pb.Heartbeat(in_flight=len(self._in_flight))))

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


class _LazyEvent:
    """An asyncio.Event made on first use, so a Runtime can be built outside a running loop."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def _get(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def set(self) -> None:
        self._get().set()

    async def wait(self) -> None:
        await self._get().wait()


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _loop_factory() -> Any:
    if os.environ.get("EXOSPHERE_LOOP", "uvloop") == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop
    return asyncio.new_event_loop
