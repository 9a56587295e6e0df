# "Register Node" → Node Structure, with the Inputs and Outputs sections filled in, verbatim.
from pydantic import BaseModel

from exospherehost import BaseNode


class MyNode(BaseNode):
    class Inputs(BaseModel):
        user_id: str
        data: str
        config: str  # JSON string for complex configuration
        batch_size: str = "100"  # Default value

    class Outputs(BaseModel):
        processed_data: str
        metadata: str  # JSON string for complex metadata
        status: str
        count: str

    class Secrets(BaseModel):
        # Define your secret fields here
        pass

    async def execute(self) -> Outputs:
        # Implement your processing logic here
        pass
