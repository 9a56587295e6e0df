"""Exosphere workloads on Celery with Redis as broker and result backend.

Run with the peers venv python: ``benchmarks/.peers/venv/bin/python benchmarks/peers/celery_bench.py [--quick]``.
Starts its own ``redis-server`` (no persistence) and one Celery worker process (prefork pool, concurrency 2 by
default: one pool process per core), runs the workloads and prints one JSON object on the last line of stdout.
The same module is the worker's app (``celery -A celery_bench worker``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery, chain, chord
from celery.result import AsyncResult, ResultSet
from peer_common import (
    LOOPBACK,
    PEERS_DIR,
    Processes,
    Recorder,
    base_parser,
    free_port,
    log,
    sigterm_as_exit,
    sizes,
    timed_clients,
    wait_for_port,
)

URL_ENV = "EXO_CELERY_BENCH_URL"
TIMEOUT = 600.0


def make_app(url: str, name: str = "exo_bench") -> Celery:
    app = Celery(name, broker=url, backend=url)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(os.environ.get("EXO_CELERY_PREFETCH", "4")),
        result_expires=3600,
    )
    return app


app = make_app(os.environ.get(URL_ENV, f"redis://{LOOPBACK}:6379/0"))


@app.task(name="bench.noop")
def noop(*args: Any) -> None:
    return None


@app.task(name="bench.aggregate")
def aggregate(results: list[Any]) -> int:
    return len(results)


@app.task(name="bench.fanout_start")
def fanout_start(n: int) -> str:
    """The first state of 1 -> n -> 1: starts the chord from inside the worker, returns the callback's task id."""
    result = chord([noop.s() for _ in range(n)])(aggregate.s())
    return str(result.id)


def _fanout_once(client: Celery, n: int, from_worker: bool) -> float:
    started = time.perf_counter()
    if from_worker:
        callback_id = client.send_task("bench.fanout_start", (n,)).get(timeout=TIMEOUT)
        count = client.AsyncResult(callback_id).get(timeout=TIMEOUT)
    else:
        # The client subscribes to every header task's result channel (redis backend), which costs it minutes of
        # CPU at n=10,000: the fan-out then measures the client, not the worker.
        header = [client.signature("bench.noop") for _ in range(n)]
        count = chord(header)(client.signature("bench.aggregate")).get(timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    if count != n:
        raise RuntimeError(f"aggregate saw {count} results, expected {n}")
    return seconds


def _latency_once(client: Celery) -> float:
    started = time.perf_counter()
    client.send_task("bench.noop").get(timeout=TIMEOUT)
    return time.perf_counter() - started


def _chain_once(client: Celery, length: int) -> float:
    started = time.perf_counter()
    result = chain(*(client.signature("bench.noop") for _ in range(length))).apply_async()
    result.get(timeout=TIMEOUT)
    return time.perf_counter() - started


def _runs_once(url: str, m: int, clients: int) -> float:
    """m runs of noop -> noop -> noop, split over ``clients`` threads, each with its own Celery app and connections."""
    apps = [make_app(url, f"exo_bench_client_{i}") for i in range(clients)]
    for client in apps:  # connect before the clock starts
        client.send_task("bench.noop").get(timeout=TIMEOUT)

    def work(client: Celery, share: int) -> None:
        results: list[AsyncResult] = []
        for _ in range(share):
            sig = chain(client.signature("bench.noop"), client.signature("bench.noop"), client.signature("bench.noop"))
            results.append(sig.apply_async())
        ResultSet(results, app=client).get(timeout=TIMEOUT)

    try:
        return timed_clients(apps, m, work)
    finally:
        for client in apps:
            client.close()


def main() -> int:
    parser = base_parser("Celery + Redis")
    parser.add_argument("--pool", default="prefork", help="celery worker pool (prefork, threads, solo, ...)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4, help="worker_prefetch_multiplier")
    parser.add_argument(
        "--fanout-from",
        choices=("worker", "client"),
        default="worker",
        help="who builds the chord: a first task in the worker (1 -> N -> 1, default) or the client",
    )
    args = parser.parse_args()
    size = sizes(args)
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    config = {
        **size,
        "repeat": args.repeat,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "prefetch_multiplier": args.prefetch,
        "fanout_from": args.fanout_from,
        "broker": "redis",
        "result_backend": "redis",
    }
    recorder = Recorder("celery", args, config)
    procs = Processes(log_dir=Path(tempfile.mkdtemp(prefix="exo-celery-bench-")))
    try:
        with sigterm_as_exit():
            import celery
            import kombu
            import redis

            config["versions"] = {
                "celery": celery.__version__,
                "kombu": kombu.__version__,
                "redis-py": redis.__version__,
            }
            port = free_port()
            redis_proc = procs.start(
                "redis",
                [
                    redis_server,
                    "--port",
                    str(port),
                    "--bind",
                    LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ],
            )
            wait_for_port(port, 30, redis_proc)
            config["versions"]["redis-server"] = redis.Redis(host=LOOPBACK, port=port).info()["redis_version"]
            url = f"redis://{LOOPBACK}:{port}/0"
            app.conf.broker_url = url
            app.conf.result_backend = url
            env = dict(os.environ, **{URL_ENV: url, "EXO_CELERY_PREFETCH": str(args.prefetch)})
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PEERS_DIR), env.get("PYTHONPATH")]))
            procs.start(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "celery_bench",
                    "worker",
                    "--pool",
                    args.pool,
                    "--concurrency",
                    str(args.concurrency),
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--hostname",
                    f"bench{port}@%h",
                ],
                env=env,
                cwd=PEERS_DIR,
            )
            try:
                for _ in range(50):  # warm-up: the worker is up and every pool process has run something
                    app.send_task("bench.noop").get(timeout=120)
            except Exception as exc:
                recorder.fail(exc, procs.log_tail("worker"))
                return 1

            if recorder.wanted("fanout"):
                recorder.fanout(size["n"], lambda: _fanout_once(app, size["n"], args.fanout_from == "worker"))
            if recorder.wanted("latency"):
                recorder.latency(size["latency_count"], lambda: _latency_once(app))
            if recorder.wanted("chain"):
                recorder.chain(size["chain_length"], lambda: _chain_once(app, size["chain_length"]))
            if recorder.wanted("runs"):
                recorder.runs(size["runs"], args.clients, lambda: _runs_once(url, size["runs"], args.clients))
    except BaseException as exc:
        log(f"aborted: {exc!r}")
        recorder.fail(exc, procs.log_tail("worker"))
    finally:
        procs.stop_all()
        if recorder.has_errors():
            log(f"server logs kept in {procs.log_dir}")
        else:
            procs.remove_logs()
        recorder.emit()
    return 0 if "error" not in recorder.result else 1


if __name__ == "__main__":
    raise SystemExit(main())
