"""Errors raised by Exosphere, shared by the SDK and the scheduler.

Each error travels over gRPC as the status code in its ``status`` attribute, with the class name in the
``exosphere-error`` trailing metadata, so the SDK raises the same class the scheduler raised.

    ExosphereError
    ├── NodeValidationError          invalid node classes given to Runtime(...)
    ├── InvalidArgumentError         a request that can never succeed as written
    │   └── GraphValidationError     a graph template with problems (all of them listed)
    ├── NotFoundError
    │   ├── GraphNotFoundError
    │   ├── RunNotFoundError
    │   └── StateNotFoundError
    ├── ConflictError                a request that contradicts the current state (FAILED_PRECONDITION)
    ├── AuthenticationError          missing or wrong API key
    ├── PermissionDeniedError        a key used outside its namespaces
    ├── ConnectionFailedError        the scheduler cannot be reached (also an OSError)
    ├── ExosphereTimeoutError        a wait ran out of time (also a TimeoutError)
    └── InternalError                a bug: please report it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "ConnectionFailedError",
    "ExosphereError",
    "ExosphereTimeoutError",
    "GraphNotFoundError",
    "GraphValidationError",
    "InternalError",
    "InvalidArgumentError",
    "NodeValidationError",
    "NotFoundError",
    "PermissionDeniedError",
    "RunNotFoundError",
    "StateNotFoundError",
    "error_class",
]


class ExosphereError(Exception):
    """Root of every Exosphere error."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class NodeValidationError(ExosphereError, TypeError):
    """Raised by ``Runtime(...)`` when node classes are invalid; lists every problem."""

    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("Following errors while validating nodes:\n" + "\n".join(f"  - {e}" for e in errors))
        self.errors = list(errors)


class InvalidArgumentError(ExosphereError, ValueError):
    """Raised for a request that can never succeed as written."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class GraphValidationError(InvalidArgumentError):
    """Raised when a graph template is saved with problems; ``errors`` lists all of them."""

    def __init__(self, errors: Sequence[str] | str) -> None:
        if isinstance(errors, str):  # rebuilt from a gRPC status message
            message = errors
            lines = [line.removeprefix("  - ") for line in errors.splitlines()[1:]]
        else:
            lines = list(errors)
            message = f"graph template has {len(lines)} problem(s):\n" + "\n".join(f"  - {e}" for e in lines)
        super().__init__(message)
        self.errors = lines


class NotFoundError(ExosphereError, LookupError):
    """Raised when something asked for does not exist."""

    status = grpc.StatusCode.NOT_FOUND


class GraphNotFoundError(NotFoundError):
    """Raised when a graph template does not exist in the namespace."""


class RunNotFoundError(NotFoundError):
    """Raised when a run id is unknown."""


class StateNotFoundError(NotFoundError):
    """Raised when a state id is unknown."""


class ConflictError(ExosphereError):
    """Raised when a request contradicts the current state, for example deleting a graph with pending runs."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class AuthenticationError(ExosphereError, PermissionError):
    """Raised when the API key is missing or wrong."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ExosphereError, PermissionError):
    """Raised when an API key is used outside its namespaces."""

    status = grpc.StatusCode.PERMISSION_DENIED


class ConnectionFailedError(ExosphereError, OSError):
    """Raised when the scheduler cannot be reached."""

    status = grpc.StatusCode.UNAVAILABLE


class ExosphereTimeoutError(ExosphereError, TimeoutError):
    """Raised when a wait or a call runs out of time."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(ExosphereError):
    """Raised for an unexpected failure inside the scheduler."""


_BY_NAME: dict[str, type[ExosphereError]] = {
    cls.__name__: cls
    for cls in (
        AuthenticationError,
        ConflictError,
        ConnectionFailedError,
        ExosphereError,
        ExosphereTimeoutError,
        GraphNotFoundError,
        GraphValidationError,
        InternalError,
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
        RunNotFoundError,
        StateNotFoundError,
    )
}

_BY_STATUS: dict[grpc.StatusCode, type[ExosphereError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: ConnectionFailedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExosphereTimeoutError,
}


def error_class(name: str | None, status: grpc.StatusCode) -> type[ExosphereError]:
    """The error class for a class name from trailing metadata, else for a gRPC status code."""
    if name and name in _BY_NAME:
        return _BY_NAME[name]
    return _BY_STATUS.get(status, InternalError)
