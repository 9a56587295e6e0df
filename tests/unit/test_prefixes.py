"""Run ids by unique prefix among the runs a caller may read (server/prefixes.py), over a stand-in for the engine's
``find_runs``: what matters is which matches of other namespaces are looked past."""

from __future__ import annotations

from typing import cast

import pytest

from exosphere.errors import InvalidArgumentError, RunNotFoundError
from server.engine import Engine
from server.prefixes import MAX_SCANNED, resolve_run_id


class Runs:
    def __init__(self, runs: list[tuple[str, str]]) -> None:
        self.runs = sorted(runs)
        self.limits: list[int] = []

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        self.limits.append(limit)
        return [r for r in self.runs if r[0].startswith(prefix)][:limit]


def _resolve(runs: Runs, prefix: str, namespace: str = "mine") -> str:
    return resolve_run_id(cast(Engine, runs), prefix, lambda ns: ns == namespace)


def test_a_readable_run_behind_many_unreadable_ones_is_found_and_an_ambiguity_is_not_hidden() -> None:
    theirs = [(f"abc{i:04d}", "theirs") for i in range(500)]
    runs = Runs([*theirs, ("abcz-1", "mine")])
    assert _resolve(runs, "abc") == "abcz-1"  # unique among what the caller may read, past 500 others
    assert runs.limits[-1] > 500
    runs = Runs([*theirs, ("abcz-1", "mine"), ("abcz-2", "mine")])
    with pytest.raises(InvalidArgumentError, match=r"ambiguous: it matches abcz-1, abcz-2;"):
        _resolve(runs, "abc")  # before, the first window (all theirs) hid both: "not found"


def test_a_prefix_of_only_unreadable_runs_is_not_found_and_names_none_of_them() -> None:
    runs = Runs([(f"abc{i:04d}", "theirs") for i in range(50)])
    with pytest.raises(RunNotFoundError) as caught:
        _resolve(runs, "abc")
    assert "abc0000" not in str(caught.value)


def test_a_prefix_matching_more_runs_than_are_looked_at_asks_for_more_of_the_id() -> None:
    runs = Runs([(f"ab{i:06d}", "theirs") for i in range(MAX_SCANNED + 5)])
    with pytest.raises(InvalidArgumentError, match="matches more than 20,000 runs; give more of the id"):
        _resolve(runs, "ab")
    assert max(runs.limits) == MAX_SCANNED
