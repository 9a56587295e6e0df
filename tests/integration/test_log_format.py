"""``--log-format json`` on the scheduler and ``EXOSPHERE_LOG_FORMAT=json`` on runtimes; failed executions are
logged by the runtime with their traceback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from exosphere import RetryPolicyModel, RunStatus, StateManager
from exosphere.logs import JsonFormatter
from tests.engine_nodes import Flaky
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.servers import ServerProcess


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("server.machine", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_lines_carry_the_ids_as_fields() -> None:
    formatter = JsonFormatter()  # the scheduler's --log-format json and the runtimes' EXOSPHERE_LOG_FORMAT=json
    line = formatter.format(_record("state failed state_id=%s run_id=%s identifier=%r", "r-1", "r", "x y", exc=True))
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "server.machine"
    assert entry["message"] == "state failed state_id=r-1 run_id=r identifier='x y'"
    assert (entry["state_id"], entry["run_id"], entry["identifier"]) == ("r-1", "r", "x y")
    assert entry["time"].endswith("+00:00")
    assert "ValueError: boom" in entry["exception"] and "Traceback" in entry["exception"]
    plain = json.loads(formatter.format(_record("level=%s message=%s", "x", "y")))
    assert plain["level"] == "WARNING" and plain["message"] == "level=x message=y"  # reserved names are kept


def test_the_scheduler_logs_json_lines(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "x.db", "--log-format", "json").start()
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    messages = [e["message"] for e in entries]
    assert any(m.startswith("exosphere-server listening on") for m in messages), server.output
    assert any(m == "exosphere-server stopped" for m in messages)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    # Only the two lines meant for scripts are not JSON.
    others = [line for line in server.lines if not line.startswith("{")]
    assert [line.split(" on ")[0] for line in others] == ["exosphere-server listening", "exosphere-server dashboard"]


async def test_a_runtime_logs_a_failed_execution_with_its_traceback(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    await start_runtime([Flaky])
    await state_manager.upsert_graph(
        "fails",
        [gnode(namespace, "Flaky", "f", {"key": f"log-{namespace}", "fails": "1"})],
        retry_policy=RetryPolicyModel(max_retries=0),
    )
    with caplog.at_level(logging.WARNING, logger="exosphere._executor"):
        run = await state_manager.trigger_and_wait("fails", timeout=10)
    assert run.status is RunStatus.FAILED
    [record] = [r for r in caplog.records if r.name == "exosphere._executor"]
    assert record.getMessage().startswith("execution failed node=Flaky state_id=")
    assert record.exc_info is not None and "boom 1" in str(record.exc_info[1])
