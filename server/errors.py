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


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: ExosphereError) -> NoReturn:
    await context.abort(exc.status, str(exc), trailing_metadata=(("exosphere-error", type(exc).__name__),))
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
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
