# "Register Node" → Node Validation → ❌ Invalid node, verbatim.
from pydantic import BaseModel

from exospherehost import BaseNode


# ❌ Invalid node - non-string fields
class InvalidNode(BaseNode):
    class Inputs(BaseModel):
        data: str
        count: int  # Error: must be str

    class Outputs(BaseModel):
        result: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs(result="success")
