"""One scheduler per SQLite file: a second refuses to start, or with --standby waits and takes over."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exosphere import Runtime, StateManager
from tests.helpers.runtimes import running
from tests.helpers.servers import ServerProcess
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo


def test_a_second_scheduler_on_the_same_file_refuses_to_start_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    with ServerProcess(db) as first:
        assert first.proc is not None
        second = subprocess.run(
            [sys.executable, "-m", "exosphere_server", "--port", "0", "--db", str(db)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1, second
        assert "Traceback" not in second.stderr
        [line] = [ln for ln in second.stderr.splitlines() if ln.startswith("exosphere-server:")]
        assert f"another scheduler holds {db} (pid {first.proc.pid} on " in line
        assert "--standby" in line
    # Once the first is gone, the file is free again.
    with ServerProcess(db):
        pass


@pytest.mark.slow
async def test_a_standby_waits_and_takes_over_when_the_first_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    first = ServerProcess(db).start()
    try:
        runtime = Runtime(namespace="lock-test", name="rt", nodes=[Echo], address=first.address)
        async with running(runtime, strict_stop=True):
            pass  # registered: the scheduler saved the node

        standby = ServerProcess(db, "--standby")
        starting = asyncio.get_running_loop().run_in_executor(None, standby.start, 60)
        await assert_eventually(lambda: "standing by" in standby.output, timeout=20)
        assert first.proc is not None
        assert f"pid {first.proc.pid}" in standby.output
        await asyncio.sleep(1)
        assert "listening" not in standby.output  # never both at once
        first.stop(signal.SIGKILL)
        await asyncio.wait_for(starting, 30)
        try:
            async with StateManager("lock-test", address=standby.address) as sm:
                assert "Echo" in await sm.list_nodes()  # the registration the first one saved
        finally:
            assert standby.stop() == 0
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.stop()
