"""Run ids given by a unique prefix, as an operator types them: ``exosphere runs show 7ced34``.

Only ``GetRun`` resolves a prefix (a client resolves once, then uses the whole id). An id that names a run is never
treated as a prefix; a prefix is resolved among the runs the caller may read, so an ambiguity never shows the ids of
a namespace the caller's key does not reach.
"""

from __future__ import annotations

from collections.abc import Callable

from exosphere.errors import InvalidArgumentError, RunNotFoundError

from .engine import Engine
from .models import RunRow, StateRow

__all__ = ["CANDIDATES", "MAX_SCANNED", "read_run", "read_run_row", "resolve_run_id"]

# An ambiguous prefix lists at most this many of the runs it matches.
CANDIDATES = 5
# A prefix is looked up among at most this many matching runs (of any namespace).
MAX_SCANNED = 20_000


def resolve_run_id(engine: Engine, prefix: str, allowed: Callable[[str], bool]) -> str:
    """The one run id starting with ``prefix`` among the runs in namespaces ``allowed`` says the caller may read.

    Raises:
        RunNotFoundError: No readable run id starts with ``prefix``.
        InvalidArgumentError: Several do; the message lists a few of them.
    """
    # Runs of namespaces the caller may not read are skipped, so a window of matches full of them says nothing:
    # look further (a wider window) until the matches end or enough readable ones show the ambiguity.
    limit = 4 * CANDIDATES
    while True:
        rows = engine.find_runs(prefix, limit)
        found = [run_id for run_id, namespace in rows if allowed(namespace)]
        if len(found) > CANDIDATES or len(rows) < limit:
            break
        if limit >= MAX_SCANNED:
            if found:
                break  # several readable, or one among more matches than are looked at: ambiguous either way
            raise InvalidArgumentError(
                f"run id prefix {prefix!r} matches more than {MAX_SCANNED:,} runs; give more of the id"
            )
        limit = min(limit * 10, MAX_SCANNED)
    if not found:
        raise RunNotFoundError(prefix)
    if len(found) > 1 or len(rows) == limit:
        shown = ", ".join(found[:CANDIDATES]) + (", ..." if len(found) > CANDIDATES or len(rows) == limit else "")
        raise InvalidArgumentError(f"run id prefix {prefix!r} is ambiguous: it matches {shown}; give more of the id")
    return found[0]


def read_run(
    engine: Engine, run_id: str, allowed: Callable[[str], bool], page_size: int = 0
) -> tuple[RunRow, list[StateRow]]:
    """The run named by ``run_id`` or by a unique prefix of it (among the runs ``allowed``), with its first
    ``page_size`` states (all with 0). The caller still checks that the run's namespace is one it may read."""
    try:
        run, states, _ = engine.get_run(run_id, page_size)
    except RunNotFoundError:
        run, states, _ = engine.get_run(resolve_run_id(engine, run_id, allowed), page_size)
    return run, states


def read_run_row(engine: Engine, run_id: str, allowed: Callable[[str], bool]) -> RunRow:
    """As :func:`read_run`, the run without its states."""
    try:
        return engine.get_run_row(run_id)
    except RunNotFoundError:
        return engine.get_run_row(resolve_run_id(engine, run_id, allowed))
