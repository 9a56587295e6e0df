"""API keys: constant-time matching, namespace scopes, and the keys-file loader's errors."""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from exosphere.errors import AuthenticationError, InvalidArgumentError, PermissionDeniedError
from server.auth import ApiKey, Authenticator, load_keys_file


class FakeContext:
    """Just enough of grpc.aio.ServicerContext: the invocation metadata."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        self._metadata = None if metadata is None else tuple(metadata)

    def invocation_metadata(self) -> Any:
        return self._metadata


def context(metadata: Sequence[tuple[str, str | bytes]] | None) -> grpc.aio.ServicerContext[Any, Any]:
    # A stand-in, not a real context: identify() reads only invocation_metadata().
    return cast("grpc.aio.ServicerContext[Any, Any]", FakeContext(metadata))


def ctx(key: str | bytes | None = None, *extra: tuple[str, str]) -> grpc.aio.ServicerContext[Any, Any]:
    metadata: list[tuple[str, str | bytes]] = [*extra]
    if key is not None:
        metadata.append(("x-api-key", key))
    return context(metadata)


ADMIN = ApiKey("k-admin-secret", frozenset({"*"}))
ALPHA = ApiKey("k-alpha-secret", frozenset({"alpha"}))
MULTI = ApiKey("k-multi-secret", frozenset({"alpha", "gamma"}))


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator([ADMIN, ALPHA, MULTI])


# ---------------------------------------------------------------- constant-time matching


_compare_digest = hmac.compare_digest


class CompareSpy:
    def __init__(self, result: bool | None = None) -> None:
        self.calls: list[tuple[object, object]] = []
        self.result = result

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        return _compare_digest(a, b) if self.result is None else self.result


@pytest.mark.parametrize("presented", ["k-admin-secret", "k-alpha-secret", "k-multi-secret", "k-wrong"])
def test_every_key_is_compared_with_compare_digest(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    """Each configured key is compared, in constant time, whether or not an earlier one matched: neither the
    comparison nor the number of comparisons tells how much of a key was right, or which key it was."""
    spy = CompareSpy()
    monkeypatch.setattr("server.auth.hmac.compare_digest", spy)
    try:
        found = auth.identify(ctx(presented))
    except AuthenticationError:
        found = None
    assert len(spy.calls) == 3
    assert {a for a, _ in spy.calls} == {b"k-admin-secret", b"k-alpha-secret", b"k-multi-secret"}
    assert all(b == presented.encode() for _, b in spy.calls)
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in spy.calls)
    assert (found.key if found else None) == (presented if presented != "k-wrong" else None)


def test_the_decision_is_compare_digests(auth: Authenticator, monkeypatch: pytest.MonkeyPatch) -> None:
    """No other comparison (== or a dict lookup) decides: with compare_digest saying no, the right key fails."""
    monkeypatch.setattr("server.auth.hmac.compare_digest", CompareSpy(result=False))
    with pytest.raises(AuthenticationError, match="invalid API key"):
        auth.identify(ctx("k-admin-secret"))


@pytest.mark.parametrize(
    "presented",
    ["k-admin-secre", "k-admin-secret ", " k-admin-secret", "K-ADMIN-SECRET", "k-admin-secretx", "x", "*", "alpha"],
)
def test_near_misses_are_rejected(auth: Authenticator, presented: str) -> None:
    with pytest.raises(AuthenticationError, match="invalid API key"):
        auth.identify(ctx(presented))


@pytest.mark.parametrize("metadata", [None, [], [("authorization", "Bearer k-admin-secret")], [("x-api-key", "")]])
def test_missing_key(auth: Authenticator, metadata: list[tuple[str, str]] | None) -> None:
    with pytest.raises(AuthenticationError, match=r"missing API key.*x-api-key"):
        auth.identify(context(metadata))


def test_key_among_other_metadata_and_as_bytes(auth: Authenticator) -> None:
    assert auth.identify(ctx("k-alpha-secret", ("user-agent", "x"), ("x-request-id", "1"))) == ALPHA
    assert auth.identify(ctx(b"k-alpha-secret")) == ALPHA


def test_error_messages_never_carry_a_key(auth: Authenticator) -> None:
    for presented in ("k-admin-secre", "k-wrong"):
        with pytest.raises(AuthenticationError) as info:
            auth.identify(ctx(presented))
        assert presented not in str(info.value) and "k-admin-secret" not in str(info.value)
    assert "secret" not in repr(ADMIN)


# ---------------------------------------------------------------- namespace scopes


def test_scopes(auth: Authenticator) -> None:
    auth.check(ctx("k-admin-secret"), "anything")
    auth.check(ctx("k-alpha-secret"), "alpha")
    auth.check(ctx("k-multi-secret"), "gamma")
    with pytest.raises(PermissionDeniedError, match="'beta'"):
        auth.check(ctx("k-alpha-secret"), "beta")
    with pytest.raises(PermissionDeniedError):
        auth.check(ctx("k-alpha-secret"), "alpha2")  # no prefix matching
    with pytest.raises(PermissionDeniedError):
        auth.check(ctx("k-alpha-secret"), "*")  # "*" as a namespace is not a wildcard for scoped keys
    assert auth.allowed(ctx("k-alpha-secret"), "alpha")
    assert not auth.allowed(ctx("k-alpha-secret"), "beta")
    assert auth.allowed(ctx("k-admin-secret"), "beta")


def test_bad_key_is_unauthenticated_before_any_scope_check(auth: Authenticator) -> None:
    for call in (auth.check, auth.allowed):
        with pytest.raises(AuthenticationError):
            call(ctx("k-wrong"), "alpha")
        with pytest.raises(AuthenticationError):
            call(ctx(), "alpha")


def test_without_keys_everything_is_allowed() -> None:
    auth = Authenticator([])
    assert not auth.enabled
    assert auth.identify(ctx()) is None
    assert auth.identify(ctx("whatever")) is None
    auth.check(ctx(), "alpha")
    assert auth.allowed(ctx("x"), "beta")


def test_the_same_key_twice_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="configured twice"):
        Authenticator([ADMIN, ApiKey("k-admin-secret", frozenset({"alpha"}))])


# ---------------------------------------------------------------- the keys file


def write(tmp_path: Path, text: str, name: str = "keys.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_keys_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'keys:\n  - key: "k-prod-1"\n    namespaces: ["prod"]\n  - key: k-admin\n    namespaces: ["*"]\n'
        "  - key: k-none\n    namespaces: []\n",
    )
    assert load_keys_file(path) == [
        ApiKey("k-prod-1", frozenset({"prod"})),
        ApiKey("k-admin", frozenset({"*"})),
        ApiKey("k-none", frozenset()),
    ]
    assert load_keys_file(str(path))[0].allows("prod")
    assert not load_keys_file(path)[2].allows("prod")


def test_json_keys_file(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"keys": [{"key": "k1", "namespaces": ["a", "b"]}]}), "keys.json")
    assert load_keys_file(path) == [ApiKey("k1", frozenset({"a", "b"}))]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # not a mapping
        ("- key: k1\n  namespaces: [a]\n", "must have a top-level 'keys' list"),
        ("just a string\n", "must have a top-level 'keys' list"),
        ("", "must have a top-level 'keys' list"),
        # no keys list
        ("other: 1\n", "must have a top-level 'keys' list"),
        ("keys:\n  key: k1\n", "must have a top-level 'keys' list"),
        ("keys: k1\n", "must have a top-level 'keys' list"),
        # an entry without its key
        ("keys:\n  - namespaces: [a]\n", r"entry #0 needs a non-empty 'key' string"),
        ("keys:\n  - key: k1\n    namespaces: [a]\n  - namespaces: [b]\n", r"entry #1 needs a non-empty 'key'"),
        ('keys:\n  - key: ""\n    namespaces: [a]\n', r"entry #0 needs a non-empty 'key' string"),
        ("keys:\n  - key: 12345\n    namespaces: [a]\n", r"entry #0 needs a non-empty 'key' string"),
        ("keys:\n  - k1\n", r"entry #0 needs a non-empty 'key' string"),
        # namespaces that are not a list of strings
        ("keys:\n  - key: k1\n    namespaces: alpha\n", r"entry #0 'namespaces' must be a list"),
        ("keys:\n  - key: k1\n    namespaces: {alpha: 1}\n", r"entry #0 'namespaces' must be a list"),
        ("keys:\n  - key: k1\n    namespaces: [alpha, 3]\n", r"entry #0 'namespaces' must be a list"),
        ("keys:\n  - key: k1\n    namespaces:\n", r"entry #0 'namespaces' must be a list"),
        ('keys:\n  - key: k1\n    namespaces: [""]\n', r"entry #0 'namespaces' must be a list of non-empty"),
        # no namespaces at all: not silently every namespace
        ("keys:\n  - key: k1\n", r"entry #0 needs a 'namespaces' list \(use \[\"\*\"\]"),
        # the same key twice
        ("keys:\n  - {key: k1, namespaces: [a]}\n  - {key: k1, namespaces: [b]}\n", r"entry #1 repeats the key"),
        # not YAML
        ("keys: [unclosed\n", "cannot read API keys file"),
    ],
)
def test_malformed_keys_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgumentError, match=message) as info:
        load_keys_file(path)
    assert str(path) in str(info.value)
    assert "k1" not in str(info.value)  # the message names the entry, never the key


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"cannot read API keys file .*nope\.yaml"):
        load_keys_file(tmp_path / "nope.yaml")
