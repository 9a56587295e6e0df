"""The credit audit: from the recording alone, each stream's states outstanding never exceed the runtime's
``max_concurrency``, and every ``Execute`` is answered by at most one ``Result`` that echoes its state id, attempt
and dispatch id; the scheduler never had to reject a result (``ResultsRejected``).

A state the scheduler cancelled stops counting against the credit when the ``CancelBatch`` is sent (the runtime
may acknowledge it with one result, or ignore it). An item still unanswered when its stream ends is not counted
here (the drain and run checks judge those); one still unanswered on the stream that is open at the end is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exosphere._stream import reject_reason
from exosphere.conformance.recording import Recorder
from exosphere.v1 import runtime_pb2 as pb

__all__ = ["CreditAudit", "audit_credit"]


@dataclass
class CreditAudit:
    executes: int = 0
    results: int = 0
    cancel_acks: int = 0
    # Per stream that had work: the most states outstanding at once, and the runtime's max_concurrency.
    peaks: dict[int, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def audit_credit(recorder: Recorder) -> CreditAudit:
    audit = CreditAudit()
    for number, stream in recorder.streams.items():
        credit = stream.register.max_concurrency if stream.register is not None else 0
        outstanding: dict[int, pb.Execute] = {}
        cancelled: dict[int, pb.Execute] = {}
        answered: set[int] = set()
        peak = 0
        for event in recorder.of(number):
            if event.kind == "execute" and event.down is not None:
                for item in event.down.execute.items:
                    audit.executes += 1
                    outstanding[item.dispatch_id] = item
                peak = max(peak, len(outstanding))
            elif event.kind == "cancel" and event.down is not None:
                ids = set(event.down.cancel.state_ids)
                for dispatch_id, item in list(outstanding.items()):
                    if item.state_id in ids:
                        cancelled[dispatch_id] = outstanding.pop(dispatch_id)
            elif event.kind == "results_rejected" and event.down is not None:
                # The scheduler could not match some results (ids not echoed, sent twice, another stream's).
                for r in event.down.results_rejected.results:
                    audit.problems.append(
                        f"stream {number}: the scheduler rejected the result for state {r.state_id} "
                        f"dispatch_id {r.dispatch_id} ({reject_reason(r)}: {r.message})"
                    )
            elif event.kind == "results" and event.up is not None:
                for result in event.up.results.results:
                    audit.results += 1
                    _answer(audit, number, result, outstanding, cancelled, answered)
        if peak:
            audit.peaks[number] = (peak, credit)
        if credit and peak > credit:
            audit.problems.append(f"stream {number}: {peak} states outstanding at once, over max_concurrency {credit}")
        if outstanding and stream.closed_at is None:  # the kit's last run has finished: nothing may be left
            states = ", ".join(sorted(item.state_id for item in outstanding.values())[:3])
            audit.problems.append(f"stream {number}: {len(outstanding)} states never answered ({states})")
    return audit


def _answer(
    audit: CreditAudit,
    stream: int,
    result: pb.Result,
    outstanding: dict[int, pb.Execute],
    cancelled: dict[int, pb.Execute],
    answered: set[int],
) -> None:
    dispatch_id = result.dispatch_id
    item = outstanding.pop(dispatch_id, None)
    if item is None and dispatch_id in cancelled:
        item = cancelled.pop(dispatch_id)
        audit.cancel_acks += 1
    if item is None:
        what = "a second result" if dispatch_id in answered else "a result for a dispatch never sent on this stream"
        audit.problems.append(f"stream {stream}: {what}: state {result.state_id} dispatch_id {dispatch_id}")
        return
    answered.add(dispatch_id)
    if result.state_id != item.state_id or result.attempt != item.attempt:
        audit.problems.append(
            f"stream {stream}: result for dispatch_id {dispatch_id} echoes state {result.state_id} attempt "
            f"{result.attempt}, the Execute said state {item.state_id} attempt {item.attempt}"
        )
    if result.WhichOneof("outcome") is None:
        audit.problems.append(f"stream {stream}: result for state {result.state_id} has no outcome")
