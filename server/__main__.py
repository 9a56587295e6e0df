"""``exosphere-server`` / ``python -m exosphere_server`` (``python -m server`` in a checkout): the scheduler process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from exosphere.errors import ExosphereError

from .config import ServerConfig
from .dblock import DatabaseLockedError
from .store import StoreError

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger("server")

# How often a standby scheduler tries the database lock.
STANDBY_POLL_S = 0.25

# The scheduler's own dependencies (the `server` extra), beyond the SDK's.
SERVER_MODULES = (
    *("croniter", "cryptography", "grpc_health", "grpc_reflection", "yaml"),
    *("starlette", "uvicorn", "prometheus_client"),
)


def _version() -> str:
    try:
        return importlib.metadata.version("exosphere")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exosphere-server", description="The Exosphere scheduler.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1, env EXOSPHERE_HOST)")
    p.add_argument("--port", type=int, help="port (default 50051, 0 picks a free one; env EXOSPHERE_PORT)")
    p.add_argument(
        "--db",
        help="SQLite database file, or postgresql://user@host:port/dbname (default ./exosphere.db, env EXOSPHERE_DB)",
    )
    p.add_argument(
        "--secrets-key-file",
        help="file holding the secrets key (default: beside a SQLite database; required for PostgreSQL unless "
        "EXOSPHERE_SECRETS_KEY is set; env EXOSPHERE_SECRETS_KEY_FILE)",
    )
    p.add_argument(
        "--durability",
        choices=("normal", "full"),
        help="normal: commits survive a crash of the process; full: also a power loss, at an fsync per commit "
        "(default normal, env EXOSPHERE_DURABILITY)",
    )
    p.add_argument("--api-key", help="API key for every namespace (env EXOSPHERE_API_KEY)")
    p.add_argument("--api-keys-file", help="YAML/JSON file of namespace-scoped keys (env EXOSPHERE_API_KEYS_FILE)")
    p.add_argument("--tls-cert", help="PEM certificate chain (env EXOSPHERE_TLS_CERT)")
    p.add_argument("--tls-key", help="PEM private key (env EXOSPHERE_TLS_KEY)")
    p.add_argument(
        "--standby",
        action="store_true",
        help="if another scheduler holds the SQLite database, wait and take over when it stops (env EXOSPHERE_STANDBY)",
    )
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without API keys")
    p.add_argument(
        "--advertise",
        help="PostgreSQL cluster: HOST:PORT the other replicas and runtimes reach this one at (default host:port; "
        "env EXOSPHERE_ADVERTISE)",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="PostgreSQL cluster: number of shards of a NEW database, fixed once it exists (default 64; env "
        "EXOSPHERE_SHARDS)",
    )
    p.add_argument(
        "--shard-lease",
        help="PostgreSQL cluster: how long a replica that stops answering keeps its shards, e.g. PT5S (env "
        "EXOSPHERE_SHARD_LEASE)",
    )
    p.add_argument("--lease", help="runtime lease, e.g. PT5S (env EXOSPHERE_LEASE)")
    p.add_argument("--heartbeat-interval", help="runtime heartbeat interval, e.g. PT1S")
    p.add_argument("--default-timeout", help="state timeout when neither node nor graph sets one, e.g. PT30M")
    p.add_argument(
        "--drain-grace",
        help="on SIGTERM, how long runtimes may finish and report the states they hold before those are requeued, "
        "e.g. PT5S (default 5s; env EXOSPHERE_DRAIN_GRACE)",
    )
    p.add_argument("--log-level", default=os.environ.get("EXOSPHERE_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("EXOSPHERE_LOG_FORMAT", "text"),
        help="text, or json: one object per line (env EXOSPHERE_LOG_FORMAT)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        help="dashboard and /metrics port (default 8080, or a free one with --port 0; 0 picks one; -1 turns it off; "
        "env EXOSPHERE_HTTP_PORT)",
    )
    p.add_argument("--no-http", action="store_true", help="serve no dashboard and no /metrics")
    p.add_argument(
        "--otel",
        action="store_true",
        help="OpenTelemetry traces of triggers and dispatches, exported over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT; "
        "the otel extra; env EXOSPHERE_OTEL)",
    )
    return p


async def _open(config: ServerConfig, stop: asyncio.Event) -> App | None:
    """The App; with ``--standby``, once the scheduler that holds the database is gone (None if told to stop)."""
    from .app import App  # after the check for the `server` extra, in main()

    waiting = False
    while True:
        try:
            return App(config)
        except DatabaseLockedError as exc:
            if not config.standby:
                raise
            if not waiting:
                logger.info("standing by: %s", exc.holder)
                print(f"exosphere-server standing by: {config.db} is held by {exc.holder}", flush=True)  # noqa: T201
                waiting = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STANDBY_POLL_S):
                await stop.wait()
        if stop.is_set():
            return None


async def _serve(config: ServerConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = await _open(config, stop)
    if app is None:
        return 0
    await app.start()
    # A line scripts can wait for; the log line says the same for humans.
    print(f"exosphere-server listening on {config.host}:{app.port}", flush=True)  # noqa: T201
    if app.http_url is not None:
        print(f"exosphere-server dashboard on {app.http_url}", flush=True)  # noqa: T201
    try:
        stopped = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(app.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
        logger.info("stopping")
    finally:
        await app.stop()
    if app.engine.fatal_error is not None:
        logger.critical("stopped after a failed commit; restart to recover from the database")
        return 1
    return 0


def _setup_tracing() -> Callable[[], None]:
    """The global tracer provider, exporting over OTLP/gRPC (configured by the standard OTEL_* variables)."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        sys.exit(f"exosphere-server --otel needs the otel extra: pip install 'exosphere[otel]' ({exc})")
    provider = TracerProvider(resource=Resource.create({"service.name": "exosphere-server"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        sys.exit(f"exosphere-server needs the 'server' extra: pip install 'exosphere[server]' (missing: {names})")
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_format == "json":
        from exosphere.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    try:
        config = ServerConfig.from_env(
            host=args.host,
            port=args.port,
            db=args.db,
            durability=args.durability,
            api_key=args.api_key,
            api_keys_file=args.api_keys_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            secrets_key_file=args.secrets_key_file,
            insecure=args.insecure or None,
            standby=args.standby or None,
            advertise=args.advertise,
            shards=args.shards,
            shard_lease=args.shard_lease,
            lease=args.lease,
            heartbeat_interval=args.heartbeat_interval,
            default_timeout=args.default_timeout,
            drain_grace=args.drain_grace,
            http_port=-1 if args.no_http else args.http_port,
            otel=args.otel or None,
        )
    except ValueError as exc:
        print(f"exosphere-server: invalid configuration: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    shutdown_tracing = _setup_tracing() if config.otel else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(_serve(config))
    except (ExosphereError, StoreError, OSError) as exc:
        print(f"exosphere-server: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(1)
    finally:
        if shutdown_tracing is not None:
            shutdown_tracing()  # flushes the spans still batched
    sys.exit(code)


if __name__ == "__main__":
    main()
