"""Nodes shared by the tests."""

from __future__ import annotations

from pydantic import BaseModel

from exosphere import BaseNode


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


class Upper(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text.upper())


class Concat(BaseNode):
    class Inputs(BaseModel):
        left: str
        right: str = ""

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.left + self.inputs.right)


class Needs(BaseNode):
    """Declares a secret and reports whether it arrived (never its value)."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str
        secret_len: str
        secret_fields: str

    class Secrets(BaseModel):
        token: str

    async def execute(self) -> Outputs:
        fields = ",".join(sorted(type(self.secrets).model_fields))
        return self.Outputs(text=self.inputs.text, secret_len=str(len(self.secrets.token)), secret_fields=fields)


class SeesSecrets(BaseNode):
    """Declares no secrets: records what it was given."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        secrets_seen: str

    async def execute(self) -> Outputs:
        return self.Outputs(secrets_seen=str(self.secrets.model_dump()))
