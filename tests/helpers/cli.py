"""The ``exosphere`` command line in tests: ``main`` in a thread (the scheduler runs in the test's loop, and
``main`` calls ``asyncio.run``), its output captured from wide, uncoloured consoles."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from rich.console import Console

from exosphere.cli import main

__all__ = ["Result", "cli", "one_error_line", "run_cli", "unique_prefix"]


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> Result:
    """``main(argv)`` with wide, uncoloured consoles writing to strings."""
    out, err = io.StringIO(), io.StringIO()
    code = main(
        list(argv),
        stdout=Console(file=out, width=240, color_system=None),
        stderr=Console(file=err, width=240, color_system=None),
    )
    return Result(code, out.getvalue(), err.getvalue())


async def cli(*argv: str) -> Result:
    return await asyncio.to_thread(run_cli, *argv)


def one_error_line(result: Result) -> str:
    """The one ``error: ...`` line the command printed (and no traceback)."""
    assert "Traceback" not in result.out + result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    return lines[0]


def unique_prefix(run_id: str, others: list[str]) -> str:
    """The shortest prefix of ``run_id`` that no other of ``others`` starts with."""
    n = next(n for n in range(1, len(run_id)) if not any(o.startswith(run_id[:n]) for o in others if o != run_id))
    return run_id[:n]
