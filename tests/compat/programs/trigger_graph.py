# exospherehost docs, "Trigger Graph", verbatim below the two settings lines the page leaves to the reader.
import os

EXOSPHERE_STATE_MANAGER_URI = os.getenv("EXOSPHERE_STATE_MANAGER_URI")
EXOSPHERE_API_KEY = os.getenv("EXOSPHERE_API_KEY")

from exospherehost import StateManager, TriggerState

async def trigger_graph():
    # Initialize state manager
    state_manager = StateManager(
        namespace="MyProject",
        state_manager_uri=EXOSPHERE_STATE_MANAGER_URI,
        key=EXOSPHERE_API_KEY
    )
           
    try:
        # Trigger the graph with optional store 
        result = await state_manager.trigger(
            "my-graph",
            inputs={"user_id": "123"},
            store={"cursor": "0"}  # persisted across nodes
        )
        print(f"Graph triggered successfully!")
        print(f"Run ID: {result['run_id']}")
        return result
    except Exception as e:
        print(f"Error triggering graph: {e}")
        raise

# Run the function
import asyncio
asyncio.run(trigger_graph())
