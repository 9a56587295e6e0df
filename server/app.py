"""Wires store, engine and the gRPC server together; owns start() and stop()."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exosphere.errors import InvalidArgumentError
from exosphere.v1 import runtime_pb2, scheduler_pb2, scheduler_pb2_grpc

from .api import SchedulerApi
from .auth import ApiKey, Authenticator, AuthInterceptor, load_keys_file
from .commit import INLINE_MAX
from .config import ServerConfig
from .cron import CronScheduler
from .dblock import DatabaseLock
from .decode import DecodeInterceptor
from .engine import Engine, EngineSettings
from .forward import Forwarder
from .metrics import RpcCounter
from .runtime_api import RuntimeApi, add_runtime_service
from .secrets import SecretBox, SecretsKeyError, load_or_create_key, load_shared_key
from .sqlite_schema import check_path
from .sqlite_store import SqliteStore
from .store import InMemoryStore, Store, WriteBatch
from .web import HttpServer
from .wire import decode_stored_schema

if TYPE_CHECKING:
    from .cluster import ClusterMember
    from .tracing import Tracing

__all__ = ["App"]

logger = logging.getLogger(__name__)

# Biggest message either side accepts; big results are paged or chunked well below it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_pair(key: str, cert: str) -> tuple[bytes, bytes]:
    """The PEM private key and certificate chain, checked to parse and to belong together.

    Raises InvalidArgumentError naming the file, so a bad path or PEM stops the scheduler before it opens anything
    (gRPC would only say that it could not bind).
    """

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read TLS {what} {path}: {exc.strerror}") from None

    key_pem, cert_pem = read(key, "key"), read(cert, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise InvalidArgumentError(f"TLS certificate {cert} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"TLS key {key} is not an unencrypted PEM private key: {exc}") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private_key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise InvalidArgumentError(f"TLS key {key} does not match the first certificate in {cert}")
    return key_pem, cert_pem


def _tracing() -> Tracing:
    try:
        from .tracing import Tracing
    except ImportError as exc:
        raise InvalidArgumentError(f"--otel needs the otel extra: pip install 'exosphere[otel]' ({exc})") from None
    return Tracing()


def _open_postgres(config: ServerConfig) -> Store:
    """The store for a ``postgresql://`` URL (asyncpg is imported only then)."""
    try:
        from .pg_store import PostgresStore
    except ImportError as exc:
        raise InvalidArgumentError(
            f"--db {config.db_label} needs the PostgreSQL driver: pip install 'exosphere[postgres]' ({exc})"
        ) from None
    return PostgresStore(
        config.db, durable=config.durability == "full", shards=config.shards, transaction_timeout=config.shard_lease
    )


# A value sealed with the cluster's secrets key by its first replica: a replica whose key cannot open it refuses
# to join (it could not read the graphs' secrets the others saved, nor they its).
_KEY_CHECK = "cluster:secrets-key-check"


def check_shared_key(store: Store, box: SecretBox, where: str) -> None:
    sealed = store.get_kv(_KEY_CHECK)
    if sealed is None:
        store.write(WriteBatch(kv={_KEY_CHECK: box.encrypt("exosphere", _KEY_CHECK)}))
        return
    try:
        box.decrypt(sealed, _KEY_CHECK)
    except SecretsKeyError:
        raise InvalidArgumentError(
            f"the secrets key given to this scheduler is not the key of the cluster on {where} (the first replica's "
            "EXOSPHERE_SECRETS_KEY); give every replica the same key"
        ) from None


class App:
    """The scheduler: ``await App(config).start()`` serves on ``config.host:config.port`` (port 0 picks one)."""

    def __init__(self, config: ServerConfig, *, store: Store | None = None) -> None:
        self.config = config
        keys = []
        if config.api_key:
            keys.append(ApiKey(config.api_key, frozenset({"*"})))
        if config.api_keys_file:
            keys.extend(load_keys_file(config.api_keys_file))
        if not keys and not config.insecure and not _is_loopback(config.host):
            raise InvalidArgumentError(
                f"refusing to listen on {config.host} without an API key; configure --api-key or --api-keys-file, "
                "or pass --insecure"
            )
        if bool(config.tls_cert) != bool(config.tls_key):
            raise InvalidArgumentError("--tls-cert and --tls-key must be given together")
        self._tls_pair = _read_pair(config.tls_key, config.tls_cert) if config.tls_cert and config.tls_key else None
        self.auth = Authenticator(keys)
        key_file = None if isinstance(store, InMemoryStore) else Path(f"{config.db}.key")
        given_key_file = Path(config.secrets_key_file) if config.secrets_key_file else None
        self._db_lock: DatabaseLock | None = None
        with contextlib.ExitStack() as undo:  # a failure below undoes what was opened, in reverse
            if store is None and config.postgres:
                # Schedulers that share a PostgreSQL database share its secrets: the key must be given, and a
                # missing one is said before connecting. PostgreSQL itself serializes them (no lock file).
                key = load_shared_key(given_key_file, config.db_label)
                store = _open_postgres(config)
                undo.callback(store.close)
                check_shared_key(store, SecretBox(key), config.db_label)
            else:
                if store is None:
                    # One scheduler per SQLite file (server/dblock.py); a store given by the caller is the caller's
                    # business. The path is checked before the lock file is created beside it, and the database
                    # before the key file, so a file that cannot be used gets no key file beside it.
                    check_path(Path(config.db))
                    self._db_lock = DatabaseLock(config.db)
                    self._db_lock.acquire()
                    undo.callback(self._db_lock.release)
                    store = SqliteStore(config.db, durable=config.durability == "full")
                    undo.callback(store.close)
                key = load_or_create_key(given_key_file or key_file)
            secret_box = SecretBox(key)
            undo.pop_all()
        self.store = store
        self.engine = Engine(
            self.store,
            secret_box=secret_box,
            settings=EngineSettings(
                heartbeat_interval_ms=int(config.heartbeat_interval.total_seconds() * 1000),
                lease_ms=int(config.lease.total_seconds() * 1000),
                default_timeout_ms=int(config.default_timeout.total_seconds() * 1000),
                # SQLite without an fsync per commit: a small commit is cheaper than two hops to a thread.
                inline_commits=INLINE_MAX if isinstance(store, SqliteStore) and store.synchronous == "NORMAL" else 0,
            ),
            decode_schema=decode_stored_schema,
            # On PostgreSQL several replicas share the shards (server/cluster.py); SQLite is a cluster of one.
            shard_count=getattr(self.store, "shard_count", 1),
            own_all_shards=not config.postgres,
        )
        if config.otel:
            self.engine.enable_tracing(_tracing())
        self.cluster: ClusterMember | None = None
        self._forwarder: Forwarder | None = None
        self.cron = CronScheduler(self.engine)
        self.engine.on_graph_saved = self.cron.reload
        # Set when the scheduler must stop on its own (a failed commit); `exosphere-server` then exits non-zero.
        self.failed = asyncio.Event()
        self.engine.on_fatal = lambda exc: self.failed.set()
        self._server: grpc.aio.Server | None = None
        self._started = False
        self._stopped = False
        self._health = health.aio.HealthServicer()
        self._api: SchedulerApi | None = None
        self.port = 0
        # The dashboard and /metrics (server/web); http_port stays 0 when HTTP is off.
        self.rpcs = RpcCounter()
        self._http: HttpServer | None = None
        self.http_port = 0

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> int:
        """Recover state, bind, serve. Returns the bound port. On failure, whatever started is stopped."""
        try:
            return await self._start()
        except BaseException:
            await self._shutdown(self._server, 0)
            raise

    async def _start(self) -> int:
        await self.engine.start()
        await self.cron.start()
        server = grpc.aio.server(
            interceptors=[self.rpcs, AuthInterceptor(self.auth), DecodeInterceptor()],
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._server = server
        # Cluster mode forwards cancel and retry to the run's owner, trusting the same certificate as this server.
        self._forwarder = Forwarder(root_certificates=self._tls_pair[1] if self._tls_pair is not None else None)
        self._api = SchedulerApi(self.engine, self.auth, forwarder=self._forwarder)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(self._api, server)
        add_runtime_service(RuntimeApi(self.engine, self.auth), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
                runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        target = f"{self.config.host}:{self.config.port}"
        if self._tls_pair is not None:
            credentials = grpc.ssl_server_credentials([self._tls_pair])
            self.port = server.add_secure_port(target, credentials)
        else:
            self.port = server.add_insecure_port(target)
        if self.port == 0:
            raise OSError(f"could not bind {target}")
        await server.start()
        self._started = True
        http_port = self.config.http_port_to_bind()
        if http_port is not None:
            tls = (self.config.tls_cert, self.config.tls_key) if self.config.tls_cert and self.config.tls_key else None
            self._http = HttpServer(
                self.engine,
                self.auth,
                self.rpcs,
                tls=tls,
                replicas=lambda: self.cluster.view if self.cluster is not None else [],
                forwarder=self._forwarder,
            )
            self.http_port = await self._http.start(self.config.host, http_port)
        for service in ("", "exosphere.v1.SchedulerService", "exosphere.v1.RuntimeService"):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.config.postgres:
            from .cluster import ClusterMember  # asyncpg is imported only on PostgreSQL

            self.cluster = ClusterMember(
                self.config.db,
                self.engine,
                replica_id=uuid.uuid4().hex,
                address=self.config.advertise or f"{self.config.host}:{self.port}",
                lease=self.config.shard_lease,
                heartbeat=self.config.shard_lease / 5,
            )
            await self.cluster.start()
        logger.info("exosphere-server listening on %s:%d db=%s", self.config.host, self.port, self.config.db_label)
        if self._http is not None:
            logger.info("dashboard and /metrics on %s", self.http_url)
        return self.port

    @property
    def http_url(self) -> str | None:
        """Where the dashboard is served, or None when HTTP is off."""
        if self._http is None:
            return None
        scheme = "https" if self._tls_pair is not None else "http"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{scheme}://{host}:{self.http_port}/"

    async def stop(self, grace: float | None = None) -> None:
        """Drain the runtimes (``drain_grace``), stop accepting, let calls finish within ``grace`` seconds, commit,
        close the store. A ``grace`` given also bounds the drain. Idempotent."""
        if self._stopped:
            return
        drain_s = self.config.drain_grace.total_seconds()
        if grace is None:
            grace = self.config.shutdown_grace.total_seconds()
        else:
            drain_s = min(drain_s, grace)
        await self._shutdown(self._server, grace, drain_s)

    async def _shutdown(self, server: grpc.aio.Server | None, grace: float, drain_s: float = 0.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server = None
        try:
            if self._http is not None:
                await self._http.stop()
            if self._api is not None:  # streams outlive runs: they end now, their clients watch again
                self._api.stop_watches()
            if server is not None and self._started:
                await self._health.enter_graceful_shutdown()
                # Runtimes finish what they hold within the grace (their results are committed), then what is
                # left goes back to the queue, before a cluster replica hands its shards over.
                await self.engine.runtimes.drain(drain_s)
                if self.cluster is not None:
                    await self.cluster.stop()  # hand the shards over at once
            if server is not None:  # also one that bound but failed to start the rest: it must not outlive the loop
                await server.stop(grace)
        finally:
            if self._forwarder is not None:
                await self._forwarder.close()
            await self.cron.stop()
            await self.engine.stop()
            self.store.close()
            if self._db_lock is not None:
                self._db_lock.release()
            if self._started:  # a start that failed has said why, in one line
                logger.info("exosphere-server stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
