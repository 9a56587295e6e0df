"""Scheduler settings: command-line options first, ``EXOSPHERE_*`` environment variables second."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict

__all__ = ["DEFAULT_HTTP_PORT", "ServerConfig"]

DEFAULT_HTTP_PORT = 8080


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
    }
    host: str = "127.0.0.1"
    port: int = 50051
    db: str = "./exosphere.db"
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
    # SQLite: wait for the scheduler holding the database to stop, then take over (instead of refusing to start).
    standby: bool = False
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
