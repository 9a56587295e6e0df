"""exospherehost's graph models: ours, with its field rules and its validation messages.

Each model subclasses ours, so our ``StateManager`` takes them too. Like exospherehost's, they ignore unknown
fields and raise pydantic's ``ValidationError`` (a ``ValueError``).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator

from exosphere import models as _ours
from exosphere.models import CronTrigger, RetryStrategyEnum, UnitesStrategyEnum

__all__ = [
    "CronTrigger",
    "GraphNodeModel",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "StoreConfigModel",
    "UnitesModel",
    "UnitesStrategyEnum",
]

_IGNORE_EXTRA = ConfigDict(extra="ignore")


class UnitesModel(_ours.UnitesModel):
    """Fan-in: the merge node runs once per state of ``identifier``, after that state's descendants."""

    model_config = _IGNORE_EXTRA

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        return v  # checked (trimmed, non-empty) by GraphNodeModel, as exospherehost does


class GraphNodeModel(_ours.GraphNodeModel):
    """One node of a graph template."""

    model_config = _IGNORE_EXTRA
    unites: UnitesModel | None = None

    @field_validator("namespace")
    @classmethod
    def _names(cls, v: str) -> str:
        return v.strip()

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, v: str) -> str:
        trimmed = v.strip()
        if not trimmed:
            raise ValueError("Node name cannot be empty")
        return trimmed

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        trimmed = v.strip()
        if not trimmed:
            raise ValueError("Node identifier cannot be empty")
        if trimmed == "store":
            raise ValueError("Node identifier cannot be reserved word 'store'")
        return trimmed

    @field_validator("next_nodes")
    @classmethod
    def _next(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        errors: list[str] = []
        seen: list[str] = []
        for entry in v:
            trimmed = entry.strip()
            if not trimmed:
                errors.append("Next node identifier cannot be empty")
            elif trimmed in seen:
                errors.append(f"Next node identifier {trimmed} is not unique")
            else:
                seen.append(trimmed)
        if errors:
            raise ValueError("\n".join(errors))
        return seen

    @field_validator("unites")
    @classmethod
    def _unites(cls, v: UnitesModel | None) -> UnitesModel | None:
        if v is None:
            return None
        identifier = v.identifier.strip()
        if not identifier:
            raise ValueError("Unites identifier cannot be empty")
        return UnitesModel(identifier=identifier, strategy=v.strategy)


class RetryPolicyModel(_ours.RetryPolicyModel):
    """Retries of failed states; delays in milliseconds (2000/4000/8000 ms by default)."""

    model_config = _IGNORE_EXTRA
    backoff_factor: int = Field(default=2000, gt=0)
    exponent: int = Field(default=2, gt=0)
    max_delay: int | None = Field(default=None, gt=0)


def _keys_problems(keys: list[str]) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    cleaned: list[str] = []
    for key in keys:
        trimmed = key.strip() if key is not None else ""
        if not trimmed:
            errors.append("Key cannot be empty or contain only whitespace")
        elif "." in trimmed:
            errors.append(f"Key '{trimmed}' cannot contain '.' character")
        elif trimmed in cleaned:
            errors.append(f"Key '{trimmed}' is duplicated")
        else:
            cleaned.append(trimmed)
    return cleaned, errors


class StoreConfigModel(_ours.StoreConfigModel):
    """Keys of a run's store: those a trigger must give, and defaults for the others."""

    model_config = _IGNORE_EXTRA

    @field_validator("required_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        cleaned, errors = _keys_problems(keys)
        if errors:
            raise ValueError("\n".join(errors))
        return cleaned

    @field_validator("default_values", mode="before")
    @classmethod
    def _defaults(cls, values: dict[str, str]) -> dict[str, str]:
        if not isinstance(values, dict):
            return values  # pydantic reports the wrong type
        cleaned, errors = _keys_problems(list(values))
        if errors:
            raise ValueError("\n".join(errors))
        # exospherehost stores every default as a string.
        return {k.strip(): str(v) for k, v in values.items() if k.strip() in cleaned}
