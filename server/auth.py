"""API keys in ``x-api-key`` metadata, each scoped to namespaces or to all of them.

Keys come from ``--api-key`` / ``EXOSPHERE_API_KEY`` (one key for every namespace) and from a keys file
(``--api-keys-file`` / ``EXOSPHERE_API_KEYS_FILE``), JSON or YAML::

    keys:
      - key: "k-prod-1"
        namespaces: ["prod"]
      - key: "k-admin"
        namespaces: ["*"]

Every entry must list its namespaces (``["*"]`` for all of them); a key may appear only once.
With no key configured every request is allowed (the scheduler then listens on loopback only, unless told
``--insecure``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from exosphere.errors import ERROR_TRAILER, AuthenticationError, InvalidArgumentError, PermissionDeniedError

__all__ = ["ApiKey", "Authenticator", "load_keys_file"]

ALL = "*"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str = field(repr=False)  # never in a log line or a traceback
    namespaces: frozenset[str]

    def allows(self, namespace: str) -> bool:
        return ALL in self.namespaces or namespace in self.namespaces


def load_keys_file(path: str | Path) -> list[ApiKey]:
    """Read a keys file; raise InvalidArgumentError naming what is wrong."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgumentError(f"cannot read API keys file {path}: {exc}") from None
    entries = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise InvalidArgumentError(f"API keys file {path} must have a top-level 'keys' list")
    keys: list[ApiKey] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str) or not entry["key"]:
            raise InvalidArgumentError(f"API keys file {path}: entry #{index} needs a non-empty 'key' string")
        if "namespaces" not in entry:  # no silent all-namespace keys: that has to be asked for with "*"
            raise InvalidArgumentError(
                f"API keys file {path}: entry #{index} needs a 'namespaces' list (use [\"*\"] for every namespace)"
            )
        namespaces = entry["namespaces"]
        if not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces):
            raise InvalidArgumentError(
                f"API keys file {path}: entry #{index} 'namespaces' must be a list of non-empty strings"
            )
        if any(hmac.compare_digest(k.key.encode(), entry["key"].encode()) for k in keys):
            raise InvalidArgumentError(f"API keys file {path}: entry #{index} repeats the key of an earlier entry")
        keys.append(ApiKey(entry["key"], frozenset(namespaces)))
    return keys


class Authenticator:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = list(keys)
        if len({k.key for k in self._keys}) != len(self._keys):
            # Which scope would win would be an accident of order; say so instead.
            raise InvalidArgumentError("the same API key is configured twice (--api-key and --api-keys-file?)")

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> ApiKey | None:
        """The caller's key; raises AuthenticationError when keys are configured and it is missing or wrong."""
        return self.identify_metadata(context.invocation_metadata())

    def identify_metadata(self, metadata: Any) -> ApiKey | None:
        """The key in call metadata; raises AuthenticationError when keys are configured and it is missing or wrong."""
        if not self._keys:
            return None
        presented = ""
        for key, value in metadata or ():
            if key == "x-api-key":
                presented = value if isinstance(value, str) else value.decode()
        if not presented:
            raise AuthenticationError("missing API key: send it in the x-api-key metadata")
        match = None
        for candidate in self._keys:  # compare with every key, in constant time each
            if hmac.compare_digest(candidate.key.encode(), presented.encode()):
                match = candidate
        if match is None:
            raise AuthenticationError("invalid API key")
        return match

    def check(self, context: grpc.aio.ServicerContext[Any, Any], namespace: str) -> None:
        key = self.identify(context)
        if key is not None and not key.allows(namespace):
            raise PermissionDeniedError(f"API key is not allowed in namespace {namespace!r}", namespace=namespace)

    def allowed(self, context: grpc.aio.ServicerContext[Any, Any], namespace: str) -> bool:
        key = self.identify(context)
        return key is None or key.allows(namespace)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a missing or wrong key on every Exosphere RPC before its handler runs.

    Namespace scopes are checked by the handlers, which know the namespace; this check runs first, so an
    unauthenticated caller learns nothing (not even whether a run id exists).
    """

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self._auth.enabled:
            return handler
        if not handler_call_details.method.startswith("/exosphere."):  # health and reflection stay open
            return handler
        try:
            self._auth.identify_metadata(handler_call_details.invocation_metadata)
        except AuthenticationError as exc:
            return _refusal(handler, str(exc))
        return handler


def _refusal(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, message, trailing_metadata=((ERROR_TRAILER, "AuthenticationError"),)
        )

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer)
