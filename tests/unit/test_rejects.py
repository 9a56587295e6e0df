"""Results that match no dispatch (server/rejects.py): each is counted, warnings are rate-limited per reason."""

from __future__ import annotations

import logging
import time

import pytest

from server.engine import ResultIn
from server.rejects import LOG_EVERY_S
from server.status import ResultKind
from tests.helpers.engine import Kit, schema


async def test_every_rejection_is_counted_and_a_burst_warns_once_per_reason(
    kit: Kit, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = kit.connect(schema("Echo"))
    forged = [ResultIn(f"nobody-{i}", 1000 + i, ResultKind.EXECUTED, attempt=1) for i in range(50)]
    with caplog.at_level(logging.WARNING, logger="server.rejects"):
        rejected = kit.engine.handle_results(session, forged)
        assert [r.reason for r in rejected] == ["UNKNOWN_STATE"] * 50
        assert kit.engine.rejects.counts == {(session.namespace, "UNKNOWN_STATE"): 50}
        assert len(caplog.records) == 1
        # After LOG_EVERY_S the next one warns again, saying how many went unlogged meanwhile.
        clock = time.monotonic() + LOG_EVERY_S
        monkeypatch.setattr(time, "monotonic", lambda: clock)
        kit.engine.handle_results(session, forged[:1])
    assert len(caplog.records) == 2
    assert "(49 more since the last warning)" in caplog.records[1].getMessage()
    assert session.credit == session.max_concurrency  # nothing was taken, nothing returned
