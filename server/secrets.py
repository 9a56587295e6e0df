"""Secrets at rest: AES-GCM with a key from the environment or a key file beside the database."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exosphere.errors import ConflictError, InvalidArgumentError

__all__ = ["SecretBox", "SecretsKeyError", "load_or_create_key", "load_shared_key"]

logger = logging.getLogger(__name__)

KEY_ENV = "EXOSPHERE_SECRETS_KEY"
_PREFIX = "v1:"


class SecretsKeyError(ConflictError):
    """A stored secret cannot be decrypted: the secrets key is not the one it was encrypted with."""


def _decode_key(encoded: str | bytes, where: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"{where} must hold 32 base64-encoded bytes; it is not valid base64") from None
    if len(key) != 32:
        raise InvalidArgumentError(f"{where} must hold 32 base64-encoded bytes; got {len(key)} bytes")
    return key


def load_or_create_key(key_file: Path | None) -> bytes:
    """The 32-byte key: ``EXOSPHERE_SECRETS_KEY`` (base64), else ``key_file`` (created with mode 0600).

    Raises InvalidArgumentError naming the variable or file when the key there is malformed or unreadable.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env.strip(), KEY_ENV)
    if key_file is None:
        return AESGCM.generate_key(bit_length=256)
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(key_file)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot create secrets key file {key_file}: {exc.strerror}") from None
    key = AESGCM.generate_key(bit_length=256)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    logger.info("created secrets key file %s", key_file)
    return key


def load_shared_key(key_file: Path | None, db: str) -> bytes:
    """The key for a database that several schedulers share (PostgreSQL): ``EXOSPHERE_SECRETS_KEY`` or ``key_file``.

    There is no file beside such a database to keep a key in, and a key made up by one scheduler could not open
    the secrets another one saved; so one of the two must be given. Raises InvalidArgumentError otherwise.
    """
    if not os.environ.get(KEY_ENV) and key_file is None:
        raise InvalidArgumentError(
            f"database {db} needs the secrets key that every scheduler on it shares: set {KEY_ENV} "
            "(32 base64-encoded bytes) or --secrets-key-file"
        )
    return load_or_create_key(key_file)


def _read_key_file(key_file: Path) -> bytes:
    try:
        data = key_file.read_bytes()
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read secrets key file {key_file}: {exc.strerror}") from None
    if mode & 0o077:
        logger.warning("secrets key file %s is readable by others (mode %o); chmod 600 it", key_file, mode)
    return _decode_key(data.strip(), f"secrets key file {key_file}")


class SecretBox:
    """Encrypts and decrypts secret values; the associated data binds a value to its graph and name."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, value: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), context.encode())
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, context: str) -> str:
        """The value; raises SecretsKeyError (naming ``context``, never a value) when it cannot be decrypted."""
        try:
            raw = base64.b64decode(token.removeprefix(_PREFIX), validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretsKeyError(
                f"cannot decrypt secret {context}: the secrets key ({KEY_ENV} or the key file beside the database) "
                "is not the one it was saved with; save the graph with its secrets again"
            ) from None
