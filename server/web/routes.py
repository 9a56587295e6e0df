"""The dashboard's JSON API and ``/metrics``: thin like ``server/api.py`` (check the caller, one engine call, encode).

Every route is scoped: a namespace the caller's key does not allow answers 404 exactly like one that does not exist,
so a key learns nothing of other namespaces. Writes are JSON POSTs: with the SameSite=Strict cookie, a form on
another site cannot send them. Secrets never appear: graphs show secret names only, states carry no secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from exosphere.errors import (
    ERROR_TRAILER,
    ExosphereError,
    InvalidArgumentError,
    NotFoundError,
    RunNotFoundError,
    error_class,
)
from exosphere.v1 import scheduler_pb2

from ..engine import Engine
from ..forward import Forwarder
from ..metrics import SchedulerMetrics, render
from ..models import RunRow, StateRow
from ..ownership import NotOwnerError
from ..prefixes import read_run
from ..status import RunStatus, StateStatus
from ..store import RunCursor
from ..triggers import TriggerRequest
from .logins import COOKIE, Caller, Logins
from .overview import Overview
from .views import graph_view, parse_cursor, read_json, run_id_of, run_view, state_brief, state_full, strings

__all__ = ["Routes"]

# How often a run's live view is sent at most; changes in between are coalesced into the next event. Building the
# view walks the run's states, so for a big run the pause grows with its cost: one viewer takes at most about
# 1 / (1 + VIEW_COST_FACTOR) of the scheduler's loop.
EVENT_INTERVAL_S = 0.2
VIEW_COST_FACTOR = 20
# Runs per page of the runs list, by default and at most.
RUNS_PAGE = 100
MAX_RUNS_PAGE = 500
# States listed with a run (the DAG shows counts per node, so a 10,000-way fan-out is not 10,000 rows).
RUN_STATES_LIMIT = 200
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 404,  # as if it did not exist
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}

Handler = Callable[[Request, Caller], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Routes:
    def __init__(
        self,
        engine: Engine,
        logins: Logins,
        metrics: SchedulerMetrics,
        overview: Overview,
        *,
        secure_cookie: bool,
        forwarder: Forwarder | None = None,
    ) -> None:
        self._engine = engine
        self._logins = logins
        self._metrics = metrics
        self._overview = overview
        self._secure = secure_cookie
        # Cluster mode: cancel and retry of a run another replica owns go to that replica.
        self._forwarder = forwarder

    def routes(self) -> list[Route]:
        scoped = self._scoped
        return [
            Route("/metrics", scoped(self.metrics)),
            Route("/api/session", self.session),
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/logout", self.logout, methods=["POST"]),
            Route("/api/namespaces", scoped(self.namespaces)),
            Route("/api/namespaces/{namespace}/overview", scoped(self.overview)),
            Route("/api/namespaces/{namespace}/graphs", scoped(self.graphs)),
            Route("/api/namespaces/{namespace}/graphs/{name}", scoped(self.graph)),
            Route("/api/namespaces/{namespace}/runs", scoped(self.runs)),
            Route("/api/namespaces/{namespace}/trigger", scoped(self.trigger), methods=["POST"]),
            Route("/api/runs/{run_id}", scoped(self.run)),
            Route("/api/runs/{run_id}/events", scoped(self.run_events)),
            Route("/api/runs/{run_id}/cancel", scoped(self.cancel), methods=["POST"]),
            Route("/api/states/{state_id}", scoped(self.state)),
            Route("/api/states/{state_id}/retry", scoped(self.retry), methods=["POST"]),
        ]

    # ------------------------------------------------------------------ who is asking

    def _caller(self, request: Request) -> Caller | None:
        # A key in a header: x-api-key as on gRPC, or "Authorization: Bearer <key>" (Prometheus' scrape config).
        key = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not key and scheme.lower() == "bearer":
            key = token.strip()
        return self._logins.caller(request.cookies.get(COOKIE), key)

    def _scoped(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = self._caller(request)
            if caller is None:
                return _error(401, "log in with an API key")
            if request.method == "POST" and request.headers.get("content-type", "").split(";")[0] != "application/json":
                return _error(415, "send JSON (Content-Type: application/json)")
            namespace = request.path_params.get("namespace")
            if namespace is not None and not caller.allows(namespace):
                return _error(404, f"namespace {namespace!r} not found")
            try:
                return await handler(request, caller)
            except ExosphereError as exc:
                return _error(_HTTP_STATUS.get(exc.status, 500), str(exc))

        return endpoint

    async def session(self, request: Request) -> Response:
        caller = self._caller(request)
        return JSONResponse({"login_required": self._logins.required, "logged_in": caller is not None})

    async def login(self, request: Request) -> Response:
        body = await read_json(request)
        try:
            token = self._logins.login(str(body.get("api_key", "")))
        except ExosphereError as exc:
            return _error(401, str(exc))
        response = JSONResponse({"logged_in": True})
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=self._secure, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        self._logins.logout(request.cookies.get(COOKIE))
        response = JSONResponse({"logged_in": False})
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ reads

    async def metrics(self, request: Request, caller: Caller) -> Response:
        body = render(self._metrics, caller.allows)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def namespaces(self, request: Request, caller: Caller) -> Response:
        return JSONResponse([n for n in self._engine.namespaces() if caller.allows(n)])

    async def overview(self, request: Request, caller: Caller) -> Response:
        return JSONResponse(self._overview.of(request.path_params["namespace"]))

    async def graphs(self, request: Request, caller: Caller) -> Response:
        return JSONResponse([graph_view(g) for g in self._engine.list_graphs(request.path_params["namespace"])])

    async def graph(self, request: Request, caller: Caller) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        compiled = self._engine.catalog.get(namespace, name)
        out = graph_view(compiled.spec)
        root = next(n for n in compiled.spec.nodes if n.identifier == compiled.root.identifier)
        schema = self._engine.runtimes.node_schema(namespace, root.node_name)
        # The trigger form: the root's inputs, prefilled with the template's values (a trigger may override them).
        out["root"] = root.identifier
        out["root_inputs"] = [
            {
                "name": f.name,
                "required": f.required and f.name not in root.inputs,
                "default": root.inputs.get(f.name, f.default or ""),
            }
            for f in (schema.inputs if schema else ())
        ]
        return JSONResponse(out)

    async def runs(self, request: Request, caller: Caller) -> Response:
        """A page of runs, newest first: ``{"runs": [...], "next": cursor}``; ``after=<next>`` asks for the page after
        (``next`` is "" on the last page). ``graph`` and ``status`` filter, and stay the same from page to page."""
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in RunStatus.__members__:
            raise InvalidArgumentError(f"unknown run status {status!r}")
        try:
            limit = max(1, min(int(q.get("limit") or RUNS_PAGE), MAX_RUNS_PAGE))
        except ValueError:
            raise InvalidArgumentError(f"limit must be a number, not {q.get('limit')!r}") from None
        after = parse_cursor(q.get("after"))
        namespace = request.path_params["namespace"]
        # One more than the page: a cursor only when another page has runs.
        rows = self._engine.list_runs(namespace, q.get("graph") or None, limit + 1, after, status)
        more = len(rows) > limit
        rows = rows[:limit]
        return JSONResponse(
            {"runs": [run_view(r) for r in rows], "next": RunCursor.of(rows[-1]).token() if more else ""}
        )

    def _readable_run(
        self, run_id: str, caller: Caller, page_size: int = 0, *, prefix: bool = False
    ) -> tuple[RunRow, list[StateRow]]:
        """The run (with its first ``page_size`` states, all with 0) if the caller may read it, else not found; with
        ``prefix``, also by a unique prefix of its id, as the CLI takes (/#/runs/00a3f9)."""
        if prefix:
            run, states = read_run(self._engine, run_id, caller.allows, page_size)
        else:
            run, states, _ = self._engine.get_run(run_id, page_size)
        if not caller.allows(run.namespace):
            raise RunNotFoundError(run_id)
        return run, states

    async def run(self, request: Request, caller: Caller) -> Response:
        run, states = self._readable_run(request.path_params["run_id"], caller, prefix=True)
        return JSONResponse(self._run_view(run, states))  # the page moves to the whole id

    def _run_view(self, run: RunRow, states: list[StateRow]) -> dict[str, Any]:
        nodes: dict[str, dict[str, Any]] = {}
        for s in states:
            node = nodes.get(s.identifier)
            if node is None:
                node = nodes[s.identifier] = {
                    "node_name": s.node_name,
                    "counts": Counter(),
                    "first_ms": 0,
                    "last_ms": 0,
                }
            node["counts"][str(s.status)] += 1
            node["first_ms"] = min(node["first_ms"] or s.created_at_ms, s.created_at_ms)
            node["last_ms"] = max(node["last_ms"], s.updated_at_ms)
        graph = None
        with contextlib.suppress(NotFoundError):
            graph = graph_view(self._engine.get_graph(run.namespace, run.graph_name))
        failed = [s for s in states if s.status in (StateStatus.ERRORED, StateStatus.TIMEDOUT)]
        listed = (failed + [s for s in states if s not in failed])[:RUN_STATES_LIMIT]
        owner = self._owner_elsewhere(run)
        view = run_view(run)
        if owner is not None:  # its owner knows what it waits for; runtimes stream to every replica, so this one does
            hosted = self._engine.runtimes.hosted(run.namespace)
            created = {s.node_name for s in states if s.status == StateStatus.CREATED}
            view["waiting_for_runtime"] = sorted(created - hosted)
        return {
            "run": view,
            "graph": graph,
            "nodes": nodes,
            "states": [state_brief(s) for s in listed],
            "states_total": len(states),
            "owned_elsewhere": owner,
        }

    def _owner_elsewhere(self, run: RunRow) -> str | None:
        """Cluster mode: the replica holding a pending run this one does not (its address, "" when unknown); None
        for a run held here or ended. Such a run is read as committed, where a state a runtime holds reads CREATED."""
        if run.status != RunStatus.PENDING or self._engine.is_live(run.run_id):
            return None
        shards = self._engine.shards
        return shards.owners.get(shards.of(run.run_id), "")

    async def run_events(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        self._readable_run(run_id, caller, 1)  # 404 before the stream starts
        return StreamingResponse(self._events(run_id), media_type="text/event-stream")

    async def _events(self, run_id: str) -> AsyncIterator[str]:
        """Server-sent events: the run's view at once, then after changes (at most every EVENT_INTERVAL_S)."""
        changed = asyncio.Event()
        ended = asyncio.Event()

        async def follow() -> None:
            try:
                async for _ in self._engine.watch_run(run_id):
                    changed.set()
            finally:
                ended.set()
                changed.set()

        task = asyncio.get_running_loop().create_task(follow(), name=f"dashboard-watch-{run_id}")
        try:
            while True:
                await changed.wait()
                changed.clear()
                started = time.perf_counter()
                run, states, _ = self._engine.get_run(run_id)
                event = f"data: {json.dumps(self._run_view(run, states))}\n\n"
                cost_s = time.perf_counter() - started
                yield event
                if ended.is_set():
                    return
                await asyncio.sleep(max(EVENT_INTERVAL_S, cost_s * VIEW_COST_FACTOR))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def state(self, request: Request, caller: Caller) -> Response:
        state_id = request.path_params["state_id"]
        run, states = self._readable_run(run_id_of(state_id), caller)
        state = next((s for s in states if s.state_id == state_id), None)
        if state is None:
            raise NotFoundError(f"state {state_id} not found")
        attempts = [
            state_full(s)
            for s in states
            if s.identifier == state.identifier and s.path == state.path and s.parent_id == state.parent_id
        ]
        return JSONResponse({"run": run_view(run), "state": state_full(state), "attempts": attempts})

    # ------------------------------------------------------------------ actions

    async def trigger(self, request: Request, caller: Caller) -> Response:
        body = await read_json(request)
        run_id = await self._engine.trigger(
            TriggerRequest(
                request.path_params["namespace"],
                str(body.get("graph_name", "")),
                strings(body.get("inputs"), "inputs"),
                strings(body.get("store"), "store"),
            )
        )
        return JSONResponse({"run_id": run_id})

    async def cancel(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        self._readable_run(run_id, caller, 1)
        try:
            return JSONResponse(run_view(await self._engine.cancel_run(run_id)))
        except NotOwnerError as exc:
            await self._forward(exc, "CancelRun", scheduler_pb2.CancelRunRequest(run_id=run_id), caller)
            return JSONResponse(run_view(self._readable_run(run_id, caller, 1)[0]))  # committed by the owner

    async def retry(self, request: Request, caller: Caller) -> Response:
        state_id = request.path_params["state_id"]
        self._readable_run(run_id_of(state_id), caller, 1)
        body = await read_json(request)
        request_id = str(body.get("request_id") or "") or f"dashboard-{time.time_ns()}"
        try:
            return JSONResponse({"state_id": await self._engine.retry_state(state_id, request_id)})
        except NotOwnerError as exc:
            forwarded = scheduler_pb2.RetryStateRequest(state_id=state_id, request_id=request_id)
            reply = await self._forward(exc, "RetryState", forwarded, caller)
            return JSONResponse({"state_id": reply.state_id})

    async def _forward(self, exc: NotOwnerError, method: str, request: Any, caller: Caller) -> Any:
        """The call on the replica that owns the run; its refusal is answered as this replica's would be."""
        if exc.address is None or self._forwarder is None:
            raise exc
        try:
            return await self._forwarder.call_as(exc.address, method, request, caller.key.key if caller.key else None)
        except grpc.aio.AioRpcError as failed:  # the owner's refusal, as the error it stands for
            name = dict(failed.trailing_metadata() or ()).get(ERROR_TRAILER)
            cls = error_class(name if isinstance(name, str) else None, failed.code())
            raise cls.from_wire(failed.details() or failed.code().name, {}) from None
