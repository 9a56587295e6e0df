"""Errors raised by Exosphere, shared by the SDK and the scheduler.

Each error travels over gRPC as the status code in its ``status`` attribute, with the class name in the
``exosphere-error`` trailing metadata, so the SDK raises the same class the scheduler raised. The ids an error is
about (its ``subject``: ``run_id``, ``state_id``, ``namespace``, ``graph_name``, ...) travel beside it, one trailer
each, named ``exosphere-error-`` plus the attribute with ``-`` for ``_`` (``exosphere-error-run-id``) and holding
the id percent-encoded as UTF-8 like ``grpc-message``. The SDK rebuilds the error with the same attributes, so
``except RunNotFoundError as e: e.run_id`` works on either side of the wire.

    ExosphereError
    ├── NodeValidationError          invalid node classes given to Runtime(...)
    ├── InvalidArgumentError         a request that can never succeed as written
    │   └── GraphValidationError     a graph template with problems (all of them listed)
    ├── NotFoundError
    │   ├── GraphNotFoundError       .namespace, .graph_name
    │   ├── RunNotFoundError         .run_id
    │   └── StateNotFoundError       .state_id
    ├── ConflictError                a request that contradicts the current state (FAILED_PRECONDITION);
    │                                .namespace, .graph_name, .run_id, .state_id when it is about one
    ├── AuthenticationError          missing or wrong API key
    ├── PermissionDeniedError        a key used outside its namespaces (.namespace)
    ├── ConnectionFailedError        the scheduler cannot be reached (also an OSError)
    ├── ExosphereTimeoutError        a wait ran out of time (also a TimeoutError)
    └── InternalError                a bug: please report it, with its .incident_id
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Self

import grpc

__all__ = [
    "ERROR_TRAILER",
    "SUBJECT_TRAILER_PREFIX",
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

ERROR_TRAILER = "exosphere-error"  # the class name
SUBJECT_TRAILER_PREFIX = "exosphere-error-"  # + one subject attribute, e.g. exosphere-error-run-id
# The metadata of a SchedulerService.Watches stream (docs/protocol.md, the appendix), named once for both sides: the
# header a scheduler opens it with (it serves it), the trailer it ends an idle one with when stopping (what was still
# in flight was not read), and the trailer naming the run a request started, on an end that came before the run's.
WATCHES_HEADER = "exosphere-watches"
WATCHES_UNREAD_TRAILER = "exosphere-watches-unread"
RUN_ID_TRAILER = "exosphere-run-id"


class ExosphereError(Exception):
    """Root of every Exosphere error."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    # The attributes naming what the error is about; they travel with it over gRPC.
    subject_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def subject(self) -> dict[str, str]:
        """The ids this error is about, by attribute name; only those that are set."""
        return {name: value for name in self.subject_fields if (value := getattr(self, name, None)) is not None}

    @classmethod
    def from_wire(cls, message: str, subject: Mapping[str, str]) -> Self:
        """The error as raised on the other side of the wire: its exact message, and the ids it was about.

        An id the sender did not send (an older scheduler) is ``""`` when the constructor requires it and ``None``
        when it is optional.
        """
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        for name in cls.subject_fields:
            setattr(error, name, subject.get(name, getattr(cls, name, "")))
        return error

    def with_message(self, message: str) -> Self:
        """The same error about the same ids, with another message (to add where it happened, for example)."""
        return self.from_wire(message, self.subject)

    def __reduce__(self) -> tuple[object, ...]:
        # Exception pickles as cls(*args), which does not fit constructors that take ids (copy uses this too).
        return type(self).from_wire, (str(self), self.subject), self.__dict__


class NodeValidationError(ExosphereError, TypeError):
    """Raised by ``Runtime(...)`` when node classes are invalid; lists every problem."""

    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("Following errors while validating nodes:\n" + "\n".join(f"  - {e}" for e in errors))
        self.errors = list(errors)

    @classmethod
    def from_wire(cls, message: str, subject: Mapping[str, str]) -> Self:
        error = super().from_wire(message, subject)
        error.errors = [line.removeprefix("  - ") for line in message.splitlines()[1:]]
        return error


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

    @classmethod
    def from_wire(cls, message: str, subject: Mapping[str, str]) -> Self:
        return cls(message)


class NotFoundError(ExosphereError, LookupError):
    """Raised when something asked for does not exist."""

    status = grpc.StatusCode.NOT_FOUND


class GraphNotFoundError(NotFoundError):
    """Raised when a graph template does not exist in the namespace; ``namespace`` and ``graph_name`` name it."""

    subject_fields = ("namespace", "graph_name")

    def __init__(self, namespace: str, graph_name: str) -> None:
        super().__init__(f"graph {graph_name!r} not found in namespace {namespace!r}")
        self.namespace = namespace
        self.graph_name = graph_name


class RunNotFoundError(NotFoundError):
    """Raised when a run id is unknown; ``run_id`` is that id."""

    subject_fields = ("run_id",)

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class StateNotFoundError(NotFoundError):
    """Raised when a state id is unknown; ``state_id`` is that id."""

    subject_fields = ("state_id",)

    def __init__(self, state_id: str) -> None:
        super().__init__(f"state {state_id!r} not found")
        self.state_id = state_id


class ConflictError(ExosphereError):
    """Raised when a request contradicts the current state, for example deleting a graph with pending runs.

    ``namespace``, ``graph_name``, ``run_id`` and ``state_id`` name what it is about, when it is about one (else
    ``None``).
    """

    status = grpc.StatusCode.FAILED_PRECONDITION
    subject_fields = ("namespace", "graph_name", "run_id", "state_id")
    namespace: str | None = None
    graph_name: str | None = None
    run_id: str | None = None
    state_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        namespace: str | None = None,
        graph_name: str | None = None,
        run_id: str | None = None,
        state_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.graph_name = graph_name
        self.run_id = run_id
        self.state_id = state_id


class AuthenticationError(ExosphereError, PermissionError):
    """Raised when the API key is missing or wrong."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ExosphereError, PermissionError):
    """Raised when an API key is used outside its namespaces; ``namespace`` is the one refused, when known."""

    status = grpc.StatusCode.PERMISSION_DENIED
    subject_fields = ("namespace",)
    namespace: str | None = None

    def __init__(self, message: str, *, namespace: str | None = None) -> None:
        super().__init__(message)
        self.namespace = namespace


class ConnectionFailedError(ExosphereError, OSError):
    """Raised when the scheduler cannot be reached."""

    status = grpc.StatusCode.UNAVAILABLE


class ExosphereTimeoutError(ExosphereError, TimeoutError):
    """Raised when a wait or a call runs out of time."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(ExosphereError):
    """Raised for an unexpected failure inside the scheduler; ``incident_id`` finds it in the scheduler's log."""

    subject_fields = ("incident_id",)
    incident_id: str | None = None

    def __init__(self, message: str, *, incident_id: str | None = None) -> None:
        super().__init__(message)
        self.incident_id = incident_id


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
    # A call the scheduler cancelled (it is stopping: SIGTERM, a rolling restart) is worth trying again elsewhere.
    grpc.StatusCode.CANCELLED: ConnectionFailedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExosphereTimeoutError,
}


def error_class(name: str | None, status: grpc.StatusCode) -> type[ExosphereError]:
    """The error class for a class name from trailing metadata, else for a gRPC status code."""
    if name and name in _BY_NAME:
        return _BY_NAME[name]
    return _BY_STATUS.get(status, InternalError)
