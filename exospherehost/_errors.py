"""Our errors, worded and typed as exospherehost's: tests that match on its messages keep passing."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc

from exosphere import errors as _ours

__all__ = ["GraphValidationFailedError", "NodeValidationError", "http_errors"]


class NodeValidationError(_ours.NodeValidationError, ValueError):
    """Invalid node classes given to ``Runtime(...)``: a ``ValueError``, as exospherehost raises."""

    def __init__(self, errors: Sequence[str]) -> None:
        _ours.ExosphereError.__init__(self, "Following errors while validating nodes: " + "\n".join(errors))
        self.errors = list(errors)


class GraphValidationFailedError(_ours.GraphValidationError):
    """``upsert_graph`` found problems in the graph (after waiting for nodes still being registered)."""

    def __init__(self, errors: Sequence[str]) -> None:
        _ours.InvalidArgumentError.__init__(self, f"Graph validation failed: INVALID and errors: {list(errors)}")
        self.errors = list(errors)


# The HTTP status exospherehost's state manager answers with, for the status our scheduler answered with.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@asynccontextmanager
async def http_errors(action: str) -> AsyncIterator[None]:
    """Re-raise our error as the same class with exospherehost's wording: ``Failed to <action>: <status> <text>``."""
    try:
        yield
    except _ours.ExosphereError as exc:
        reworded = copy.copy(exc)
        reworded.args = (f"Failed to {action}: {_HTTP_STATUS.get(exc.status, 500)} {exc}",)
        raise reworded from exc
