"""The closed sets of the state machine: state and run statuses, result kinds, and the groups the engine tests.

``StrEnum`` members are ``str``: they compare equal to the names stored in the database and on the wire, so the
store and ``server/wire.py`` need no conversion table beyond the protobuf enum's prefix.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "FAILED_STATE_STATUSES",
    "LIVE_STATE_STATUSES",
    "RETRYABLE_STATE_STATUSES",
    "TERMINAL_STATE_STATUSES",
    "ResultKind",
    "RunStatus",
    "StateStatus",
]


class StateStatus(StrEnum):
    """Where a state is in its life (``StateStatus`` of common.proto without its prefix)."""

    CREATED = "CREATED"  # waiting in a ready queue (or for its start time)
    QUEUED = "QUEUED"  # dispatched to a runtime; never committed (the database keeps CREATED)
    EXECUTED = "EXECUTED"
    SUCCESS = "SUCCESS"
    ERRORED = "ERRORED"
    RETRY_CREATED = "RETRY_CREATED"  # failed, and a new attempt was created
    PRUNED = "PRUNED"
    NEXT_CREATED_ERROR = "NEXT_CREATED_ERROR"  # succeeded, but its next states could not be created
    TIMEDOUT = "TIMEDOUT"
    CANCELLED = "CANCELLED"


class RunStatus(StrEnum):
    """A run as a whole: PENDING until no state of it can change."""

    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ResultKind(StrEnum):
    """What a runtime answered for one dispatched state."""

    EXECUTED = "executed"
    ERRORED = "errored"
    PRUNED = "pruned"
    REQUEUE = "requeue"


LIVE_STATE_STATUSES = frozenset({StateStatus.CREATED, StateStatus.QUEUED, StateStatus.EXECUTED})
TERMINAL_STATE_STATUSES = frozenset(StateStatus) - LIVE_STATE_STATUSES
FAILED_STATE_STATUSES = frozenset(
    {StateStatus.ERRORED, StateStatus.NEXT_CREATED_ERROR, StateStatus.TIMEDOUT, StateStatus.CANCELLED}
)
# A manual retry may create a new attempt of these (the last attempt only).
RETRYABLE_STATE_STATUSES = frozenset({StateStatus.ERRORED, StateStatus.TIMEDOUT, StateStatus.NEXT_CREATED_ERROR})
