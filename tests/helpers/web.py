"""The scheduler's HTTP side in tests: an httpx client on an ``App``'s HTTP port, and Prometheus text parsed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.app import App


@asynccontextmanager
async def http_client(
    app: App, *, api_key: str | None = None, login: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``'s dashboard. ``api_key`` goes in an ``x-api-key`` header on every request; ``login``
    logs in once (the key then lives server side, the client holds the session cookie)."""
    assert app.http_url is not None, "this App serves no HTTP (http_port -1)"
    headers = {"x-api-key": api_key} if api_key else {}
    async with httpx.AsyncClient(base_url=app.http_url, headers=headers, timeout=10, verify=False) as client:
        if login is not None:
            response = await client.post("/api/login", json={"api_key": login})
            assert response.status_code == 200, response.text
        yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, or None when it is absent."""
    return samples(text).get((name, tuple(sorted(labels.items()))))
