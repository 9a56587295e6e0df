# "Register Node" → Node Registration and Namespace Organization, runnable: one process per namespace.
#   EXOSPHERE_SCHEDULER_ADDRESS=127.0.0.1:50051 python examples/register_node/register.py dev
import sys

from full_node import MyNode
from valid_node import ValidNode

from exospherehost import Runtime

namespace = sys.argv[1] if len(sys.argv) > 1 else "MyProject"

# Register nodes with runtime
Runtime(
    namespace=namespace,
    name="MyRuntime",
    nodes=[MyNode, ValidNode],  # Both nodes will be registered
).start()
