"""The runtime under test: COMMAND as a child process, with the scheduler's address, API key and namespace in its
environment (``EXOSPHERE_SCHEDULER_ADDRESS``, ``EXOSPHERE_API_KEY``, ``EXOSPHERE_NAMESPACE``) and its output in a
log file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RuntimeProcess"]

_STOP_TIMEOUT_S = 10.0
_CONNECTION_VARIABLES = frozenset(
    {"EXOSPHERE_SCHEDULER_ADDRESS", "EXOSPHERE_API_KEY", "EXOSPHERE_TLS_CA_FILE", "EXOSPHERE_STATE_MANAGER_URI"}
)


class RuntimeProcess:
    """``await RuntimeProcess.start(command, env=..., log_path=...)``; ``stop()`` sends SIGTERM, then SIGKILL."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self._proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, command: Sequence[str], *, env: dict[str, str], log_path: Path) -> RuntimeProcess:
        """Launch ``command``; raises ``OSError`` when it cannot be run (not found, not executable)."""
        # Connection settings of the user's own shell (TLS, another scheduler) would lead the runtime astray.
        inherited = {k: v for k, v in os.environ.items() if k not in _CONNECTION_VARIABLES}
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *command, env={**inherited, **env}, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        return cls(proc, log_path)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def pid(self) -> int:
        return self._proc.pid

    def tail(self, lines: int = 15) -> list[str]:
        """The last ``lines`` lines the runtime printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    async def stop(self) -> int | None:
        """SIGTERM, and SIGKILL after 10 s; returns the exit status (None if it could not be reaped)."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await self._proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        return self._proc.returncode
