"""Results the scheduler cannot match to a dispatch: why, answered to the runtime, counted, and logged (rate-limited).

A result is matched by its ``dispatch_id`` against the dispatches outstanding on the stream it arrived on, then by
``state_id`` and ``attempt``. One that does not match changes nothing and returns no credit; the runtime is told
which and why (``SchedulerMessage.results_rejected``), so a runtime with a bug (a key spelled in another case, an
attempt not echoed) finds out at its first result instead of when its states time out.

A result for a dispatch the scheduler withdrew itself (cancelled, timed out) is not a rejection: it is the
acknowledgement the CancelBatch asked for, and it returns the credit.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import ResultIn
    from .runstate import Session, State

__all__ = ["LOG_EVERY_S", "RejectReason", "Rejected", "Rejects"]

logger = logging.getLogger(__name__)

# At most one warning per (namespace, reason) this often; the counter counts every one.
LOG_EVERY_S = 10.0


class RejectReason(StrEnum):
    """Why a result was rejected; the names of ``exosphere.v1.RejectReason`` without their prefix."""

    UNKNOWN_STATE = "UNKNOWN_STATE"
    NOT_HELD = "NOT_HELD"
    STATE_MISMATCH = "STATE_MISMATCH"
    ATTEMPT_MISMATCH = "ATTEMPT_MISMATCH"


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejected result, as the runtime sent it, with why."""

    state_id: str
    dispatch_id: int
    attempt: int
    reason: RejectReason
    message: str


def _why(result: ResultIn, held: State | None, known: State | None) -> tuple[RejectReason, str]:
    sent = f"state_id={result.state_id!r} dispatch_id={result.dispatch_id} attempt={result.attempt}"
    if held is not None and held.state_id != result.state_id:
        return RejectReason.STATE_MISMATCH, (
            f"result {sent}: dispatch {result.dispatch_id} on this stream is state {held.state_id!r}; echo the "
            "Execute item's state_id exactly"
        )
    if held is not None:
        return RejectReason.ATTEMPT_MISMATCH, (
            f"result {sent}: dispatch {result.dispatch_id} is attempt {held.attempt}; echo the Execute item's attempt"
        )
    if known is None:
        return (
            RejectReason.UNKNOWN_STATE,
            f"result {sent}: no live state has this state_id (mistyped, or its run ended)",
        )
    return RejectReason.NOT_HELD, (
        f"result {sent}: dispatch {result.dispatch_id} is not outstanding on this stream (already answered, its "
        "credit already returned, or dispatched on another stream)"
    )


class Rejects:
    """Counts rejected results by (namespace, reason) for ``/metrics`` and logs them, rate-limited."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._logged_at: dict[tuple[str, str], float] = {}
        self._unlogged: Counter[tuple[str, str]] = Counter()

    def reject(self, session: Session, result: ResultIn, held: State | None, known: State | None) -> Rejected:
        """Record that ``result`` does not match; ``held`` is the state its dispatch id holds on ``session``,
        ``known`` the live state its state id names (either may be None)."""
        reason, message = _why(result, held, known)
        key = (session.namespace, str(reason))
        self.counts[key] += 1
        now = time.monotonic()
        if now - self._logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[key] = now
            more, self._unlogged[key] = self._unlogged[key], 0
            logger.warning(
                "result rejected namespace=%s runtime=%s session=%s reason=%s %s (%d more since the last warning)",
                session.namespace, session.runtime_name, session.session_id, reason, message, more,
            )  # fmt: skip
        else:
            self._unlogged[key] += 1
        return Rejected(result.state_id, result.dispatch_id, result.attempt, reason, message)
