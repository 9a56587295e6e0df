"""Obligations across the scheduler's stop and restart: drain, then reconnect.

Drain, as the scheduler does it on SIGTERM: it sends ``Drain{grace_ms}`` on every runtime stream and keeps taking
results until the runtime closes its side or the grace ends. The runtime answers ``Draining``, takes no more work,
sends the results of what it holds, half-closes its stream, and later reconnects with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

from exosphere.conformance.context import CheckFailedError, KitContext, Outcome
from exosphere.conformance.graphs import ECHO, SLEEP
from exosphere.conformance.recording import StreamRecord, WireEvent
from exosphere.errors import ExosphereError
from exosphere.models import RunStatus

__all__ = ["DrainStep", "check_drain", "check_reconnect", "judge_drain", "stop_while_busy"]

# Long enough that the scheduler, even on a loaded machine, sends Drain while the runtime still holds it.
HELD_SLEEP_MS = 1500

DRAIN = (
    f"while a Sleep({HELD_SLEEP_MS} ms) runs, the scheduler stops: Drain{{grace_ms}} -> the runtime sends Draining, "
    "its Result, then half-closes, before the grace ends; after the restart the state is SUCCESS, not run again"
)
RECONNECT = (
    "after the scheduler restarts (same address, same database) the runtime opens a new stream, registers with the "
    "same runtime_id, and runs a new Echo state"
)


@dataclass
class DrainStep:
    """What happened when the kit stopped the scheduler under a busy runtime."""

    stream: StreamRecord
    state_id: str
    dispatch_id: int
    run_id: str
    stopped_at: float
    exit_status: int
    restarted_at: float = 0.0


async def stop_while_busy(kit: KitContext) -> DrainStep:
    """Start a Sleep, SIGTERM the scheduler while the runtime holds it, then restart the scheduler."""
    rec = kit.recorder
    stream = kit.stream()
    since = rec.now()
    run_id = (await kit.sm.trigger(SLEEP, inputs={"ms": str(HELD_SLEEP_MS)})).run_id

    def held() -> list[tuple[WireEvent, int, str]]:
        return [(e, i.dispatch_id, i.state_id) for e, i in rec.executes(since=since) if i.run_id == run_id]

    if not await kit.wait(lambda: bool(held())):
        raise CheckFailedError("the Sleep state never reached the runtime")
    _, dispatch_id, state_id = held()[0]
    stopped_at = rec.now()
    status = await kit.scheduler.stop()
    step = DrainStep(stream, state_id, dispatch_id, run_id, stopped_at, status)
    await kit.scheduler.restart()
    step.restarted_at = rec.now()
    await kit.reconnect_client()
    return step


def _first(events: list[WireEvent], kind: str, after: float = 0.0) -> WireEvent | None:
    return next((e for e in events if e.kind == kind and e.at >= after), None)


def judge_drain(events: list[WireEvent], step: DrainStep) -> tuple[list[str], list[str]]:
    """What the stream showed from the stop on (``events``), and what is wrong with it: (sequence, problems)."""
    drain = _first(events, "drain")
    closed = _first(events, "closed")
    end = closed.at if closed is not None else step.restarted_at
    problems = []
    sequence = []
    if drain is None or drain.down is None:
        problems.append("the scheduler sent no Drain")
        after = step.stopped_at
    else:
        sequence.append(f"drain(grace {drain.down.drain.grace_ms} ms)")
        after = drain.at
    draining = _first(events, "draining", after)
    result = next(
        (
            e
            for e in events
            if e.kind == "results" and e.up is not None and e.at >= after
            for r in e.up.results.results
            if r.dispatch_id == step.dispatch_id
        ),
        None,
    )
    early = [e for e in events if e.kind == "results" and e.at < after and e.up is not None and any(
        r.dispatch_id == step.dispatch_id for r in e.up.results.results
    )]  # fmt: skip
    if early:
        problems.append("the Sleep's result came before the Drain (the scheduler was slow to drain): inconclusive")
    half_close = _first(events, "half_close", after)
    for name, event in (("draining", draining), ("result", result), ("half-close", half_close)):
        if event is None or event.at > end:
            problems.append(f"no {name} before the stream ended")
        else:
            sequence.append(f"{name} +{event.at - step.stopped_at:.2f}s")
    if draining and result and draining.at > result.at:
        problems.append("Draining came after the result")
    if half_close and result and half_close.at < result.at:
        problems.append("half-closed before sending the result")
    new_work = [e for e in events if e.kind == "execute" and draining is not None and e.at > draining.at]
    if new_work:
        problems.append(f"{len(new_work)} Execute batches after Draining")
    sequence.append(f"closed {closed.detail if closed else 'never'}")
    if step.exit_status != 0:
        problems.append(f"the scheduler exited with status {step.exit_status}")
    return sequence, problems


async def check_drain(kit: KitContext, step: DrainStep) -> Outcome:
    rec = kit.recorder
    events = [e for e in rec.of(step.stream.number, since=step.stopped_at) if e.at <= step.restarted_at]
    sequence, problems = judge_drain(events, step)
    try:
        # A result committed within the grace shows at once; a state requeued would run again.
        run = await kit.sm.get_run(step.run_id)
        redispatched = [i for _, i in rec.executes(since=step.stopped_at) if i.state_id == step.state_id]
        if run.status is not RunStatus.SUCCESS:
            problems.append(f"after the restart the Sleep run is {run.status}: its result was not committed")
        if redispatched:
            problems.append("the held state was dispatched again after the restart (its result was lost)")
    except ExosphereError as exc:  # read from the restarted scheduler: a failure is the finding
        problems.append(f"the Sleep run could not be read after the restart: {exc}")
    seen = " -> ".join(sequence) + (f"; {'; '.join(problems)}" if problems else "; state SUCCESS, run once")
    return Outcome("drain", not problems, DRAIN, seen)


async def check_reconnect(kit: KitContext, step: DrainStep) -> Outcome:
    rec = kit.recorder
    old = step.stream

    def reconnected() -> bool:
        latest = rec.latest_stream()
        return latest is not None and latest.number > old.number and latest.registered is not None

    if not await kit.wait(reconnected):
        latest = rec.latest_stream()
        tried = latest.number - old.number if latest is not None else 0
        why = kit.runtime_exit() or f"{tried} new streams opened, none registered"
        return Outcome("reconnect", False, RECONNECT, f"{why}, {rec.now() - step.restarted_at:.2f}s after the restart")
    stream = kit.stream()
    assert stream.register is not None and old.register is not None
    after = stream.opened_at - step.restarted_at
    same_id = stream.register.runtime_id == old.register.runtime_id
    run = await kit.run(ECHO, inputs={"text": "after the restart"})
    on_stream = {e.stream for e, item in rec.executes() if item.run_id == run.run_id}
    passed = same_id and kit.succeeded(run) and on_stream == {stream.number}
    seen = (
        f"stream {stream.number} registered {after:.2f}s after the restart, runtime_id "
        f"{'the same' if same_id else f'changed to {stream.register.runtime_id!r}'}; Echo run {run.status} on "
        f"stream(s) {sorted(on_stream)}"
    )
    return Outcome("reconnect", passed, RECONNECT, seen)
