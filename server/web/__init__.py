"""The scheduler's HTTP side: the dashboard, its JSON API and ``/metrics``, served in the scheduler's own loop.

Starlette routes, served by uvicorn as a task of the running loop (no thread, no second process); the engine is
called directly, like the gRPC layer calls it. The HTTP port listens on the gRPC host, so the loopback rule holds for
both, and under TLS it uses the same certificate. Every asset ships in the wheel (``server/web/static``): the
dashboard needs no internet at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..auth import Authenticator
from ..engine import Engine
from ..forward import Forwarder
from ..metrics import RpcCounter, SchedulerMetrics
from ..replicas import ReplicaView
from .logins import Logins
from .overview import Overview
from .routes import Routes

__all__ = ["STATIC", "HttpServer"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Content-Security-Policy: scripts only from this server; cytoscape sets style attributes, hence 'unsafe-inline'
# for styles only.
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
# Open streams (a run's live view) get this long to end when the scheduler stops.
CLOSE_GRACE_S = 1

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Headers:
    """Adds the security headers to every response."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message["headers"] = headers
            await send(message)

        await self._app(scope, receive, with_headers)


def build_app(
    engine: Engine,
    auth: Authenticator,
    rpcs: RpcCounter,
    *,
    secure_cookie: bool,
    replicas: Callable[[], Sequence[ReplicaView]] = list,
    forwarder: Forwarder | None = None,
) -> _Headers:
    overview = Overview(engine, replicas)
    metrics = SchedulerMetrics(engine, rpcs)
    routes = Routes(engine, Logins(auth), metrics, overview, secure_cookie=secure_cookie, forwarder=forwarder)

    async def index(request: Any) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    app = Starlette(
        routes=[
            Route("/", index),
            *routes.routes(),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return _Headers(app)


class _Uvicorn(uvicorn.Server):
    # Signals belong to the entrypoint (server/__main__.py), not to a server running inside the scheduler.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """``await HttpServer(...).start(host, port)`` binds (port 0 picks one) and serves until ``stop()``."""

    def __init__(
        self,
        engine: Engine,
        auth: Authenticator,
        rpcs: RpcCounter,
        *,
        tls: tuple[str, str] | None = None,  # (certificate file, key file)
        replicas: Callable[[], Sequence[ReplicaView]] = list,  # cluster mode: the live replicas (server/replicas.py)
        forwarder: Forwarder | None = None,  # cluster mode: for cancel and retry of another replica's runs
    ) -> None:
        self._app = build_app(engine, auth, rpcs, secure_cookie=tls is not None, replicas=replicas, forwarder=forwarder)
        self._tls = tls
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"could not bind the HTTP port {host}:{port} ({exc.strerror}); choose one with --http-port "
                "(0 picks a free one) or turn it off with --no-http"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        cert, key = self._tls if self._tls else (None, None)
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=cert,
            ssl_keyfile=key,
            timeout_graceful_shutdown=CLOSE_GRACE_S,
            server_header=False,
        )
        self._server = server = _Uvicorn(config)
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="http-server")
        while not server.started:
            if self._task.done():
                sock.close()
                await self._task  # raises why it stopped
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        """Stop listening; open streams get CLOSE_GRACE_S to end. Idempotent."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            async with asyncio.timeout(CLOSE_GRACE_S + 5):
                await task
        except TimeoutError:
            logger.warning("HTTP server did not stop in time; cancelling it")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
