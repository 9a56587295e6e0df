"""Run ids given by a unique prefix, as an operator types them: ``exosphere runs show 7ced34``.

Only ``GetRun`` resolves a prefix (a client resolves once, then uses the whole id). An id that names a run is never
treated as a prefix; a prefix is resolved among the runs the caller may read, so an ambiguity never shows the ids of
a namespace the caller's key does not reach.
"""

from __future__ import annotations

from collections.abc import Callable

from exosphere.errors import InvalidArgumentError, RunNotFoundError

from .engine import Engine

__all__ = ["CANDIDATES", "resolve_run_id"]

# An ambiguous prefix lists at most this many of the runs it matches.
CANDIDATES = 5


def resolve_run_id(engine: Engine, prefix: str, allowed: Callable[[str], bool]) -> str:
    """The one run id starting with ``prefix`` among the runs in namespaces ``allowed`` says the caller may read.

    Raises:
        RunNotFoundError: No readable run id starts with ``prefix``.
        InvalidArgumentError: Several do; the message lists a few of them.
    """
    # A few more than shown, so that runs of other namespaces do not hide an ambiguity.
    found = [run_id for run_id, namespace in engine.find_runs(prefix, 4 * CANDIDATES) if allowed(namespace)]
    if not found:
        raise RunNotFoundError(prefix)
    if len(found) > 1:
        shown = ", ".join(found[:CANDIDATES]) + (", ..." if len(found) > CANDIDATES else "")
        raise InvalidArgumentError(f"run id prefix {prefix!r} is ambiguous: it matches {shown}; give more of the id")
    return found[0]
