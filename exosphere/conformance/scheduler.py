"""The real scheduler the kit runs: ``exosphere-server`` as a child process, on 127.0.0.1, SQLite in a directory.

It is started with a short heartbeat interval, lease and drain grace so that
every check takes seconds, and restarted on the same port and database for the reconnect check. Its output goes
to a log file the report points at when something fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["SchedulerError", "SchedulerProcess", "SchedulerSettings"]

_LISTENING = re.compile(r"exosphere-server listening on ([\d.]+):(\d+)")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


class SchedulerError(Exception):
    """The scheduler could not be started or did not stop; the message names why and where its log is."""


@dataclass(frozen=True)
class SchedulerSettings:
    api_key: str
    heartbeat_interval_ms: int
    lease_ms: int
    drain_grace_ms: int


def _iso(ms: int) -> str:
    return f"PT{ms / 1000:g}S"


class SchedulerProcess:
    """``exosphere-server`` (``python -m exosphere_server``) on ``address``; ``restart()`` keeps port and database."""

    def __init__(self, directory: Path, settings: SchedulerSettings) -> None:
        self.directory = directory
        self.settings = settings
        self.db = directory / "conformance.db"
        self.log_path = directory / "scheduler.log"
        self.port = 0
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._log: IO[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _args(self, port: int) -> list[str]:
        s = self.settings
        args = [
            sys.executable, "-m", "exosphere_server",
            "--host", "127.0.0.1", "--port", str(port), "--db", str(self.db), "--no-http",
            "--heartbeat-interval", _iso(s.heartbeat_interval_ms), "--lease", _iso(s.lease_ms),
            "--drain-grace", _iso(s.drain_grace_ms),
        ]  # fmt: skip
        return args

    async def start(self, port: int = 0) -> None:
        """Start and wait until it listens; ``port`` 0 picks a free one (kept for ``restart``)."""
        if self._log is None:
            self._log = self.log_path.open("a", encoding="utf-8")
        args = self._args(port)
        self._log.write(f"--- {' '.join(args)}\n")
        self._log.flush()
        # The user's own EXOSPHERE_* settings (a database, TLS, keys files) must not reach the kit's scheduler; the
        # API key goes by the environment, where no command line shows it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXOSPHERE_")}
        env["EXOSPHERE_API_KEY"] = self.settings.api_key
        self._proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self.returncode = None
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._read_output(self._proc, listening), name="conformance-scheduler-log")
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                self.port = await listening
        except (TimeoutError, EOFError):
            await self.stop(sig=signal.SIGKILL)
            tail = "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-5:])
            raise SchedulerError(
                f"exosphere-server did not start (exit status {self.returncode}); the end of {self.log_path}:\n{tail}"
            ) from None

    async def _read_output(self, proc: asyncio.subprocess.Process, listening: asyncio.Future[int]) -> None:
        assert proc.stdout is not None and self._log is not None
        while line := (await proc.stdout.readline()).decode(errors="replace"):
            self._log.write(line)
            self._log.flush()
            if not listening.done() and (match := _LISTENING.search(line)):
                listening.set_result(int(match.group(2)))
        if not listening.done():
            listening.set_exception(EOFError())

    async def stop(self, *, sig: int = signal.SIGTERM) -> int:
        """Signal the scheduler (SIGTERM: it drains and stops) and wait for it; returns its exit status."""
        proc = self._proc
        if proc is None:
            return self.returncode or 0
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SchedulerError(f"exosphere-server did not stop within {_STOP_TIMEOUT_S:g}s of SIGTERM") from None
        finally:
            if self._pump is not None:
                await self._pump
                self._pump = None
            self._proc = None
            self.returncode = proc.returncode
        return self.returncode if self.returncode is not None else -1

    async def restart(self) -> None:
        """Start again on the same port and database (after ``stop()``)."""
        await self.start(self.port)

    async def close(self) -> None:
        """Stop it if it runs, and close the log. Idempotent."""
        with contextlib.suppress(SchedulerError):
            await self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
