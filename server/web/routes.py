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
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from exosphere.errors import ExosphereError, InvalidArgumentError, NotFoundError, RunNotFoundError

from ..engine import Engine
from ..metrics import SchedulerMetrics, render
from ..models import GraphSpec, RunRow, StateRow
from ..status import RunStatus, StateStatus
from ..triggers import TriggerRequest
from .logins import COOKIE, Caller, Logins

__all__ = ["Routes"]

# How often a run's live view is sent at most; changes in between are coalesced into the next event. Building the
# view walks the run's states, so for a big run the pause grows with its cost: one viewer takes at most about
# 1 / (1 + VIEW_COST_FACTOR) of the scheduler's loop.
EVENT_INTERVAL_S = 0.2
VIEW_COST_FACTOR = 20
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
    def __init__(self, engine: Engine, logins: Logins, metrics: SchedulerMetrics, *, secure_cookie: bool) -> None:
        self._engine = engine
        self._logins = logins
        self._metrics = metrics
        self._secure = secure_cookie
        # (monotonic time, states finished so far): states per second over the last samples.
        self._finished: deque[tuple[float, int]] = deque(maxlen=30)

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
        body = await _json(request)
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
        namespace = request.path_params["namespace"]
        runtimes = self._engine.runtimes
        sessions = sorted(runtimes.connected(namespace), key=lambda s: (s.runtime_name, s.connected_at_ms))
        online = runtimes.hosted(namespace)
        depths = {node: n for (ns, node), n in self._engine.queue_depths().items() if ns == namespace}
        return JSONResponse(
            {
                "runtimes": [
                    {
                        "runtime_id": s.runtime_id,
                        "runtime_name": s.runtime_name,
                        "nodes": sorted(s.node_names),
                        "credit_used": len(s.in_flight),
                        "credit": s.max_concurrency,
                        "connected_at_ms": s.connected_at_ms,
                        "last_heartbeat_ms": runtimes.last_heard_ms(s),
                        "draining": s.draining,
                    }
                    for s in sessions
                ],
                "nodes": [
                    {"name": n.name, "online": n.name in online, "queue_depth": depths.get(n.name, 0)}
                    for n in runtimes.nodes_of(namespace)
                ],
                "states_per_second": self._states_per_second(),
                "pending_runs": sum(1 for r in self._engine.live_runs() if r.namespace == namespace and r.pending),
            }
        )

    def _states_per_second(self) -> float:
        """States finished per second, scheduler-wide, between this call and one about 10 s before."""
        done = sum(self._engine.tally.states_finished.values())
        now = time.monotonic()
        samples = self._finished
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] > 10:
            samples.popleft()
        then, before = samples[0]
        return round((done - before) / (now - then), 1) if now - then > 0.5 else 0.0

    async def graphs(self, request: Request, caller: Caller) -> Response:
        return JSONResponse([_graph(g) for g in self._engine.list_graphs(request.path_params["namespace"])])

    async def graph(self, request: Request, caller: Caller) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        compiled = self._engine.catalog.get(namespace, name)
        out = _graph(compiled.spec)
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
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in RunStatus.__members__:
            raise InvalidArgumentError(f"unknown run status {status!r}")
        limit = min(int(q.get("limit", "50") or 50), 500)
        rows = self._engine.list_runs(request.path_params["namespace"], q.get("graph") or None, limit, None, status)
        return JSONResponse([_run(r) for r in rows])

    def _readable_run(self, run_id: str, caller: Caller) -> tuple[RunRow, list[StateRow]]:
        run, states, _ = self._engine.get_run(run_id)
        if not caller.allows(run.namespace):
            raise RunNotFoundError(run_id)
        return run, states

    async def run(self, request: Request, caller: Caller) -> Response:
        run, states = self._readable_run(request.path_params["run_id"], caller)
        return JSONResponse(self._run_view(run, states))

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
            graph = _graph(self._engine.get_graph(run.namespace, run.graph_name))
        failed = [s for s in states if s.status in (StateStatus.ERRORED, StateStatus.TIMEDOUT)]
        listed = (failed + [s for s in states if s not in failed])[:RUN_STATES_LIMIT]
        return {
            "run": _run(run),
            "graph": graph,
            "nodes": nodes,
            "states": [_state_brief(s) for s in listed],
            "states_total": len(states),
        }

    async def run_events(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        self._readable_run(run_id, caller)  # 404 before the stream starts
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
        run, states = self._readable_run(_run_id_of(state_id), caller)
        state = next((s for s in states if s.state_id == state_id), None)
        if state is None:
            raise NotFoundError(f"state {state_id} not found")
        attempts = [
            _state_full(s)
            for s in states
            if s.identifier == state.identifier and s.path == state.path and s.parent_id == state.parent_id
        ]
        return JSONResponse({"run": _run(run), "state": _state_full(state), "attempts": attempts})

    # ------------------------------------------------------------------ actions

    async def trigger(self, request: Request, caller: Caller) -> Response:
        body = await _json(request)
        run_id = await self._engine.trigger(
            TriggerRequest(
                request.path_params["namespace"],
                str(body.get("graph_name", "")),
                _strings(body.get("inputs"), "inputs"),
                _strings(body.get("store"), "store"),
            )
        )
        return JSONResponse({"run_id": run_id})

    async def cancel(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        self._readable_run(run_id, caller)
        return JSONResponse(_run(await self._engine.cancel_run(run_id)))

    async def retry(self, request: Request, caller: Caller) -> Response:
        state_id = request.path_params["state_id"]
        self._readable_run(_run_id_of(state_id), caller)
        body = await _json(request)
        request_id = str(body.get("request_id") or "") or f"dashboard-{time.time_ns()}"
        return JSONResponse({"state_id": await self._engine.retry_state(state_id, request_id)})


def _run_id_of(state_id: str) -> str:
    run_id = state_id.rpartition("-")[0]
    if not run_id:
        raise NotFoundError(f"state {state_id} not found")
    return run_id


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgumentError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    return body


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgumentError(f"{what} must be an object of strings")
    return value


def _graph(spec: GraphSpec) -> dict[str, Any]:
    return {
        "namespace": spec.namespace,
        "name": spec.name,
        "version": spec.version,
        "updated_at_ms": spec.updated_at_ms,
        "secret_names": sorted(spec.secrets),  # names only, never values
        "store_keys": spec.store_config.required_keys if spec.store_config else [],
        "store_defaults": spec.store_config.default_values if spec.store_config else {},
        "nodes": [
            {
                "identifier": n.identifier,
                "node_name": n.node_name,
                "next_nodes": n.next_nodes,
                "unites": n.unites.identifier if n.unites else None,
                "inputs": n.inputs,
            }
            for n in spec.nodes
        ],
    }


def _run(run: RunRow) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "namespace": run.namespace,
        "graph_name": run.graph_name,
        "graph_version": run.graph_version,
        "status": str(run.status),
        "created_at_ms": run.created_at_ms,
        "updated_at_ms": run.updated_at_ms,
        "state_counts": {str(k): v for k, v in run.state_counts.items()},
        "waiting_for_runtime": run.waiting_for_runtime,
    }


def _state_brief(s: StateRow) -> dict[str, Any]:
    return {
        "state_id": s.state_id,
        "identifier": s.identifier,
        "node_name": s.node_name,
        "status": str(s.status),
        "attempt": s.attempt,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
        "runtime_name": s.runtime_name,
        "started_at_ms": s.started_at_ms,
        "ran_ms": s.ran_ms,
    }


def _state_full(s: StateRow) -> dict[str, Any]:
    return {
        **_state_brief(s),
        "inputs": s.inputs,
        "outputs": s.outputs,
        "error": s.error,
        "pruned_data": s.pruned_data,
        "parent_id": s.parent_id,
        "run_at_ms": s.run_at_ms,
    }
