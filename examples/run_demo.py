"""`make run`: start the scheduler (embedded SQLite), a runtime, apply a graph, trigger it, show the result.

Everything this script starts, it stops.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from exosphere import GraphNodeModel, StateManager, UnitesModel

HERE = Path(__file__).resolve().parent
console = Console()


def start_scheduler(db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exosphere_server", "--port", "0", "--db", str(db), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        m = re.search(r"listening on ([\d.]+:\d+)", line)
        if m:
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the scheduler did not start")


async def main() -> int:
    db = Path(os.environ.get("EXOSPHERE_DB", "exosphere.db"))
    console.print(f"[bold]1.[/] starting exosphere-server (SQLite at {db})")
    scheduler, address = start_scheduler(db)
    console.print(f"   listening on {address}")
    console.print("[bold]2.[/] starting a runtime with SplitWords, Shout, JoinWords")
    env = {**os.environ, "EXOSPHERE_SCHEDULER_ADDRESS": address, "EXOSPHERE_LOG_LEVEL": "WARNING"}
    runtime = subprocess.Popen([sys.executable, str(HERE / "demo_runtime.py")], env=env, cwd=HERE)
    try:
        async with StateManager("demo", address=address) as sm:
            deadline = time.monotonic() + 30
            while sorted(await sm.list_nodes()) != ["JoinWords", "Shout", "SplitWords"]:
                if time.monotonic() > deadline:
                    raise SystemExit("the runtime did not register")
                await asyncio.sleep(0.05)
            console.print("[bold]3.[/] applying graph 'shout': split → shout (one branch per word) → join (unites)")
            await sm.upsert_graph(
                "shout",
                [
                    GraphNodeModel(
                        node_name="SplitWords",
                        namespace="demo",
                        identifier="split",
                        inputs={"sentence": "${{ store.sentence }}"},
                        next_nodes=["shout"],
                    ),
                    GraphNodeModel(
                        node_name="Shout",
                        namespace="demo",
                        identifier="shout",
                        inputs={"word": "${{ split.outputs.word }}"},
                        next_nodes=["join"],
                    ),
                    GraphNodeModel(
                        node_name="JoinWords",
                        namespace="demo",
                        identifier="join",
                        inputs={"words": "${{ shout.outputs.loud }}"},
                        unites=UnitesModel(identifier="split"),
                    ),
                ],
                store_config={"default_values": {"sentence": "hello from exosphere"}},
            )
            started = time.perf_counter()
            run = await sm.trigger("shout", store={"sentence": "workflows should be fast and simple"})
            console.print(f"[bold]4.[/] triggered run {run.run_id}")
            result = await sm.wait(run.run_id, timeout=30)
            elapsed_ms = (time.perf_counter() - started) * 1000
        table = Table(title=f"run {result.run_id}: {result.status.value} in {elapsed_ms:.1f} ms")
        for column in ("identifier", "status", "inputs", "outputs"):
            table.add_column(column)
        for state in result.states:
            table.add_row(state.identifier, state.status.value, str(state.inputs), str(state.outputs))
        console.print(table)
        console.print(f"[bold green]result:[/] {result.state('join').outputs[0]['sentence']}")
        return 0 if result.status.value == "SUCCESS" else 1
    finally:
        for proc in (runtime, scheduler):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (runtime, scheduler):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
