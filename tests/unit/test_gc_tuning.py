"""The scheduler's entrypoint tunes the garbage collector once it serves (server/__main__.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from server.__main__ import GC_THRESHOLDS, _tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_tune_gc_freezes_what_is_loaded_and_collects_young_objects_less_often(restore_gc: None) -> None:
    _tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # the interpreter's default: the point is fewer young collections
    assert gc.get_freeze_count() > 1000  # modules, classes and functions loaded so far are left out of collections
