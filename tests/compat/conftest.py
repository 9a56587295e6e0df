"""Run exospherehost-style programs (``programs/``) as child processes against the test's real scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exosphere import StateManager

PROGRAMS = Path(__file__).resolve().parent / "programs"
ROOT = PROGRAMS.parents[2]


@dataclass
class Program:
    """A running program; its output (stdout and stderr) is collected line by line."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    # A program expected to fail sets its exit code here; teardown then accepts that code and its traceback.
    expected_code: int = 0
    # A program whose nodes fail on purpose: the runtime logs each failed execution with its traceback.
    tracebacks_expected: bool = False
    pump: asyncio.Task[None] | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def wait_for_line(self, prefix: str, timeout: float = 20) -> str:
        """The first output line starting with ``prefix`` (fails with the output so far after ``timeout``)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.lines:
                        if line.startswith(prefix):
                            return line.removeprefix(prefix).strip()
                    if self.proc.returncode is not None:
                        break
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pass
        raise AssertionError(f"{self.name} printed no line starting with {prefix!r}:\n{self.output}")

    async def finish(self, timeout: float = 30) -> int:
        """Wait for the program to exit by itself; returns its exit code."""
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        if self.pump is not None:
            await self.pump
        return code

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as a process manager stops a runtime; returns its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.finish(timeout)


ProgramFactory = Callable[..., Awaitable[Program]]


@pytest.fixture
def state_manager_uri(server_address: str) -> str:
    """The scheduler's address as exospherehost users write it."""
    return f"http://{server_address}"


@pytest.fixture
async def my_project(server_address: str) -> AsyncIterator[StateManager]:
    """Our client for the namespace the programs use (each test has its own scheduler, so no clash)."""
    async with StateManager("MyProject", address=server_address) as sm:
        yield sm


@pytest.fixture
async def spawn(state_manager_uri: str) -> AsyncIterator[ProgramFactory]:
    """Start ``programs/<name>`` with ``EXOSPHERE_STATE_MANAGER_URI`` set; programs still running at teardown
    are terminated, and every program must have exited cleanly (code 0, no traceback)."""
    started: list[Program] = []

    async def factory(name: str, *, env: dict[str, str] | None = None, stdin: bool = False) -> Program:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EXOSPHERE_")}
        environ.update(
            {
                "EXOSPHERE_STATE_MANAGER_URI": state_manager_uri,
                "EXOSPHERE_API_KEY": "",
                "EXOSPHERE_LOG_LEVEL": "INFO",
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        environ.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROGRAMS / name),
            cwd=PROGRAMS,
            env=environ,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        program = Program(name, proc)

        async def pump() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                program.lines.append(line.decode(errors="replace"))

        program.pump = asyncio.get_running_loop().create_task(pump(), name=f"pump-{name}")
        started.append(program)
        return program

    try:
        yield factory
    finally:
        failures = []
        for program in started:
            with contextlib.suppress(ProcessLookupError):
                code = await program.terminate()
                crashed = code == 0 and "Traceback" in program.output and not program.tracebacks_expected
                if code != program.expected_code or crashed:
                    failures.append(f"{program.name} exited {code}:\n{program.output}")
        assert not failures, "\n".join(failures)
