"""The secrets key (environment or key file) and the AES-GCM box."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from exosphere.errors import ConflictError, InvalidArgumentError
from server.secrets import KEY_ENV, SecretBox, SecretsKeyError, load_or_create_key

SECRET = "SUPER-SECRET-VALUE"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_key_file_is_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "db.key"
    old = os.umask(0)  # even with a permissive umask
    try:
        key = load_or_create_key(key_file)
    finally:
        os.umask(old)
    assert len(key) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert base64.b64decode(key_file.read_bytes().strip()) == key
    assert load_or_create_key(key_file) == key


def test_key_from_the_environment_wins_and_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(key).decode() + "\n")
    assert load_or_create_key(tmp_path / "db.key") == key
    assert not (tmp_path / "db.key").exists()


def test_no_key_file_gives_a_fresh_key_each_time() -> None:
    assert load_or_create_key(None) != load_or_create_key(None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        ("c2hvcnQ=", "got 5 bytes"),
        (base64.b64encode(os.urandom(64)).decode(), "got 64 bytes"),
        ("ключ", "not valid base64"),
    ],
)
def test_bad_environment_key(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(InvalidArgumentError, match=f"{KEY_ENV} must hold 32 base64-encoded bytes; .*{message}"):
        load_or_create_key(None)


@pytest.mark.parametrize(("content", "message"), [(b"garbage!!\n", "not valid base64"), (b"c2hvcnQ=\n", "got 5")])
def test_bad_key_file(tmp_path: Path, content: bytes, message: str) -> None:
    key_file = tmp_path / "db.key"
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(InvalidArgumentError, match=f"secrets key file {key_file}.*{message}"):
        load_or_create_key(key_file)


def test_unwritable_key_file_location(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot create secrets key file"):
        load_or_create_key(tmp_path / "missing-dir" / "db.key")


def test_loose_key_file_mode_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "db.key"
    key = load_or_create_key(key_file)
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_or_create_key(key_file) == key
    assert "readable by others" in caplog.text
    assert base64.b64encode(key).decode() not in caplog.text


def test_round_trip_binds_value_to_its_context() -> None:
    box = SecretBox(os.urandom(32))
    token = box.encrypt(SECRET, "ns/graph/token")
    assert token.startswith("v1:")
    assert SECRET not in token and SECRET.encode() not in base64.b64decode(token[3:])
    assert box.decrypt(token, "ns/graph/token") == SECRET
    assert box.encrypt(SECRET, "ns/graph/token") != token  # a fresh nonce each time
    with pytest.raises(SecretsKeyError):
        box.decrypt(token, "ns/other-graph/token")  # a value copied to another graph does not decrypt


def test_wrong_key_is_a_clear_error_without_the_value() -> None:
    token = SecretBox(os.urandom(32)).encrypt(SECRET, "ns/g/token")
    with pytest.raises(SecretsKeyError, match="cannot decrypt secret ns/g/token: the secrets key") as info:
        SecretBox(os.urandom(32)).decrypt(token, "ns/g/token")
    assert isinstance(info.value, ConflictError)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("token", ["v1:not-base64!", "v1:", "v1:" + base64.b64encode(b"short").decode()])
def test_corrupt_token_is_a_clear_error(token: str) -> None:
    with pytest.raises(SecretsKeyError, match="cannot decrypt secret ns/g/token"):
        SecretBox(os.urandom(32)).decrypt(token, "ns/g/token")
