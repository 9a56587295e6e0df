"""exospherehost's ``state_manager_uri`` (an HTTP URL) turned into the scheduler's gRPC address."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Target", "resolve_target"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """Where the scheduler is: the URI given (or found in the environment), its ``host:port``, and the CA file to
    verify it with (``None``: plaintext). All ``None`` when no URI was given: our own settings apply."""

    uri: str | None
    address: str | None
    tls_ca_file: str | None


def _system_ca_file() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def resolve_target(uri: str | None, environ: Mapping[str, str] = os.environ) -> Target:
    """The argument, else ``EXOSPHERE_STATE_MANAGER_URI``, else our own settings (``EXOSPHERE_SCHEDULER_ADDRESS``).

    ``http://host:port`` is plaintext gRPC to ``host:port``; ``https://host:port`` is TLS, verified with
    ``EXOSPHERE_TLS_CA_FILE`` when set, else with the system's trust store. Without a port the URL's scheme
    default applies (80 / 443). A bare ``host:port`` is used as is. A path (``/v0``...) is ignored: the
    scheduler has one API.
    """
    uri = uri if uri is not None else environ.get("EXOSPHERE_STATE_MANAGER_URI") or None
    if uri is None:
        return Target(uri=None, address=None, tls_ca_file=None)  # ClientConfig's env and defaults decide
    uri = uri.strip()
    if "://" not in uri:
        if not uri:
            raise ValueError("State manager URI is empty")
        return Target(uri=uri, address=uri.rstrip("/"), tls_ca_file=None)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"State manager URI must look like http://host:port or https://host:port, got {uri!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"State manager URI has an invalid port: {uri!r}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    tls_ca_file = None
    if scheme == "https":
        tls_ca_file = environ.get("EXOSPHERE_TLS_CA_FILE") or _system_ca_file()
        if tls_ca_file is None:
            raise ValueError(f"{uri} needs TLS, but no CA file was found: set EXOSPHERE_TLS_CA_FILE")
    return Target(uri=uri, address=f"{host}:{port}", tls_ca_file=tls_ca_file)
