"""Client-side settings, read from arguments first and ``EXOSPHERE_*`` environment variables second."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict

__all__ = ["ClientConfig"]

DEFAULT_ADDRESS = "localhost:50051"


class ClientConfig(BaseModel):
    """Where the scheduler is and how to authenticate; shared by ``Runtime``, ``StateManager`` and the CLI."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ENV: ClassVar[dict[str, str]] = {
        "EXOSPHERE_SCHEDULER_ADDRESS": "address",
        "EXOSPHERE_API_KEY": "api_key",
        "EXOSPHERE_TLS_CA_FILE": "tls_ca_file",
    }
    address: str = DEFAULT_ADDRESS
    api_key: str | None = None
    tls_ca_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Self:
        """Settings from the environment only."""
        return cls.model_validate({field: environ[var] for var, field in cls.ENV.items() if environ.get(var)})

    @classmethod
    def resolve(
        cls,
        *,
        address: str | None = None,
        api_key: str | None = None,
        tls_ca_file: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Self:
        """Arguments win over the environment, which wins over the defaults."""
        base = cls.from_env(environ)
        return base.model_copy(
            update={
                k: v
                for k, v in {"address": address, "api_key": api_key, "tls_ca_file": tls_ca_file}.items()
                if v is not None
            }
        )
