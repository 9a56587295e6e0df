"""Exosphere errors to gRPC statuses, once, at the boundary."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc

from exosphere.errors import ExosphereError, InvalidArgumentError

__all__ = ["abort_with", "status_from_errors"]

logger = logging.getLogger(__name__)


# gRPC carries the status message in trailers, percent-encoded (a non-ASCII byte takes 3), and peers refuse
# trailers above 8 KiB: long messages are cut to fit.
MAX_ENCODED_MESSAGE = 6000


def _encoded_len(text: str) -> int:
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode())


def bounded(message: str) -> str:
    """``message``, cut to fit a gRPC status once encoded, saying how much was left out."""
    if _encoded_len(message) <= MAX_ENCODED_MESSAGE:
        return message
    size = 0
    for index, char in enumerate(message):
        size += _encoded_len(char)
        if size > MAX_ENCODED_MESSAGE - 60:
            return message[:index] + f"... ({len(message) - index} more characters)"
    return message


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: ExosphereError) -> NoReturn:
    await context.abort(exc.status, bounded(str(exc)), trailing_metadata=(("exosphere-error", type(exc).__name__),))
    raise AssertionError("unreachable")  # context.abort always raises


@asynccontextmanager
async def status_from_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Map ExosphereError to its status; any other exception is a bug, reported as INTERNAL without a crash."""
    try:
        yield
    except ExosphereError as exc:
        await abort_with(context, exc)
    except (ValueError, TypeError) as exc:  # pydantic and protobuf validation of client input
        await abort_with(context, InvalidArgumentError(str(exc)))
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        logger.exception("internal error")
        await context.abort(grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(exc).__name__}: {exc}"))
