"""Exosphere workloads on Dask distributed.

Run with the peers venv python: ``benchmarks/.peers/venv/bin/python benchmarks/peers/dask_bench.py [--quick]``.
Starts a ``LocalCluster`` with 2 worker processes of 1 thread each (the scheduler runs on its own event-loop thread
inside this process, as LocalCluster does), runs the workloads and prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from peer_common import LOOPBACK, Recorder, base_parser, kill_pids, log, sigterm_as_exit, sizes, timed_clients

TIMEOUT = 600.0


def noop(*args: Any) -> None:
    return None


def aggregate(results: list[Any]) -> int:
    return len(results)


def main() -> int:
    parser = base_parser("Dask distributed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    args = parser.parse_args()
    size = sizes(args)
    config: dict[str, Any] = {
        **size,
        "repeat": args.repeat,
        "workers": args.workers,
        "threads_per_worker": args.threads_per_worker,
        "cluster": "LocalCluster(processes=True)",
    }
    recorder = Recorder("dask", args, config)
    worker_pids: list[int] = []
    cluster: Any = None
    client: Any = None
    try:
        with sigterm_as_exit():
            import dask
            import distributed
            from distributed import Client, LocalCluster, wait

            config["versions"] = {"dask": dask.__version__, "distributed": distributed.__version__}
            cluster = LocalCluster(
                n_workers=args.workers,
                threads_per_worker=args.threads_per_worker,
                processes=True,
                host=LOOPBACK,
                scheduler_port=0,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
            worker_pids = [int(pid) for pid in client.run(os.getpid).values()]
            log(f"dask scheduler {cluster.scheduler_address}, worker pids {worker_pids}")
            for i in range(50):  # warm-up
                client.submit(noop, i, pure=False).result(timeout=120)

            def fanout_once() -> float:
                n = size["n"]
                started = time.perf_counter()
                futures = client.map(noop, range(n), pure=False)
                count = client.submit(aggregate, futures, pure=False).result(timeout=TIMEOUT)
                seconds = time.perf_counter() - started
                if count != n:
                    raise RuntimeError(f"aggregate saw {count} results, expected {n}")
                del futures
                return seconds

            def latency_once() -> float:
                started = time.perf_counter()
                client.submit(noop, pure=False).result(timeout=TIMEOUT)
                return time.perf_counter() - started

            def chain_once() -> float:
                started = time.perf_counter()
                future = client.submit(noop, pure=False)
                for _ in range(size["chain_length"] - 1):
                    future = client.submit(noop, future, pure=False)
                future.result(timeout=TIMEOUT)
                return time.perf_counter() - started

            def runs_once() -> float:
                m, clients = size["runs"], args.clients
                # One Client per thread: 4 independent connections to the scheduler.
                peers = [Client(cluster.scheduler_address, set_as_default=False) for _ in range(clients)]

                def work(peer: Any, share: int) -> None:
                    lasts = []
                    for _ in range(share):
                        first = peer.submit(noop, pure=False)
                        second = peer.submit(noop, first, pure=False)
                        lasts.append(peer.submit(noop, second, pure=False))
                    wait(lasts, timeout=TIMEOUT)
                    peer.gather(lasts)

                try:
                    return timed_clients(peers, m, work)
                finally:
                    for peer in peers:
                        peer.close()

            if recorder.wanted("fanout"):
                recorder.fanout(size["n"], fanout_once)
            if recorder.wanted("latency"):
                recorder.latency(size["latency_count"], latency_once)
            if recorder.wanted("chain"):
                recorder.chain(size["chain_length"], chain_once)
            if recorder.wanted("runs"):
                recorder.runs(size["runs"], args.clients, runs_once)
    except BaseException as exc:
        log(f"aborted: {exc!r}")
        recorder.fail(exc)
    finally:
        for closable in (client, cluster):
            if closable is not None:
                try:
                    closable.close()
                except Exception as exc:
                    log(f"close failed: {exc!r}")
        kill_pids(worker_pids)  # only if LocalCluster left one of its workers behind
        recorder.emit()
    return 0 if "error" not in recorder.result else 1


if __name__ == "__main__":
    raise SystemExit(main())
