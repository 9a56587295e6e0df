"""The fault tests' processes: a scheduler (the binary, or an ``App`` in this loop) and runtime children.

Runtimes are ``tests/faults/fault_runtime.py`` children hosting nodes of ``tests/faults/fault_nodes.py``, which log
every execution to one file (``ExecLog``), so re-executions can be counted exactly. The ``cluster`` fixture
(``tests/faults/conftest.py``) gives each test one ``Cluster`` and closes it.

``two_replicas`` is cluster mode in this loop: two scheduler replicas (``App``) on one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from exosphere import StateManager
from server.app import App
from server.config import ServerConfig
from tests.helpers.graphs import gnode
from tests.helpers.servers import ServerProcess, serving
from tests.helpers.waiting import assert_eventually

ROOT = Path(__file__).resolve().parents[2]
FAULT_RUNTIME = ROOT / "tests" / "faults" / "fault_runtime.py"


class RuntimeProcess:
    """One ``fault_runtime.py`` child process; its stdout/stderr go to ``<log_dir>/<name>.out``."""

    def __init__(
        self,
        *,
        address: str,
        namespace: str,
        name: str,
        nodes: list[str],
        log_dir: Path,
        exec_log: Path,
        max_concurrency: int = 64,
        shutdown_grace: float = 30.0,
    ) -> None:
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.args = [
            sys.executable,
            str(FAULT_RUNTIME),
            "--address", address,
            "--namespace", namespace,
            "--name", name,
            "--nodes", ",".join(nodes),
            "--max-concurrency", str(max_concurrency),
            "--shutdown-grace", str(shutdown_grace),
        ]  # fmt: skip
        self.env = {**os.environ, "EXOSPHERE_FAULT_LOG": str(exec_log), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> RuntimeProcess:
        self._out = self.out_path.open("ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def registrations(self) -> int:
        """How many times this runtime has registered (it logs one line per successful registration)."""
        return self.output.count("runtime registered runtime=")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill (SIGKILL, only this child) if still running, and release the output file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None


@dataclass
class ExecLog:
    """The parsed fault log: ``(event, pid, key)`` per line."""

    entries: list[tuple[str, int, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> ExecLog:
        entries = []
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split(" ", 2)
                if len(parts) == 3:
                    entries.append((parts[0], int(parts[1]), parts[2]))
        return cls(entries)

    def of(self, event: str, key: str | None = None) -> list[tuple[int, str]]:
        return [(pid, k) for e, pid, k in self.entries if e == event and (key is None or k == key)]

    def count(self, event: str, key: str | None = None) -> int:
        return len(self.of(event, key))

    def pids(self, event: str, key: str) -> list[int]:
        return [pid for pid, _ in self.of(event, key)]

    def duplicates(self, event: str = "exec") -> tuple[int, int, Counter[str]]:
        """(executions, distinct keys, keys executed more than once with their counts)."""
        counts = Counter(k for _, k in self.of(event))
        return sum(counts.values()), len(counts), Counter({k: c for k, c in counts.items() if c > 1})


class Cluster:
    """One test's processes: a scheduler binary (restartable on its port) and runtime children.

    ``close()`` stops what is still running (only the processes started here) and prints the tail of each
    process's output, which pytest shows for a failed test.
    """

    def __init__(self, tmp_path: Path, namespace: str) -> None:
        self.tmp_path = tmp_path
        self.namespace = namespace
        self.db = tmp_path / "scheduler.db"
        self.exec_log = tmp_path / "exec.log"
        self.server: ServerProcess | None = None
        self.scheduler_address: str | None = None  # set for an in-process scheduler
        self.servers: list[ServerProcess] = []
        self.runtimes: list[RuntimeProcess] = []

    @property
    def address(self) -> str:
        if self.scheduler_address is not None:
            return self.scheduler_address
        assert self.server is not None
        return self.server.address

    async def start_server(self, *flags: str, port: int = 0) -> ServerProcess:
        server = ServerProcess(self.db, *flags, port=port)
        self.servers.append(server)
        self.server = await asyncio.to_thread(server.start)
        return server

    def start_runtime(self, name: str, nodes: list[str], **kwargs: Any) -> RuntimeProcess:
        runtime = RuntimeProcess(
            address=self.address,
            namespace=self.namespace,
            name=name,
            nodes=nodes,
            log_dir=self.tmp_path,
            exec_log=self.exec_log,
            **kwargs,
        ).start()
        self.runtimes.append(runtime)
        return runtime

    async def wait_registered(self, *runtimes: RuntimeProcess, times: int = 1, timeout: float = 20) -> None:
        """Wait until each runtime has registered at least ``times`` times in its life."""

        def done() -> bool:
            for runtime in runtimes:
                assert runtime.proc is not None
                if runtime.proc.poll() is not None:
                    raise AssertionError(f"runtime {runtime.name} exited early:\n{runtime.output[-3000:]}")
            return all(r.registrations() >= times for r in runtimes)

        def registrations() -> str:
            return f"runtimes registered {times}x: " + ", ".join(f"{r.name}={r.registrations()}" for r in runtimes)

        await assert_eventually(done, timeout, interval=0.02, message=registrations)

    @asynccontextmanager
    async def in_process_scheduler(self, **settings: Any) -> AsyncIterator[App]:
        """The scheduler as an ``App`` in this loop (a test can read its engine) on this cluster's database; the
        runtimes started inside the block connect to it."""
        config = ServerConfig(host="127.0.0.1", port=0, db=str(self.db), **settings)
        async with serving(config) as app:
            self.scheduler_address = app.address
            try:
                yield app
            finally:
                self.scheduler_address = None

    def log(self) -> ExecLog:
        return ExecLog.read(self.exec_log)

    async def sleeper_on_one_of_two(
        self, sm: StateManager, seconds: float
    ) -> tuple[str, RuntimeProcess, RuntimeProcess]:
        """Start two runtimes hosting Sleeper, run one Sleeper state (key "k", no retries), and return the run id,
        the runtime executing it, and the other one."""
        runtimes = [self.start_runtime(f"rt{i}", ["Sleeper"], max_concurrency=4) for i in range(2)]
        await self.wait_registered(*runtimes)
        graph = [gnode(self.namespace, "Sleeper", "sleep", {"key": "k", "seconds": str(seconds)})]
        await sm.upsert_graph("sleepy", graph, retry_policy={"max_retries": 0})
        run_id = (await sm.trigger("sleepy")).run_id
        await assert_eventually(lambda: self.log().count("start", "k") == 1, timeout=10)
        (holder_pid,) = self.log().pids("start", "k")
        (holder,) = [r for r in runtimes if r.pid == holder_pid]
        (other,) = [r for r in runtimes if r is not holder]
        return run_id, holder, other

    async def close(self) -> None:
        for runtime in self.runtimes:
            await asyncio.to_thread(runtime.close)
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                await asyncio.to_thread(server.stop)
        for server in self.servers:
            print(f"---- scheduler (pid {server.proc.pid if server.proc else '-'}) output tail ----")
            print(server.output[-4000:])
        for runtime in self.runtimes:
            print(f"---- runtime {runtime.name} (pid {runtime.proc.pid if runtime.proc else '-'}) output tail ----")
            print(runtime.output[-3000:])


# ---------------------------------------------------------------------- replicas on PostgreSQL

SHARDS = 16  # per test database: few, so that two replicas each own several


def replica_config(dsn: str, tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        db=dsn,
        secrets_key_file=str(tmp_path / "secrets.key"),
        shards=SHARDS,
        shard_lease=timedelta(seconds=2),
    )


@asynccontextmanager
async def two_replicas(dsn: str, tmp_path: Path) -> AsyncIterator[tuple[App, App]]:
    """Two in-process replicas on one database, balanced (each has had a heartbeat after the other joined)."""
    config = replica_config(dsn, tmp_path)
    async with serving(config) as a, serving(config) as b:
        assert a.cluster is not None and b.cluster is not None
        await b.cluster.tick()
        await a.cluster.tick()
        yield a, b
