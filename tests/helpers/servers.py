"""The scheduler in tests: ``serving`` runs an ``App`` in the test's loop, ``ServerProcess`` runs the binary.

``stop_process`` ends any other child process (an example script) the way the tests expect: SIGTERM, then its
exit code and output.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from server.app import App
from server.config import ServerConfig
from server.store import Store

# What the ``start`` fixture gives (tests/conftest.py): start a scheduler in the test's loop, stopped at its end.
Start = Callable[[ServerConfig], Awaitable[App]]

_LISTENING = re.compile(r"exosphere-server listening on ([\d.]+):(\d+)")


@asynccontextmanager
async def serving(config: ServerConfig, *, store: Store | None = None, grace: float = 0.5) -> AsyncIterator[App]:
    """``async with serving(ServerConfig(port=0, ...)) as app:`` the scheduler in this loop, on ``app.port``.

    Stopped in ``finally`` with a short ``grace`` (``async with App(...)`` waits the configured shutdown grace).
    """
    app = App(config, store=store)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=grace)


async def stop_process(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    """SIGTERM ``proc`` (only that child) and return its exit code and the rest of its output.

    Its output is read while it exits, so a full pipe cannot block it. After ``timeout`` seconds it is killed
    and the test fails.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = await asyncio.to_thread(proc.communicate, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.communicate)
        raise AssertionError(f"process {proc.args!r} did not exit within {timeout}s of SIGTERM") from None
    return proc.returncode, output or ""


class ServerProcess:
    """``python -m exosphere_server`` on a port (0 picks one); the output is collected for assertions."""

    def __init__(self, db: Path | str, *extra: str, port: int = 0, env: dict[str, str] | None = None) -> None:
        self.db = db
        # A fixed gRPC port means a fixed HTTP port too (8080) unless told otherwise: tests never want that.
        http = [] if port == 0 or "--http-port" in extra or "--no-http" in extra else ["--http-port", "0"]
        self.args = [sys.executable, "-m", "exosphere_server", "--port", str(port), "--db", str(db), *http, *extra]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._pump: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Self:
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = _LISTENING.search(line)
                if m and not found.is_set():
                    self.port = int(m.group(2))
                    found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("exosphere-server did not start:\n" + "".join(self.lines))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self._pump is not None:
            self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
