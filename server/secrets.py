"""Secrets at rest: AES-GCM with a key from the environment or a key file beside the database."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SecretBox", "load_or_create_key"]

KEY_ENV = "EXOSPHERE_SECRETS_KEY"
_PREFIX = "v1:"


def load_or_create_key(key_file: Path | None) -> bytes:
    """The 32-byte key: ``EXOSPHERE_SECRETS_KEY`` (base64), else ``key_file`` (created with mode 0600)."""
    env = os.environ.get(KEY_ENV)
    if env:
        key = base64.b64decode(env)
        if len(key) != 32:
            raise ValueError(f"{KEY_ENV} must be 32 bytes, base64-encoded; got {len(key)} bytes")
        return key
    if key_file is None:
        return AESGCM.generate_key(bit_length=256)
    if key_file.exists():
        key = base64.b64decode(key_file.read_bytes().strip())
        if len(key) != 32:
            raise ValueError(f"secrets key file {key_file} must hold 32 base64-encoded bytes")
        return key
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
    return key


class SecretBox:
    """Encrypts and decrypts secret values; the associated data binds a value to its graph and name."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, value: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), context.encode())
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, context: str) -> str:
        raw = base64.b64decode(token.removeprefix(_PREFIX))
        return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
