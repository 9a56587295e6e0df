# exospherehost docs' pattern for notebooks ("Create Runtime → Blocking Operation"): the runtime in a daemon
# thread, then the same process saves a graph (while the runtime may still be registering) and triggers it.
import asyncio
import threading

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from pydantic import BaseModel


class Greeter(BaseNode):
    class Inputs(BaseModel):
        name: str

    class Outputs(BaseModel):
        greeting: str

    async def execute(self) -> Outputs:
        return self.Outputs(greeting=f"Hello, {self.inputs.name}!")


runtime = Runtime(namespace="MyProject", name="NotebookRuntime", nodes=[Greeter])

def run_runtime():
    runtime.start()

thread = threading.Thread(target=run_runtime, daemon=True)
thread.start()


async def main():
    state_manager = StateManager(namespace="MyProject")
    graph = await state_manager.upsert_graph(
        graph_name="greet",
        graph_nodes=[GraphNodeModel(node_name="Greeter", namespace="MyProject", identifier="greeter", inputs={"name": "World"})],
        secrets={},
        validation_timeout=30,
    )
    print(f"Graph status: {graph['validation_status']}")
    result = await state_manager.trigger("greet", inputs={"name": "Ada"})
    print(f"Run ID: {result['run_id']}")


asyncio.run(main())
input()  # the notebook stays open until its user closes it
