"""SchedulerService: decode, make one engine call, encode, map errors."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc

from exosphere.errors import RUN_ID_TRAILER, GraphNotFoundError, InvalidArgumentError
from exosphere.v1 import common_pb2, scheduler_pb2_grpc
from exosphere.v1 import scheduler_pb2 as pb

from .auth import Authenticator
from .engine import Engine, TriggerRequest
from .errors import status_from_errors
from .forward import Forwarder, forwarded
from .models import RunRow
from .names import check_name, check_names
from .ownership import NotOwnerError
from .reads import RunReads
from .sizes import check_store_size, take_by_size
from .store import RunCursor
from .watch_streams import WatchStreams
from .wire import (
    graph_spec_from_pb,
    graph_to_pb,
    run_status_from_pb,
    run_to_pb,
    schema_to_pb,
)

__all__ = ["SchedulerApi"]

Ctx = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE = 50
MAX_PAGE = 1000
MAX_STATE_PAGE = 10_000
# Every page and event is also cut by size (server/wire.py PAGE_BYTES), so no message limit is hit by big states,
# stores or graphs.


def _int_token(token: str, what: str) -> int:
    if not token:
        return -1
    try:
        value = int(token)
    except ValueError:
        raise InvalidArgumentError(f"invalid {what} page_token {token[:64]!r}") from None
    if not 0 <= value < 2**62:
        raise InvalidArgumentError(f"invalid {what} page_token {token[:64]!r}: out of range")
    return value


def _run_token(token: str) -> RunCursor | None:
    """The place a ListRuns page starts after: ``<created_at_ms>:<run_id>`` of the previous page's last run."""
    if not token:
        return None
    try:
        return RunCursor.parse(token)
    except ValueError as problem:
        raise InvalidArgumentError(
            f"invalid ListRuns page_token {token[:64]!r}: {problem}; pass the next_page_token of a ListRunsResponse"
        ) from None


class SchedulerApi(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, engine: Engine, auth: Authenticator, *, forwarder: Forwarder | None = None) -> None:
        self._engine = engine
        self._auth = auth
        self._forwarder = forwarder or Forwarder()
        self._reads = RunReads(engine, auth)
        self._watch_streams = WatchStreams(self.WatchRun)

    async def UpsertGraph(self, request: pb.UpsertGraphRequest, context: Ctx) -> pb.UpsertGraphResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.graph.namespace)
            spec = graph_spec_from_pb(request.graph)
            check_names("secret name", request.secrets)
            secrets = dict(request.secrets) if request.secrets else None
            stored = await self._engine.upsert_graph(spec, secrets)
        return pb.UpsertGraphResponse(graph=graph_to_pb(stored))

    async def GetGraph(self, request: pb.GetGraphRequest, context: Ctx) -> pb.GetGraphResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.namespace)
            spec = self._engine.get_graph(request.namespace, request.name)
        return pb.GetGraphResponse(graph=graph_to_pb(spec))

    async def ListGraphs(self, request: pb.ListGraphsRequest, context: Ctx) -> pb.ListGraphsResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.namespace)
            after = request.page_token
            specs = (s for s in self._engine.list_graphs(request.namespace) if s.name > after)
            graphs, complete = take_by_size(specs, graph_to_pb)
        return pb.ListGraphsResponse(graphs=graphs, next_page_token="" if complete else graphs[-1].name)

    async def DeleteGraph(self, request: pb.DeleteGraphRequest, context: Ctx) -> pb.DeleteGraphResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.namespace)
            await self._engine.delete_graph(request.namespace, request.name, force=request.force)
        return pb.DeleteGraphResponse()

    async def TriggerGraph(self, request: pb.TriggerGraphRequest, context: Ctx) -> pb.TriggerGraphResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.namespace)
            run_id = await self._engine.trigger(_trigger_request(self._engine, request))
        return pb.TriggerGraphResponse(run_id=run_id)

    async def TriggerGraphs(self, request: pb.TriggerGraphsRequest, context: Ctx) -> pb.TriggerGraphsResponse:
        async with status_from_errors(context):
            for namespace in {t.namespace for t in request.triggers}:
                self._auth.check(context, namespace)
            run_ids = await self._engine.trigger_many([_trigger_request(self._engine, t) for t in request.triggers])
        return pb.TriggerGraphsResponse(run_ids=run_ids)

    async def GetRun(self, request: pb.GetRunRequest, context: Ctx) -> pb.GetRunResponse:
        async with status_from_errors(context):
            page_size = min(request.page_size or MAX_STATE_PAGE, MAX_STATE_PAGE)
            return self._reads.page(context, request.run_id, page_size, _int_token(request.page_token, "GetRun"))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Ctx) -> pb.ListRunsResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.namespace)
            limit = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
            after = _run_token(request.page_token)
            status = run_status_from_pb(request.status)
            # One more than the page: a token only when another page has runs (no empty last page).
            runs = self._engine.list_runs(request.namespace, request.graph_name or None, limit + 1, after, status)
            # A page also ends before the size budget (runs carry their store).
            messages, complete = take_by_size(runs[:limit], run_to_pb)
            last = runs[len(messages) - 1] if messages else None
            token = RunCursor.of(last).token() if last and (not complete or len(runs) > limit) else ""
            return pb.ListRunsResponse(runs=messages, next_page_token=token)

    async def WatchRun(self, request: pb.WatchRunRequest, context: Ctx) -> AsyncGenerator[pb.WatchRunResponse, None]:
        async with status_from_errors(context):
            run_id = request.run_id
            triggered = request.HasField("trigger")
            if triggered:
                t = request.trigger
                self._auth.check(context, t.namespace)
                run_id = await self._engine.trigger(_trigger_request(self._engine, t))
                context.set_trailing_metadata(((RUN_ID_TRAILER, run_id),))
                if request.announce:
                    yield pb.WatchRunResponse(run=_announced(t, run_id))
            events = self._reads.watch(
                context,
                run_id,
                run_only=request.run_only,
                outcome_only=request.run_only and triggered,  # trigger-and-wait: only the outcome, one message
                final_snapshot=request.final_snapshot,
                max_events=request.final_snapshot_max_events,
            )
            try:
                async for event in events:
                    yield event
            finally:
                await events.aclose()

    def stop_watches(self) -> None:
        """The scheduler is stopping: end the Watches streams (server/watch_streams.py) instead of waiting for them."""
        self._watch_streams.stop()

    # Written with context.read()/write(): requests are read while earlier ones are answered.
    async def Watches(self, request_iterator: Any, context: Ctx) -> None:  # type: ignore[override]
        async with status_from_errors(context):
            await self._watch_streams.serve(context)

    async def CancelRun(self, request: pb.CancelRunRequest, context: Ctx) -> pb.CancelRunResponse:
        async with status_from_errors(context):
            run, _, _ = self._engine.get_run(request.run_id, 1)
            self._check_run(context, run)
            try:
                run = await self._engine.cancel_run(request.run_id)
            except NotOwnerError as exc:  # cluster mode: the owner of the run's shard cancels it
                if exc.address is None or forwarded(context):
                    raise
                reply: pb.CancelRunResponse = await self._forwarder.call(exc.address, "CancelRun", request, context)
                return reply
        return pb.CancelRunResponse(run=run_to_pb(run))

    async def RetryState(self, request: pb.RetryStateRequest, context: Ctx) -> pb.RetryStateResponse:
        async with status_from_errors(context):
            run_id = request.state_id.rpartition("-")[0]
            if run_id:
                run, _, _ = self._engine.get_run(run_id, 1)
                self._check_run(context, run)
            try:
                state_id = await self._engine.retry_state(request.state_id, request.request_id)
            except NotOwnerError as exc:  # cluster mode: the owner of the run's shard retries it
                if exc.address is None or forwarded(context):
                    raise
                reply: pb.RetryStateResponse = await self._forwarder.call(exc.address, "RetryState", request, context)
                return reply
        return pb.RetryStateResponse(state_id=state_id)

    async def ListNodes(self, request: pb.ListNodesRequest, context: Ctx) -> pb.ListNodesResponse:
        async with status_from_errors(context):
            self._auth.check(context, request.namespace)
            after = request.page_token
            nodes = (n for n in self._engine.runtimes.nodes_of(request.namespace) if n.name > after)
            schemas, complete = take_by_size(nodes, schema_to_pb)
            online = sorted(self._engine.runtimes.hosted(request.namespace))
        return pb.ListNodesResponse(nodes=schemas, next_page_token="" if complete else schemas[-1].name, online=online)

    async def ListNamespaces(self, request: pb.ListNamespacesRequest, context: Ctx) -> pb.ListNamespacesResponse:
        async with status_from_errors(context):
            names = [n for n in self._engine.namespaces() if self._auth.allowed(context, n)]
        return pb.ListNamespacesResponse(namespaces=names)

    async def ListRuntimes(self, request: pb.ListRuntimesRequest, context: Ctx) -> pb.ListRuntimesResponse:
        async with status_from_errors(context):
            if request.namespace:
                self._auth.check(context, request.namespace)
            sessions = [
                s
                for s in self._engine.runtimes.connected(request.namespace or None)
                if self._auth.allowed(context, s.namespace)
            ]
        return pb.ListRuntimesResponse(
            runtimes=[
                pb.RuntimeInfo(
                    runtime_id=s.runtime_id,
                    runtime_name=s.runtime_name,
                    namespace=s.namespace,
                    node_names=sorted(s.node_names),
                    max_concurrency=s.max_concurrency,
                    in_flight=len(s.in_flight),
                    connected_at_unix_ms=s.connected_at_ms,
                    sdk_version=s.sdk_version,
                    last_heartbeat_unix_ms=self._engine.runtimes.last_heard_ms(s),
                    draining=s.draining,
                )
                for s in sessions
            ]
        )

    def _check_run(self, context: Ctx, run: RunRow) -> None:
        self._auth.check(context, run.namespace)


def _plain(mapping: Any) -> dict[str, str]:
    return {k: mapping[k] for k in mapping}


def _trigger_request(engine: Engine, t: pb.TriggerGraphRequest) -> TriggerRequest:
    """A trigger, with its names and store size checked (an unknown graph is the engine's to report)."""
    check_name("namespace", t.namespace)
    check_name("graph_name", t.graph_name)
    check_names("store key", t.store)
    store = _plain(t.store)
    try:
        config = engine.get_graph(t.namespace, t.graph_name).store_config
    except GraphNotFoundError:
        config = None
    check_store_size("the run's store", {**config.default_values, **store} if config else store)
    return TriggerRequest(t.namespace, t.graph_name, _plain(t.inputs), store, t.start_delay_ms)


def _announced(t: pb.TriggerGraphRequest, run_id: str) -> pb.Run:
    """The event WatchRunRequest.announce sends once the run is committed: who it is, not yet how it is."""
    return pb.Run(run_id=run_id, namespace=t.namespace, graph_name=t.graph_name, status=common_pb2.RUN_STATUS_PENDING)
