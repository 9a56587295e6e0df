"""Fixtures of the unit layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers.engine import Kit


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    """The engine on an in-memory store with a driven clock (tests/helpers/engine.py)."""
    k = await Kit().start()
    try:
        yield k
    finally:
        await k.stop()
