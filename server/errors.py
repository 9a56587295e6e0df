"""Exosphere errors to gRPC statuses, once, at the boundary.

An :class:`ExosphereError` travels as its status code and message, with its class name and the ids it is about as
trailing metadata (the format is in ``exosphere/errors.py``). Anything else is a bug of the scheduler: it is logged
with its traceback and an incident id, and the client gets INTERNAL with that id and nothing of the exception's
text. Client input is never judged here: the code that decodes it raises ``InvalidArgumentError`` itself.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn
from urllib.parse import quote

import grpc

from exosphere.errors import ERROR_TRAILER, SUBJECT_TRAILER_PREFIX, ExosphereError, InternalError

__all__ = ["abort_with", "error_trailers", "status_from_errors"]

logger = logging.getLogger(__name__)


# gRPC carries the status message in trailers, percent-encoded (a non-ASCII byte takes 3), and peers refuse
# trailers above 8 KiB: long messages are cut to fit. The ids an error carries share that budget.
MAX_ENCODED_MESSAGE = 6000
MAX_ENCODED_SUBJECT = 2000
# Metadata values must be printable ASCII; like grpc-message, everything else (and '%', and the space that some
# proxies trim) is percent-encoded UTF-8.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def _encoded_len(text: str) -> int:
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode())


def bounded(message: str, limit: int = MAX_ENCODED_MESSAGE) -> str:
    """``message``, cut to fit ``limit`` bytes once encoded in a gRPC status, saying how much was left out."""
    if _encoded_len(message) <= limit:
        return message
    size = 0
    for index, char in enumerate(message):
        size += _encoded_len(char)
        if size > limit - 60:
            return message[:index] + f"... ({len(message) - index} more characters)"
    return message


def error_trailers(exc: ExosphereError) -> tuple[tuple[str, str], ...]:
    """The class name and the subject ids of ``exc``, as trailing metadata.

    An empty id, or one that would push the ids past ``MAX_ENCODED_SUBJECT`` (only a request naming something absurd
    does that), is left out; the client then sees ``""`` or ``None`` for it.
    """
    trailers = [(ERROR_TRAILER, type(exc).__name__)]
    size = 0
    for name, value in exc.subject.items():
        encoded = quote(value.encode("utf-8", "surrogatepass"), safe=_SAFE)
        if not encoded or size + len(encoded) > MAX_ENCODED_SUBJECT:
            continue
        size += len(encoded)
        trailers.append((SUBJECT_TRAILER_PREFIX + name.replace("_", "-"), encoded))
    return tuple(trailers)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: ExosphereError) -> NoReturn:
    trailers = error_trailers(exc)
    subject_size = sum(len(value) for key, value in trailers if key != ERROR_TRAILER)
    await context.abort(exc.status, bounded(str(exc), MAX_ENCODED_MESSAGE - subject_size), trailing_metadata=trailers)
    raise AssertionError("unreachable")  # context.abort always raises


def internal_error(exc: BaseException) -> InternalError:
    """Log ``exc`` (a bug) with its traceback under a new incident id; the error to send instead of it."""
    incident_id = uuid.uuid4().hex[:16]
    logger.error("internal error incident_id=%s", incident_id, exc_info=exc)
    return InternalError(
        f"internal error in the scheduler (incident {incident_id}); its log has the details", incident_id=incident_id
    )


@asynccontextmanager
async def status_from_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Map ExosphereError to its status; any other exception is a bug, logged and reported as INTERNAL."""
    try:
        yield
    except ExosphereError as exc:
        await abort_with(context, exc)
    except grpc.aio.AbortError:
        raise  # the handler already chose the status
    except Exception as exc:
        if context.done():  # the call already ended (the peer left, the server is stopping): no one to tell
            logger.debug("call ended before its handler finished: %r", exc)
            return
        await abort_with(context, internal_error(exc))
