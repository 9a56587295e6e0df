"""Helpers shared by the peer benchmark scripts (run with the peers venv python, so stdlib only)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

PEERS_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# Full sizes (the Exosphere workload definitions) and the --quick smoke sizes.
FULL = {"n": 10_000, "latency_count": 1_000, "chain_length": 100, "runs": 10_000}
QUICK = {"n": 1_000, "latency_count": 200, "chain_length": 100, "runs": 1_000}


def log(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} within {timeout:.0f}s")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Processes:
    """Child processes this script started; each runs in its own session so its whole group can be stopped."""

    procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)
    log_dir: Path | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
        assert self.log_dir is not None
        log_file = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.procs.append((name, proc, log_file))
        log(f"started {name} pid={proc.pid}")
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remove_logs(self) -> None:
        """Delete the log directory (call after a clean run; on failure it is kept and its path logged)."""
        if self.log_dir is not None and not self.procs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM each started process group (its leader is a PID we started), then SIGKILL what is left."""
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                log(f"stopping {name} pid={proc.pid}")
        deadline = time.monotonic() + grace
        for name, proc, log_file in reversed(self.procs):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log(f"{name} pid={proc.pid} ignored SIGTERM, killing")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            # Children that left the group leader behind (e.g. pool processes) share its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            log_file.close()
        self.procs.clear()


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL specific PIDs that we know we started (e.g. Dask worker processes) if they are still alive."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM (e.g. from run_all's timeout) into SystemExit so that ``finally`` blocks stop the servers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def base_parser(peer: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=f"Exosphere workloads on {peer}; prints one JSON line last.")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke check")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="fan-out width")
    parser.add_argument("--latency-count", type=int, default=None, help="sequential single-task runs")
    parser.add_argument("--chain-length", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None, help="3-task chain runs submitted by --clients")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--only", default="fanout,latency,chain,runs", help="comma-separated workloads")
    return parser


def sizes(args: argparse.Namespace, full: dict[str, int] | None = None) -> dict[str, int]:
    base = dict(QUICK if args.quick else (full or FULL))
    for key in ("n", "latency_count", "chain_length", "runs"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    return base


def timed_clients(clients: Sequence[T], total: int, work: Callable[[T, int], None]) -> float:
    """Seconds for ``total`` units of work split over one thread per client, all released at once.

    ``work(client, share)`` does that client's share; the first error of any thread is raised.
    """
    shares = [total // len(clients) + (1 if i < total % len(clients) else 0) for i in range(len(clients))]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients) + 1)

    def run(client: T, share: int) -> None:
        try:
            barrier.wait()
            work(client, share)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, n), daemon=True) for c, n in zip(clients, shares, strict=True)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return seconds


def error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)"


class Recorder:
    """Runs each workload ``repeat`` times; a failing workload records an error and the next one still runs."""

    def __init__(self, peer: str, args: argparse.Namespace, config: dict[str, Any]) -> None:
        self.result: dict[str, Any] = {"peer": peer, "config": config, "workloads": {}}
        self.repeat = args.repeat
        self.only = {w.strip() for w in args.only.split(",") if w.strip()}

    def wanted(self, workload: str) -> bool:
        return workload in self.only

    def fanout(self, n: int, once: Callable[[], float]) -> None:
        """``once`` returns seconds end to end for 1 -> n -> 1."""

        def body(entry: dict[str, Any]) -> None:
            entry.update(n=n, unit="states/s", values=[], seconds=[])
            for i in range(self.repeat):
                self._progress(i)
                seconds = once()
                entry["seconds"].append(round(seconds, 4))
                entry["values"].append(round((n + 2) / seconds, 1))

        self._run("fanout", body)

    def latency(self, count: int, once: Callable[[], float]) -> None:
        """``once`` returns one submit-to-result time in seconds."""

        def body(entry: dict[str, Any]) -> None:
            entry.update(count=count, unit="ms", p50_ms=[], p99_ms=[], mean_ms=[])
            for i in range(self.repeat):
                self._progress(i)
                samples = sorted(once() * 1000 for _ in range(count))
                entry["p50_ms"].append(round(percentile(samples, 50), 3))
                entry["p99_ms"].append(round(percentile(samples, 99), 3))
                entry["mean_ms"].append(round(sum(samples) / len(samples), 3))

        self._run("latency", body)

    def chain(self, length: int, once: Callable[[], float]) -> None:
        """``once`` returns seconds for a chain of ``length`` dependent tasks."""

        def body(entry: dict[str, Any]) -> None:
            entry.update(length=length, unit="ms/hop", values=[])
            for i in range(self.repeat):
                self._progress(i)
                entry["values"].append(round(once() * 1000 / length, 3))

        self._run("chain", body)

    def runs(self, m: int, clients: int, once: Callable[[], float]) -> None:
        """``once`` returns seconds for m 3-task chain runs submitted by ``clients`` concurrent clients."""

        def body(entry: dict[str, Any]) -> None:
            entry.update(m=m, clients=clients, unit="runs/s", values=[], seconds=[])
            for i in range(self.repeat):
                self._progress(i)
                seconds = once()
                entry["seconds"].append(round(seconds, 4))
                entry["values"].append(round(m / seconds, 1))

        self._run("runs", body)

    def _progress(self, index: int) -> None:
        if self.repeat > 1:
            log(f"  repeat {index + 1}/{self.repeat}")

    def _run(self, name: str, body: Callable[[dict[str, Any]], None]) -> None:
        if not self.wanted(name):
            return
        entry: dict[str, Any] = {}
        self.result["workloads"][name] = entry
        log(f"{name}: start")
        started = time.monotonic()
        try:
            body(entry)
        except Exception as exc:
            log(f"{name}: failed: {error_text(exc)}\n{traceback.format_exc()}")
            entry["error"] = error_text(exc)
        except BaseException as exc:  # SIGTERM (SystemExit) or ^C: record it, then stop the whole script
            entry["error"] = f"interrupted: {error_text(exc)}"
            raise
        log(f"{name}: done in {time.monotonic() - started:.1f}s {json.dumps(entry)[:300]}")

    def fail(self, exc: BaseException, detail: str = "") -> None:
        """Setup failed: every workload that did not run records the error."""
        message = error_text(exc) + (f"\n{detail}" if detail else "")
        self.result["error"] = message
        for name in ("fanout", "latency", "chain", "runs"):
            if self.wanted(name):
                self.result["workloads"].setdefault(name, {"error": message})

    def has_errors(self) -> bool:
        return "error" in self.result or any("error" in w for w in self.result["workloads"].values())

    def emit(self) -> None:
        sys.stdout.flush()
        print(json.dumps(self.result), flush=True)
