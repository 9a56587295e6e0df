"""Scheduler settings: command-line options first, ``EXOSPHERE_*`` environment variables second."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import ClassVar, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_HTTP_PORT", "ServerConfig", "describe_dsn", "is_postgres_dsn"]

DEFAULT_HTTP_PORT = 8080


def is_postgres_dsn(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def describe_dsn(dsn: str) -> str:
    """``user@host:port/database`` for messages and logs: never the password."""
    parts = urlsplit(dsn)
    user = unquote(parts.username or "")
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    database = unquote(parts.path.lstrip("/")) or user
    return f"{user + '@' if user else ''}{parts.hostname or 'localhost'}:{port}/{database}"


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ENV: ClassVar[dict[str, str]] = {
        "EXOSPHERE_HOST": "host",
        "EXOSPHERE_PORT": "port",
        "EXOSPHERE_DB": "db",
        "EXOSPHERE_DURABILITY": "durability",
        "EXOSPHERE_API_KEY": "api_key",
        "EXOSPHERE_API_KEYS_FILE": "api_keys_file",
        "EXOSPHERE_TLS_CERT": "tls_cert",
        "EXOSPHERE_TLS_KEY": "tls_key",
        "EXOSPHERE_SECRETS_KEY_FILE": "secrets_key_file",
        "EXOSPHERE_HEARTBEAT_INTERVAL": "heartbeat_interval",
        "EXOSPHERE_LEASE": "lease",
        "EXOSPHERE_DEFAULT_TIMEOUT": "default_timeout",
        "EXOSPHERE_STANDBY": "standby",
        "EXOSPHERE_HTTP_PORT": "http_port",
        "EXOSPHERE_OTEL": "otel",
        "EXOSPHERE_ADVERTISE": "advertise",
        "EXOSPHERE_SHARDS": "shards",
        "EXOSPHERE_SHARD_LEASE": "shard_lease",
        "EXOSPHERE_DRAIN_GRACE": "drain_grace",
    }
    host: str = "127.0.0.1"
    port: int = 50051
    db: str = "./exosphere.db"  # a SQLite file, or postgresql://user@host:port/dbname
    # normal: a commit survives a crash of the process; full: also a power loss or OS crash (an fsync per commit).
    durability: Literal["normal", "full"] = "normal"
    api_key: str | None = None
    api_keys_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False
    secrets_key_file: str | None = None
    # A runtime sends a heartbeat this often when idle; one silent for `lease` loses its states to the queue.
    # 1s/5s: a crashed runtime's work moves within about 5s, while a busy loop or GC pause of a few seconds
    # does not cost a runtime its states.
    heartbeat_interval: timedelta = timedelta(seconds=1)
    lease: timedelta = timedelta(seconds=5)
    default_timeout: timedelta = timedelta(minutes=30)
    shutdown_grace: timedelta = timedelta(seconds=10)
    # On stop, runtimes are sent Drain and their results accepted this long; what they still hold is then requeued.
    drain_grace: timedelta = Field(default=timedelta(seconds=5), ge=timedelta(0))
    # SQLite: wait for the scheduler holding the database to stop, then take over (instead of refusing to start).
    standby: bool = False
    # PostgreSQL (cluster mode): how the other replicas and runtimes reach this one (default host:port), the number
    # of shards of a new database (fixed once it exists), and how long a dead replica keeps its shards.
    advertise: str | None = None
    shards: int = Field(default=64, ge=1, le=4096)
    shard_lease: timedelta = timedelta(seconds=5)

    @property
    def postgres(self) -> bool:
        return is_postgres_dsn(self.db)

    @property
    def db_label(self) -> str:
        """The database for logs and messages (a PostgreSQL DSN without its password)."""
        return describe_dsn(self.db) if self.postgres else self.db

    # The dashboard and /metrics (server/web). None: 8080, or a free port when `port` is 0 (tests, scripts);
    # 0 picks a free one; -1 turns HTTP off.
    http_port: int | None = None
    # OpenTelemetry traces of triggers and dispatches (the `otel` extra; server/tracing.py), on the global tracer
    # provider, which `exosphere-server --otel` sets up to export over OTLP.
    otel: bool = False

    def http_port_to_bind(self) -> int | None:
        """The HTTP port to bind (0: any free one), or None when HTTP is off."""
        if self.http_port is None:
            return 0 if self.port == 0 else DEFAULT_HTTP_PORT
        return None if self.http_port < 0 else self.http_port

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: object) -> Self:
        values: dict[str, object] = {f: environ[e] for e, f in cls.ENV.items() if environ.get(e)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
