"""The Python runtime's warning for results the scheduler rejected (exosphere/_stream.py)."""

from __future__ import annotations

import logging

import pytest

from exosphere._stream import LOG_REJECTED, log_rejected
from exosphere.v1 import runtime_pb2 as pb


def test_each_rejected_result_is_a_warning_up_to_a_count_and_an_unknown_reason_is_shown_as_its_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = pb.ResultsRejected(
        results=[
            pb.RejectedResult(
                state_id="r-1",
                dispatch_id=7,
                attempt=1,
                reason=pb.RejectReason.ValueType(99),
                message="from a newer one",
            ),
            *(
                pb.RejectedResult(state_id=f"r-{i}", dispatch_id=i, reason=pb.REJECT_REASON_NOT_HELD, message="late")
                for i in range(2, 10)
            ),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="exosphere.runtime"):
        log_rejected("rt", message)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == LOG_REJECTED + 1
    assert "state_id=r-1 dispatch_id=7 attempt=1 reason=99: from a newer one" in lines[0]
    assert "reason=NOT_HELD: late" in lines[1]
    assert lines[-1] == f"{9 - LOG_REJECTED} more results rejected runtime=rt"
