"""One scheduler per SQLite file: an exclusive lock on ``<db>.lock``, held for the scheduler's whole life.

Two schedulers on one file would both execute the same states and overwrite each other's graph versions. The lock
is an OS advisory lock (``flock``): the kernel drops it when its process dies, even by SIGKILL, so a standby
(``--standby``) that waits for it takes over as soon as the first scheduler is gone, and never while it runs.
The file also records who holds it, for the message a refused scheduler prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from exosphere.errors import ConflictError

__all__ = ["DatabaseLock", "DatabaseLockedError"]


class DatabaseLockedError(ConflictError):
    """Another scheduler holds the database."""

    def __init__(self, db: str, holder: str) -> None:
        super().__init__(
            f"another scheduler holds {db} ({holder}); stop it, or start this one with --standby to take over "
            "when it stops"
        )
        self.db = db
        self.holder = holder


class DatabaseLock:
    def __init__(self, db: str | Path) -> None:
        self.db = str(db)
        self.path = Path(f"{db}.lock")
        # A file object, not a bare descriptor: if the owner is dropped without release(), closing the file on
        # garbage collection still releases the lock.
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock now, or raise DatabaseLockedError naming the holder."""
        if not self.try_acquire():
            raise DatabaseLockedError(self.db, self.holder())

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        file = os.fdopen(fd, "r+b", buffering=0)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        except BaseException:
            file.close()
            raise
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode())
        self._file = file
        return True

    def holder(self) -> str:
        with contextlib.suppress(OSError):
            text = self.path.read_text(errors="replace").strip()[:200]
            if text:
                return text
        return "holder unknown"

    def release(self) -> None:
        """Idempotent. The lock file stays: removing it would let a second scheduler lock a new file."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.truncate(0)
            file.close()  # closing the descriptor releases the flock
