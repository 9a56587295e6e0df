"""What every check works with: the recording, the scheduler, the runtime process and a client, plus the verdict
type each check returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exosphere.client import StateManager
from exosphere.conformance.process import RuntimeProcess
from exosphere.conformance.recording import Recorder, StreamRecord
from exosphere.conformance.scheduler import SchedulerProcess
from exosphere.errors import ExosphereTimeoutError
from exosphere.models import RunModel, RunStatus

__all__ = ["CheckFailedError", "KitContext", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """The verdict on one obligation: what was expected and what was seen."""

    obligation: str
    passed: bool
    expected: str
    seen: str


class CheckFailedError(Exception):
    """A check cannot go on; its message says what was seen."""


@dataclass
class KitContext:
    recorder: Recorder
    scheduler: SchedulerProcess
    runtime: RuntimeProcess
    sm: StateManager
    namespace: str
    step_timeout_s: float

    async def reconnect_client(self) -> None:
        """A fresh client after the scheduler restarted (the old channel may sit in its reconnect backoff)."""
        old = self.sm
        self.sm = StateManager(self.namespace, self.scheduler.address, self.scheduler.settings.api_key)
        await old.close()

    @property
    def lease_ms(self) -> int:
        return self.scheduler.settings.lease_ms

    def stream(self) -> StreamRecord:
        """The runtime's latest stream; fails the check when there is none that registered."""
        stream = self.recorder.latest_stream()
        if stream is None or stream.registered is None:
            raise CheckFailedError("the runtime holds no registered stream")
        return stream

    def runtime_exit(self) -> str | None:
        """Why the runtime cannot answer any more (it exited), or None while it runs."""
        code = self.runtime.returncode
        return None if code is None else f"the runtime exited with status {code}"

    async def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait for ``predicate``; stops early (False) when the runtime exits."""
        ok = await self.recorder.wait_for(
            lambda: predicate() or self.runtime.returncode is not None, timeout or self.step_timeout_s
        )
        return ok and predicate()

    async def run(
        self,
        graph: str,
        *,
        inputs: Mapping[str, str] | None = None,
        store: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> RunModel:
        """Trigger a run and wait until it is no longer PENDING; a run still pending fails the check."""
        timeout = timeout or self.step_timeout_s
        if why := self.runtime_exit():
            raise CheckFailedError(f"not run: {why}")
        run_id = (await self.sm.trigger(graph, inputs=inputs, store=store)).run_id
        try:
            return await self.sm.wait(run_id, timeout=timeout)
        except ExosphereTimeoutError:
            run = await self.sm.get_run(run_id)
            states = ", ".join(f"{s.identifier} {s.status}" for s in run.states) or "no states"
            why = self.runtime_exit()
            raise CheckFailedError(
                f"run of {graph} still {run.status} after {timeout:g}s ({states})" + (f"; {why}" if why else "")
            ) from None

    @staticmethod
    def describe(run: RunModel) -> str:
        """A run in a few words: status and each state's status, outputs or error."""
        parts = []
        for s in run.states:
            detail = f"error {s.error}" if s.error else f"outputs {s.outputs}"
            parts.append(f"{s.identifier} {s.status} {detail}")
        return f"run {run.status}: " + "; ".join(parts)

    @staticmethod
    def succeeded(run: RunModel) -> bool:
        return run.status is RunStatus.SUCCESS
