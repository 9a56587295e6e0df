"""Dashboard logins: the API key is entered once and kept on the server; the browser holds only a random token.

The cookie (``exosphere_session``) is HttpOnly and SameSite=Strict (Secure under TLS), so a script or another site
cannot read or send it; the key itself never goes back to the browser. A login ends after ``IDLE`` without a request,
on logout, or when the scheduler stops. A request may instead carry the key in an ``x-api-key`` header (Prometheus,
scripts), checked exactly like gRPC metadata.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from exosphere.errors import AuthenticationError

from ..auth import ApiKey, Authenticator

__all__ = ["COOKIE", "Caller", "Logins"]

COOKIE = "exosphere_session"
IDLE_S = 12 * 3600
# Logins kept at most; the oldest go first (a flood of logins cannot grow memory without bound).
MAX_LOGINS = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: ``key`` is None when the scheduler has no keys (everything is allowed)."""

    key: ApiKey | None

    def allows(self, namespace: str) -> bool:
        return self.key is None or self.key.allows(namespace)


@dataclass(slots=True)
class _Login:
    key: ApiKey
    seen: float


class Logins:
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth
        self._logins: dict[str, _Login] = {}

    @property
    def required(self) -> bool:
        return self._auth.enabled

    def login(self, presented: str) -> str:
        """Check ``presented`` and return a new session token; raises AuthenticationError when it is wrong."""
        key = self._auth.identify_metadata([("x-api-key", presented)])
        if key is None:  # no keys configured: there is nothing to log in to
            raise AuthenticationError("this scheduler has no API keys; no login is needed")
        if len(self._logins) >= MAX_LOGINS:
            oldest = min(self._logins, key=lambda t: self._logins[t].seen)
            del self._logins[oldest]
        token = secrets.token_urlsafe(32)
        self._logins[token] = _Login(key, time.monotonic())
        return token

    def logout(self, token: str | None) -> None:
        if token:
            self._logins.pop(token, None)

    def caller(self, token: str | None, header_key: str | None) -> Caller | None:
        """The caller of a request, or None when keys are configured and it brings no valid one."""
        if not self._auth.enabled:
            return Caller(None)
        if header_key:
            try:
                return Caller(self._auth.identify_metadata([("x-api-key", header_key)]))
            except AuthenticationError:
                return None
        login = self._logins.get(token) if token else None
        if login is None:
            return None
        now = time.monotonic()
        if now - login.seen > IDLE_S:
            del self._logins[token]  # type: ignore[arg-type]
            return None
        login.seen = now
        return Caller(login.key)
