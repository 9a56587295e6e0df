"""A runtime process for the fault tests (``tests.helpers.cluster.RuntimeProcess`` starts, signals and reads it).

Run as::

    python tests/faults/fault_runtime.py --address 127.0.0.1:PORT --namespace NS --name NAME \
        --nodes Spread,Record,Tally [--max-concurrency 64] [--shutdown-grace 30]

It hosts the named nodes of ``tests/faults/fault_nodes.py`` until SIGTERM/SIGINT (graceful: drain, then exit 0)
or SIGKILL. The nodes log their executions to ``$EXOSPHERE_FAULT_LOG`` (see fault_nodes).
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `tests` and `exosphere` importable
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    from exosphere import Runtime
    from tests.faults.fault_nodes import NODES

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--nodes", required=True, help="comma-separated names from fault_nodes.NODES")
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--shutdown-grace", type=float, default=30.0)
    args = p.parse_args(argv)
    nodes = [NODES[name] for name in args.nodes.split(",")]
    Runtime(
        namespace=args.namespace,
        name=args.name,
        nodes=nodes,
        address=args.address,
        max_concurrency=args.max_concurrency,
        shutdown_grace=timedelta(seconds=args.shutdown_grace),
    ).start()


if __name__ == "__main__":
    main()
