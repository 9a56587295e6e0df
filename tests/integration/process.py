"""Helpers that run the real exosphere-server binary as a child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

_LISTENING = re.compile(r"exosphere-server listening on ([\d.]+):(\d+)")


class ServerProcess:
    """``python -m server`` on a port (0 picks one); the output is collected for assertions."""

    def __init__(self, db: Path | str, *extra: str, port: int = 0, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.args = [sys.executable, "-m", "server", "--port", str(port), "--db", str(db), *extra]
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
