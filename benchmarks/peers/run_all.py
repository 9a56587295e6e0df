"""Run the Exosphere workloads on Celery+Redis, Dask distributed and Temporal; combine their JSON.

From the repo root with the project's python::

    python benchmarks/peers/run_all.py [--quick] [--repeat R] [--only celery,dask,temporal]

Makes sure ``benchmarks/.peers/venv`` and ``redis-server`` exist (see ``setup.py``), runs each peer script with the
peers venv's python as a subprocess (one at a time, so they do not compete for the 2 cores), prints the combined
JSON on stdout and writes ``benchmarks/results/peers.json``. The bench harness imports :func:`run_peers`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.peers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.setup import SetupError, ensure_setup

PEERS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PEERS_DIR.parent / "results"
PEERS = ("celery", "dask", "temporal")
SCRIPTS = {"celery": "celery_bench.py", "dask": "dask_bench.py", "temporal": "temporal_bench.py"}
TIMEOUT_SECONDS = 15 * 60
# Full sizes are the Exosphere definitions (N=10,000, 1,000 latency runs, chain 100, 10,000 runs); Temporal gets
# smaller ones (its script's own defaults, reported in its JSON under config): N=1,000 (the dev server's SQLite
# store cannot schedule 10,000 activities in one workflow task), 300 latency runs and 2,000 runs.
QUICK_ARGS = ["--quick"]


def _log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the peer script (it stops its own servers in ``finally``), SIGKILL its process group if it hangs.

    Returns what it printed on stdout meanwhile (its JSON with the workloads finished so far)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        stdout, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the script's own group: it and anything it left behind
        stdout, _ = proc.communicate(timeout=10)
    return stdout or ""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While peers run, SIGTERM raises SystemExit so that the running peer script is stopped (it then stops its
    servers) instead of being orphaned. Only when SIGTERM is not handled already and we are on the main thread."""
    installed = False
    previous: Any = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def handler(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, handler)
        installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run_peer(peer: str, python: str, quick: bool, repeat: int, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    argv = [python, str(PEERS_DIR / SCRIPTS[peer]), "--repeat", str(repeat), *(QUICK_ARGS if quick else [])]
    _log(f"{peer}: {' '.join(argv[1:])}")
    started = time.monotonic()
    # The script's stderr (progress) goes straight to ours; stdout carries the JSON.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=PEERS_DIR, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout = _stop(proc)
        result = _last_json_line(stdout) or {"peer": peer, "workloads": {}}
        result["error"] = f"timed out after {timeout:.0f}s"
        return result
    except BaseException:
        _stop(proc)
        raise
    parsed = _last_json_line(stdout)
    if parsed is None:
        return {"peer": peer, "workloads": {}, "error": f"exit code {proc.returncode} and no JSON on stdout"}
    result = parsed
    result["seconds"] = round(time.monotonic() - started, 1)
    if proc.returncode != 0 and "error" not in result:
        result["exit_code"] = proc.returncode
    return result


def run_peers(quick: bool, repeat: int, only: list[str] | None) -> dict[str, Any]:
    """Run the chosen peers (all by default) one after another; return ``{peer: its JSON}``.

    A peer that cannot run has ``{"error": ...}`` (and its workloads may each carry one); the others still run.
    """
    chosen = list(only) if only else list(PEERS)
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    try:
        info = ensure_setup(_log)
    except (SetupError, subprocess.CalledProcessError, OSError) as exc:
        return {peer: {"peer": peer, "workloads": {}, "error": f"setup failed: {exc}"} for peer in chosen}
    python = info["python"]
    assert python is not None
    results: dict[str, Any] = {}
    with _sigterm_raises():
        _run_chosen(chosen, info, python, quick, repeat, results)
    return results


def _run_chosen(
    chosen: list[str], info: dict[str, str | None], python: str, quick: bool, repeat: int, results: dict[str, Any]
) -> None:
    for peer in chosen:
        if peer == "celery" and info.get("redis_server") is None:
            results[peer] = {"peer": peer, "workloads": {}, "error": info.get("redis_server_error", "no redis-server")}
            continue
        if peer == "temporal" and info.get("temporal") is None:
            results[peer] = {"peer": peer, "workloads": {}, "error": info.get("temporal_error", "no temporal CLI")}
            continue
        results[peer] = run_peer(peer, python, quick, repeat)
        _log(f"{peer}: {'error: ' + results[peer]['error'] if 'error' in results[peer] else 'done'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=1,000 fan-out, 200 latency runs, 1,000 runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(PEERS)}")
    args = parser.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    started = time.monotonic()
    peers = run_peers(quick=args.quick, repeat=args.repeat, only=only)
    combined = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {"quick": args.quick, "repeat": args.repeat, "only": only},
        "seconds": round(time.monotonic() - started, 1),
        "peers": peers,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "peers.json").write_text(json.dumps(combined, indent=2))
    print(json.dumps(combined))
    _log(f"wrote {RESULTS_DIR / 'peers.json'}")
    return 0 if all("error" not in r for r in peers.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
