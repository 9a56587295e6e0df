"""The fault tests' fixture: one ``Cluster`` of real processes per test, closed (and its output shown) after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.cluster import Cluster


@pytest.fixture
async def cluster(tmp_path: Path, namespace: str) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, namespace)
    try:
        yield c
    finally:
        await c.close()
