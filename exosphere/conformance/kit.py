"""``run_conformance``: a real scheduler, the runtime under test behind the recording proxy, every obligation.

The order matters: the runtime registers, runs outputs, fan-out, store writes and errors on a healthy stream,
fills its credit, stays idle past its lease, has states cancelled, and then the scheduler is stopped (drain) and
restarted on the same port and database (reconnect). The credit audit reads the whole recording at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exosphere.client import StateManager
from exosphere.conformance.checks_basic import (
    REGISTRATION,
    check_errors,
    check_fan_out,
    check_outputs,
    check_registration,
    check_store_writes,
)
from exosphere.conformance.checks_lifecycle import DRAIN, RECONNECT, check_drain, check_reconnect, stop_while_busy
from exosphere.conformance.checks_session import CREDIT, check_cancel, check_credit, check_heartbeats, run_credit_load
from exosphere.conformance.context import CheckFailedError, KitContext, Outcome
from exosphere.conformance.graphs import save_graphs
from exosphere.conformance.process import RuntimeProcess
from exosphere.conformance.proxy import RecordingProxy
from exosphere.conformance.recording import Recorder
from exosphere.conformance.scheduler import SchedulerError, SchedulerProcess, SchedulerSettings
from exosphere.errors import ExosphereError

__all__ = ["OBLIGATIONS", "KitOptions", "Report", "run_conformance"]

OBLIGATIONS = (
    "registration",
    "outputs",
    "fan-out",
    "store writes",
    "errors",
    "credit",
    "heartbeats",
    "cancel",
    "drain",
    "reconnect",
)

# What each obligation expects, in short: for the lines of checks that could not run to their end.
EXPECTED = {
    "registration": REGISTRATION,
    "outputs": "Echo returns its text unchanged, as one output",
    "fan-out": "FanOut(count=3) returns 3 outputs and 3 Echo states run on them",
    "store writes": "StoreWrite writes the run's store and the next node reads the value",
    "errors": "Fail answers errored with its message and type ConformanceError",
    "credit": CREDIT,
    "heartbeats": "while idle, a Heartbeat or KeepAlive at least once per lease; the same stream kept",
    "cancel": "cancelled states stop (or are ignored) and the runtime's credit is free again",
    "drain": DRAIN,
    "reconnect": RECONNECT,
}


@dataclass(frozen=True)
class KitOptions:
    namespace: str = "conformance"
    # How long the runtime may take to connect and register, and any later step to finish.
    startup_timeout_s: float = 30.0
    step_timeout_s: float = 20.0
    # What the scheduler asks of the runtime: short, so the whole kit takes seconds.
    heartbeat_interval_ms: int = 250
    lease_ms: int = 1000
    drain_grace_ms: int = 3000
    # Keep the scheduler's and runtime's logs and database in this directory (else a temporary one, removed).
    keep_dir: Path | None = None


@dataclass
class Report:
    outcomes: list[Outcome]
    directory: Path
    runtime_log_tail: list[str] = field(default_factory=list)
    runtime_status: int | None = None
    kept: bool = False

    @property
    def passed(self) -> bool:
        return len(self.outcomes) == len(OBLIGATIONS) and all(o.passed for o in self.outcomes)


async def _guard(name: str, check: Awaitable[Outcome]) -> Outcome:
    try:
        return await check
    except (CheckFailedError, ExosphereError) as exc:  # SchedulerError is one
        return Outcome(name, False, EXPECTED[name], str(exc) or type(exc).__name__)


async def _checks(kit: KitContext, options: KitOptions) -> list[Outcome]:
    done: dict[str, Outcome] = {}
    done["registration"] = await check_registration(kit, options.startup_timeout_s)

    def skipped(why: str) -> list[Outcome]:
        return [done.get(name) or Outcome(name, False, EXPECTED[name], why) for name in OBLIGATIONS]

    if not done["registration"].passed and kit.recorder.streams.get(1, None) is None:
        return skipped("not run: the runtime never registered")
    try:
        await save_graphs(kit.sm, kit.namespace)
    except ExosphereError as exc:
        return skipped(f"not run: the conformance graphs cannot be saved on these nodes: {exc}")
    for name, check in (
        ("outputs", check_outputs),
        ("fan-out", check_fan_out),
        ("store writes", check_store_writes),
        ("errors", check_errors),
    ):
        done[name] = await _guard(name, check(kit))
    load: str | None = None
    try:
        load = await run_credit_load(kit)
    except (CheckFailedError, ExosphereError) as exc:
        done["credit"] = Outcome("credit", False, CREDIT, str(exc))
    done["heartbeats"] = await _guard("heartbeats", check_heartbeats(kit))
    done["cancel"] = await _guard("cancel", check_cancel(kit))
    try:
        step = await stop_while_busy(kit)
    except (CheckFailedError, ExosphereError) as exc:  # SchedulerError is one
        done["drain"] = Outcome("drain", False, DRAIN, str(exc))
        done["reconnect"] = Outcome("reconnect", False, RECONNECT, f"not run: {exc}")
    else:
        done["drain"] = await _guard("drain", check_drain(kit, step))
        done["reconnect"] = await _guard("reconnect", check_reconnect(kit, step))
    if load is not None:  # judged at the end, over every stream of the whole session
        done["credit"] = check_credit(kit, load)
    return [done[name] for name in OBLIGATIONS]


async def run_conformance(command: Sequence[str], options: KitOptions | None = None) -> Report:
    """Run ``command`` as a runtime against a fresh scheduler and judge it on every obligation.

    Raises ``SchedulerError`` when the scheduler cannot start and ``OSError`` when ``command`` cannot be run.
    """
    options = options or KitOptions()
    if importlib.util.find_spec("exosphere_server") is None:
        raise SchedulerError("the conformance kit runs exosphere-server: pip install 'exosphere[server]'")
    if options.keep_dir is not None:
        options.keep_dir.mkdir(parents=True, exist_ok=True)
        directory = options.keep_dir
    else:
        directory = Path(tempfile.mkdtemp(prefix="exosphere-conformance-"))
    api_key = secrets.token_urlsafe(16)
    settings = SchedulerSettings(api_key, options.heartbeat_interval_ms, options.lease_ms, options.drain_grace_ms)
    recorder = Recorder()
    scheduler = SchedulerProcess(directory, settings)
    report = Report([], directory, kept=options.keep_dir is not None)
    try:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(scheduler.close)
            await scheduler.start()
            proxy = await RecordingProxy.start(recorder, upstream=lambda: scheduler.address)
            stack.push_async_callback(proxy.close)
            env = {
                "EXOSPHERE_SCHEDULER_ADDRESS": proxy.address,
                "EXOSPHERE_API_KEY": api_key,
                "EXOSPHERE_NAMESPACE": options.namespace,
                # What exospherehost programs read (exospherehost/): the same address, as a URL.
                "EXOSPHERE_STATE_MANAGER_URI": f"http://{proxy.address}",
            }
            runtime = await RuntimeProcess.start(command, env=env, log_path=directory / "runtime.log")
            sm = StateManager(options.namespace, scheduler.address, api_key)
            kit = KitContext(recorder, scheduler, runtime, sm, options.namespace, options.step_timeout_s)
            stack.push_async_callback(lambda: kit.sm.close())  # the client of the restarted scheduler, by then
            try:
                report.outcomes = await _checks(kit, options)
            finally:
                report.runtime_status = await runtime.stop()
                report.runtime_log_tail = runtime.tail()
    finally:
        if options.keep_dir is None and report.passed:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            report.kept = True
            recorder.write(directory / "wire.log")
    return report
