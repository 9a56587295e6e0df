"""StateManager: manage graphs and runs of one namespace from Python."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from exosphere._channel import CALL_TIMEOUT_S, Backoff, metadata, open_channel, translate_errors
from exosphere._watch_stream import Interrupted
from exosphere._watches import RunWatches, follow
from exosphere._wire import graph_from_pb, graph_to_pb, run_from_pb, runtime_from_pb, states_from_pb
from exosphere.config import ClientConfig
from exosphere.errors import ConnectionFailedError, ExosphereTimeoutError, InvalidArgumentError
from exosphere.models import (
    CronTrigger,
    GraphModel,
    GraphNodeModel,
    RetryPolicyModel,
    RunModel,
    RunStatus,
    RuntimeModel,
    StateModel,
    StoreConfigModel,
    TriggerResponse,
)
from exosphere.v1 import common_pb2, scheduler_pb2_grpc
from exosphere.v1 import scheduler_pb2 as pb

logger = logging.getLogger(__name__)

__all__ = ["StateManager"]

# States per GetRun page: small enough that the scheduler encodes the next page while this one is converted (the
# scheduler also cuts a page by size).
STATE_PAGE = 2_000


def _model(cls: Any, value: Any) -> Any:
    if value is None or isinstance(value, cls):
        return value
    return cls.model_validate(value)


class StateManager:
    """Client of the scheduler for one namespace.

    The address and API key come from the arguments, else ``EXOSPHERE_SCHEDULER_ADDRESS`` and ``EXOSPHERE_API_KEY``.
    Use it as an async context manager, or call ``close()``.
    """

    def __init__(
        self,
        namespace: str,
        address: str | None = None,
        key: str | None = None,
        *,
        tls_ca_file: str | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace.strip():
            raise InvalidArgumentError("namespace must be a non-empty string")
        self.namespace = namespace.strip()
        self._config = ClientConfig.resolve(address=address, api_key=key, tls_ca_file=tls_ca_file)
        self._metadata = metadata(self._config)
        self._channel: Any = None
        self._stub: Any = None
        # Triggers and watches go as messages on one stream; trigger() keeps the watch it starts a run with for
        # the wait() that usually follows (exosphere/_watches.py).
        self._runs = RunWatches(self._api, self._metadata)

    def _api(self) -> scheduler_pb2_grpc.SchedulerServiceAsyncStub:
        # The channel must be created inside the running loop, so it is made on first use.
        if self._stub is None:
            self._channel = open_channel(self._config)
            self._stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)
        return self._stub  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the channel. Idempotent."""
        await self._runs.close()
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ graphs

    async def upsert_graph(
        self,
        graph_name: str,
        graph_nodes: Sequence[GraphNodeModel | Mapping[str, Any]],
        secrets: Mapping[str, str] | None = None,
        retry_policy: RetryPolicyModel | Mapping[str, Any] | None = None,
        store_config: StoreConfigModel | Mapping[str, Any] | None = None,
        triggers: Sequence[CronTrigger | Mapping[str, Any]] | None = None,
    ) -> GraphModel:
        """Create or replace a graph template; raises ``GraphValidationError`` listing every problem."""
        graph = graph_to_pb(
            self.namespace,
            graph_name,
            [_model(GraphNodeModel, n) for n in graph_nodes],
            _model(RetryPolicyModel, retry_policy),
            _model(StoreConfigModel, store_config),
            [_model(CronTrigger, t) for t in triggers or []],
        )
        async with translate_errors():
            response = await self._api().UpsertGraph(
                pb.UpsertGraphRequest(graph=graph, secrets=dict(secrets or {})),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )
        return graph_from_pb(response.graph)

    async def get_graph(self, graph_name: str) -> GraphModel:
        """Read a graph template (secret names only, never values)."""
        async with translate_errors():
            response = await self._api().GetGraph(
                pb.GetGraphRequest(namespace=self.namespace, name=graph_name),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )
        return graph_from_pb(response.graph)

    async def list_graphs(self) -> list[GraphModel]:
        """Every graph template of the namespace (read page by page when they are large)."""
        graphs: list[GraphModel] = []
        token = ""
        async with translate_errors():
            while True:
                response = await self._api().ListGraphs(
                    pb.ListGraphsRequest(namespace=self.namespace, page_token=token),
                    metadata=self._metadata,
                    timeout=CALL_TIMEOUT_S,
                )
                graphs.extend(graph_from_pb(g) for g in response.graphs)
                token = response.next_page_token
                if not token:
                    return graphs

    async def delete_graph(self, graph_name: str, *, force: bool = False) -> None:
        """Delete a graph template; refused while it has pending runs unless ``force`` (which cancels them)."""
        async with translate_errors():
            await self._api().DeleteGraph(
                pb.DeleteGraphRequest(namespace=self.namespace, name=graph_name, force=force),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )

    # ------------------------------------------------------------------ runs

    async def trigger(
        self,
        graph_name: str,
        inputs: Mapping[str, str] | None = None,
        store: Mapping[str, str] | None = None,
        start_delay: int | timedelta = 0,
    ) -> TriggerResponse:
        """Start a run. ``start_delay`` is in milliseconds (or a ``timedelta``).

        The run is started with a watch that names it at once and is kept for a ``wait()`` on it
        (exosphere/_watches.py): trigger-then-wait is one request.
        """
        delay_ms = int(start_delay.total_seconds() * 1000) if isinstance(start_delay, timedelta) else int(start_delay)
        if delay_ms < 0:
            raise InvalidArgumentError(f"start_delay must be >= 0, got {start_delay}")
        request = pb.TriggerGraphRequest(
            namespace=self.namespace,
            graph_name=graph_name,
            inputs=dict(inputs or {}),
            store=dict(store or {}),
            start_delay_ms=delay_ms,
        )
        return TriggerResponse(run_id=await self._runs.trigger(request))

    async def trigger_many(
        self, graph_name: str, runs: Sequence[Mapping[str, Mapping[str, str]]]
    ) -> list[TriggerResponse]:
        """Start several runs in one call; each item may have ``inputs`` and ``store``. All or none start."""
        request = pb.TriggerGraphsRequest(
            triggers=[
                pb.TriggerGraphRequest(
                    namespace=self.namespace,
                    graph_name=graph_name,
                    inputs=dict(r.get("inputs", {})),
                    store=dict(r.get("store", {})),
                )
                for r in runs
            ]
        )
        async with translate_errors():
            response = await self._api().TriggerGraphs(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        return [TriggerResponse(run_id=run_id) for run_id in response.run_ids]

    async def get_run(self, run_id: str) -> RunModel:
        """A run with all its states (read page by page for very large runs)."""
        api = self._api()

        def page(token: str) -> asyncio.Task[pb.GetRunResponse]:
            request = pb.GetRunRequest(run_id=run_id, page_size=STATE_PAGE, page_token=token)
            call = api.GetRun(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
            return asyncio.ensure_future(call)

        states: list[StateModel] = []
        async with translate_errors():
            upcoming = page("")
            try:
                while True:
                    response = await upcoming
                    if response.next_page_token:  # asked for before this page is converted, so both sides work
                        upcoming = page(response.next_page_token)
                        await asyncio.sleep(0)  # the call's own task sends the request: let it run first
                    states.extend(states_from_pb(response.states))
                    if not response.next_page_token:
                        return run_from_pb(response.run, states)
            finally:
                upcoming.cancel()

    async def resolve_run_id(self, run_id: str) -> str:
        """The whole id of the run that ``run_id`` names: a run id, or a unique prefix of one (``7ced34``).

        Raises:
            RunNotFoundError: No run id starts with it.
            InvalidArgumentError: Several do; the message lists a few of them.
        """
        async with translate_errors():
            response = await self._api().GetRun(
                pb.GetRunRequest(run_id=run_id, page_size=1), metadata=self._metadata, timeout=CALL_TIMEOUT_S
            )
        return response.run.run_id

    async def list_runs(
        self,
        graph_name: str | None = None,
        *,
        page_size: int = 50,
        page_token: str = "",
        status: RunStatus | str | None = None,
    ) -> tuple[list[RunModel], str]:
        """Runs of the namespace (or of one graph, or of one status), newest first, with counts by status.

        Returns the runs and the token of the next page ("" on the last page).
        """
        status_value = common_pb2.RunStatus.Value(f"RUN_STATUS_{RunStatus(status).value}") if status else 0
        async with translate_errors():
            response = await self._api().ListRuns(
                pb.ListRunsRequest(
                    namespace=self.namespace,
                    graph_name=graph_name or "",
                    page_size=page_size,
                    page_token=page_token,
                    status=status_value,  # type: ignore[arg-type]
                ),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )
        return [run_from_pb(r) for r in response.runs], response.next_page_token

    async def trigger_and_wait(
        self,
        graph_name: str,
        inputs: Mapping[str, str] | None = None,
        store: Mapping[str, str] | None = None,
        *,
        timeout: float | timedelta | None = None,
        states: bool = True,
    ) -> RunModel:
        """Start a run and wait for its outcome in one round trip; with ``states`` the outcome carries its states.

        A watch that ends once the run is started (the scheduler stopping: its end names the run) goes on as
        ``wait()`` on the run, not as an error.
        """
        timeout_s = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        request = pb.WatchRunRequest(
            run_only=True,
            final_snapshot=states,
            trigger=pb.TriggerGraphRequest(
                namespace=self.namespace, graph_name=graph_name, inputs=dict(inputs or {}), store=dict(store or {})
            ),
        )
        started: list[str] = []  # the run id, from its first event (or its interrupted end)
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    final = await self._runs.outcome(request, started)
                except ConnectionFailedError as exc:
                    run_id = exc.run_id if isinstance(exc, Interrupted) else next(iter(started), None)
                    if run_id is None:  # the run may not have started: say so
                        raise
                    logger.info("watch of run %s interrupted, watching again: %s", run_id, exc)
                    started[:] = [run_id]
                    final = None
                if final is None and started:
                    run = await self.wait(started[0])
                    return run if states else run.model_copy(update={"states": []})
        except TimeoutError:
            raise ExosphereTimeoutError(f"graph {graph_name!r} run still pending after {timeout_s}s") from None
        if final is None:
            raise ExosphereTimeoutError(f"graph {graph_name!r}: the scheduler ended the watch before the run finished")
        run, complete = final
        return run if complete or not states else await self.get_run(run.run_id)

    async def watch(self, run_id: str, *, states: bool = True) -> AsyncIterator[tuple[RunModel, list[StateModel]]]:
        """Yield ``(run, changed_states)`` as the run progresses; ends once the run is no longer pending.

        The first event carries every state (over several events when they are too large for one message); later
        ones the states that changed. With ``states=False`` only the
        run (status and counts) is sent, which is all a client waiting for the outcome needs.
        """
        call = self._api().WatchRun(pb.WatchRunRequest(run_id=run_id, run_only=not states), metadata=self._metadata)
        try:
            async with translate_errors():
                async for event in call:
                    yield run_from_pb(event.run), states_from_pb(event.states)
        finally:
            call.cancel()

    async def wait(self, run_id: str, timeout: float | timedelta | None = None) -> RunModel:
        """Wait until the run is no longer PENDING and return it with its states.

        One call: the scheduler sends the run's final snapshot, states included, on the watch stream once the run
        has ended (an older scheduler sends the outcome only, and the states are then read with ``get_run``).
        """
        timeout_s = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        request = pb.WatchRunRequest(run_id=run_id, run_only=True, final_snapshot=True)
        backoff = Backoff()
        kept = self._runs.kept.take(run_id)  # the watch trigger() started this run with, if it did
        try:
            async with asyncio.timeout(timeout_s):
                if kept is not None:
                    try:
                        final = await follow(kept, final_snapshot=True)
                    except ConnectionFailedError as exc:
                        logger.info("watch of run %s interrupted, watching again: %s", run_id, exc)
                    else:
                        if final is not None and final[1]:
                            return final[0]
                        # Its snapshot was left out (more than one event) or it was dropped unread: watch again.
                while True:
                    try:
                        final = await self._runs.outcome(request)
                    except ConnectionFailedError as exc:
                        # The run moved to another scheduler replica, or this one went away: watch it again.
                        logger.info("watch of run %s interrupted, watching again: %s", run_id, exc)
                    else:
                        if final is not None:
                            run, complete = final
                            return run if complete else await self.get_run(run_id)
                    await asyncio.sleep(backoff.next_delay_s())
        except TimeoutError:
            raise ExosphereTimeoutError(f"run {run_id} still pending after {timeout_s}s") from None

    async def cancel_run(self, run_id: str) -> RunModel:
        """Cancel a run: pending states become CANCELLED, running ones are cancelled on their runtime."""
        async with translate_errors():
            response = await self._api().CancelRun(
                pb.CancelRunRequest(run_id=run_id), metadata=self._metadata, timeout=CALL_TIMEOUT_S
            )
        return run_from_pb(response.run)

    async def retry_state(self, state_id: str, request_id: str | None = None) -> str:
        """Retry a failed state once per ``request_id``; returns the new attempt's state id."""
        async with translate_errors():
            response = await self._api().RetryState(
                pb.RetryStateRequest(state_id=state_id, request_id=request_id or str(uuid.uuid4())),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )
        return response.state_id

    async def list_nodes(self) -> list[str]:
        """Names of the nodes registered in the namespace (read page by page when there are many)."""
        names: list[str] = []
        token = ""
        async with translate_errors():
            while True:
                response = await self._api().ListNodes(
                    pb.ListNodesRequest(namespace=self.namespace, page_token=token),
                    metadata=self._metadata,
                    timeout=CALL_TIMEOUT_S,
                )
                names.extend(n.name for n in response.nodes)
                token = response.next_page_token
                if not token:
                    return names

    async def list_runtimes(self, *, all_namespaces: bool = False) -> list[RuntimeModel]:
        """The runtimes connected now: of this namespace, or of every namespace the API key may see."""
        async with translate_errors():
            response = await self._api().ListRuntimes(
                pb.ListRuntimesRequest(namespace="" if all_namespaces else self.namespace),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )
        return [runtime_from_pb(r) for r in response.runtimes]
