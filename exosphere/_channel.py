"""grpc.aio channels, auth metadata, backoff, and translation of gRPC errors into Exosphere errors."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

import grpc

from exosphere.config import ClientConfig
from exosphere.errors import (
    ERROR_TRAILER,
    SUBJECT_TRAILER_PREFIX,
    ExosphereError,
    InvalidArgumentError,
    error_class,
)

__all__ = [
    "CALL_TIMEOUT_S",
    "MAX_MESSAGE_BYTES",
    "Backoff",
    "error_from_status",
    "metadata",
    "open_channel",
    "translate_errors",
]

# Deadline of one unary call (and of a trigger made on the Watches stream).
CALL_TIMEOUT_S = 30.0
# Large fan-outs travel in big messages; the scheduler sets the same limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Each channel keeps its own connections: a shared subchannel stuck in reconnect backoff (left by another
    # channel to a scheduler that was restarting) would otherwise fail this channel's first calls at once.
    ("grpc.use_local_subchannel_pool", 1),
]


def open_channel(config: ClientConfig) -> grpc.aio.Channel:
    """A channel to the scheduler; TLS when a CA file is configured (InvalidArgumentError when it is unreadable)."""
    if config.tls_ca_file:
        try:
            root_certificates = Path(config.tls_ca_file).read_bytes()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read TLS CA file {config.tls_ca_file}: {exc.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in root_certificates:
            raise InvalidArgumentError(f"TLS CA file {config.tls_ca_file} holds no PEM certificate")
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.aio.secure_channel(config.address, credentials, options=_CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(config.address, options=_CHANNEL_OPTIONS)


def metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the API key, if any."""
    return (("x-api-key", config.api_key),) if config.api_key else ()


def to_exosphere_error(exc: grpc.aio.AioRpcError) -> ExosphereError:
    """The Exosphere error a failed RPC stands for, with the ids the scheduler sent beside it."""
    return error_from_status(exc.code(), exc.details() or "", exc.trailing_metadata() or ())


def error_from_status(
    code: grpc.StatusCode, details: str, trailers: Iterable[tuple[str, str | bytes]]
) -> ExosphereError:
    """The Exosphere error a status stands for: its code, message, and trailers naming the error's class and ids
    (a failed call's, or a request's end on a Watches stream)."""
    name = None
    subject = {}
    for key, value in trailers:
        text = value if isinstance(value, str) else value.decode(errors="replace")
        if key == ERROR_TRAILER:
            name = text
        elif key.startswith(SUBJECT_TRAILER_PREFIX):
            subject[key.removeprefix(SUBJECT_TRAILER_PREFIX).replace("-", "_")] = unquote(text)
    cls = error_class(name, code)
    message = details or code.name
    if code == grpc.StatusCode.UNAVAILABLE and name is None:
        message = f"scheduler unavailable: {message}"
    return cls.from_wire(message, subject)


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn ``AioRpcError`` into the matching :class:`ExosphereError` subclass."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise to_exosphere_error(exc) from exc


class Backoff:
    """Capped exponential backoff with full jitter, for reconnects."""

    def __init__(self, *, initial_s: float = 0.1, maximum_s: float = 10.0) -> None:
        self._initial_s = initial_s
        self._maximum_s = maximum_s
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay_s(self) -> float:
        cap = min(self._maximum_s, self._initial_s * (2**self._attempt))
        self._attempt += 1
        return random.uniform(cap / 2, cap)
