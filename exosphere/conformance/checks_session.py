"""Obligations about a session's capacity and liveness: credit, heartbeats when idle, cancel."""

from __future__ import annotations

import itertools

from exosphere.conformance.audit import audit_credit
from exosphere.conformance.context import CheckFailedError, KitContext, Outcome
from exosphere.conformance.graphs import ECHO, FAN_ECHO, FAN_SLEEP
from exosphere.conformance.recording import Direction
from exosphere.models import StateStatus

__all__ = ["check_cancel", "check_credit", "check_heartbeats", "run_credit_load"]

# The credit workload: this many times max_concurrency Sleep states of SLEEP_MS each, at most MAX_LOAD.
LOAD_FACTOR = 2
MAX_LOAD = 200
SLEEP_MS = 150
# Long enough that a cancelled Sleep would still hold its slot when the kit looks.
CANCELLED_SLEEP_MS = 60_000
# The idle period of the heartbeat check, in leases.
IDLE_LEASES = 2.5

CREDIT = (
    "each Execute answered by exactly one Result echoing its state_id, attempt and dispatch_id; never more states "
    "outstanding than max_concurrency"
)


async def run_credit_load(kit: KitContext) -> str:
    """Fill the runtime's credit a few times over with Sleep states; returns what happened, for the credit check."""
    credit = kit.stream().register.max_concurrency  # type: ignore[union-attr]
    count = min(MAX_LOAD, LOAD_FACTOR * credit + 1)
    run = await kit.run(FAN_SLEEP, inputs={"count": str(count)}, store={"ms": str(SLEEP_MS)})
    sleeps = [s for s in run.states if s.identifier == "sleep"]
    done = sum(s.status is StateStatus.SUCCESS for s in sleeps)
    if not kit.succeeded(run) or done != count:
        raise CheckFailedError(f"{count} Sleep states on credit {credit}: run {run.status}, {done} succeeded")
    return f"{count} Sleep({SLEEP_MS} ms) states on credit {credit} all succeeded"


def check_credit(kit: KitContext, load: str) -> Outcome:
    """Judged at the end, over every stream of the whole session; ``load`` says how the credit workload went."""
    audit = audit_credit(kit.recorder)
    peaks = ", ".join(f"stream {n}: peak {p} of {c}" for n, (p, c) in audit.peaks.items())
    seen = f"{load}; {audit.executes} Execute items, {audit.results} results ({audit.cancel_acks} cancel acks); {peaks}"
    if audit.problems:
        return Outcome("credit", False, CREDIT, "; ".join(audit.problems[:5]) + f" ({seen})")
    return Outcome("credit", True, CREDIT, seen)


async def check_heartbeats(kit: KitContext) -> Outcome:
    lease_s = kit.lease_ms / 1000
    idle_s = IDLE_LEASES * lease_s
    expected = (
        f"idle for {idle_s:g}s ({IDLE_LEASES:g} leases of {kit.lease_ms} ms): Heartbeats or KeepAlives keep the "
        "session (the scheduler does not end the stream), then an Echo runs on the same stream"
    )
    rec = kit.recorder
    stream = kit.stream()
    start = rec.now()
    lost = await kit.wait(lambda: stream.closed_at is not None or rec.latest_stream() is not stream, idle_s)
    end = rec.now()
    if lost or kit.runtime_exit():
        why = kit.runtime_exit() or f"stream {stream.number} ended {stream.status or 'and the runtime opened another'}"
        return Outcome("heartbeats", False, expected, f"{why} after {end - start:.2f}s idle")
    beats = [e for e in rec.of(stream.number, since=start) if e.direction is Direction.UP and e.at <= end]
    keepalives = [e for e in rec.of(stream.number, since=start) if e.kind == "keepalive" and e.at <= end]
    times = sorted([start, *(e.at for e in beats), *(e.at for e in keepalives), end])
    longest = max(b - a for a, b in itertools.pairwise(times))
    run = await kit.run(ECHO, inputs={"text": "after the idle period"})
    on_stream = {e.stream for e, item in rec.executes(since=end) if item.run_id == run.run_id}
    # The scheduler itself ends a session silent past its lease (the stream would not be kept); the silence measured
    # here also counts the kit's own pauses on a loaded machine, so it is reported, and the count is what must hold.
    renewals = len(beats) + len(keepalives)
    passed = renewals >= int(IDLE_LEASES) and kit.succeeded(run) and on_stream == {stream.number}
    seen = (
        f"{len(beats)} messages ({', '.join(sorted({e.kind for e in beats})) or 'none'}) and {len(keepalives)} "
        f"KeepAlive calls in {end - start:.2f}s, longest silence {longest:.2f}s; stream {stream.number} kept; "
        f"Echo run {run.status} on stream(s) {sorted(on_stream)}"
    )
    return Outcome("heartbeats", passed, expected, seen)


async def check_cancel(kit: KitContext) -> Outcome:
    rec = kit.recorder
    stream = kit.stream()
    credit = stream.register.max_concurrency  # type: ignore[union-attr]
    grace_s = kit.lease_ms / 1000 + 5
    expected = (
        f"{credit} Sleep({CANCELLED_SLEEP_MS} ms) states fill the credit; their run is cancelled (CancelBatch); the "
        f"runtime stops or ignores them and {credit} new Echo states run within {grace_s:g}s on the same stream"
    )
    since = rec.now()
    trigger = await kit.sm.trigger(FAN_SLEEP, inputs={"count": str(credit)}, store={"ms": str(CANCELLED_SLEEP_MS)})

    def sleeps() -> list[str]:
        return [
            item.state_id
            for _, item in rec.executes(since=since)
            if item.run_id == trigger.run_id and item.node_name == "Sleep"
        ]

    if not await kit.wait(lambda: len(sleeps()) >= credit):
        raise CheckFailedError(f"only {len(sleeps())} of {credit} Sleep states reached the runtime")
    held = set(sleeps())
    cancelled_at = rec.now()
    await kit.sm.cancel_run(trigger.run_id)

    def told() -> set[str]:
        return {
            state_id
            for e in rec.of(stream.number, since=cancelled_at)
            if e.kind == "cancel" and e.down is not None
            for state_id in e.down.cancel.state_ids
        }

    if not await kit.wait(lambda: held <= told()):
        raise CheckFailedError(f"the scheduler sent CancelBatch for {len(told() & held)} of {len(held)} states")
    run = await kit.run(FAN_ECHO, inputs={"count": str(credit)}, timeout=grace_s)
    finished_at = rec.now()
    acks = [
        r.WhichOneof("outcome") or "none"
        for e, r in rec.results(stream.number, since=cancelled_at)
        if r.state_id in held and e.at <= finished_at
    ]
    sleep_run = await kit.sm.get_run(trigger.run_id)
    sleep_states = {s.status for s in sleep_run.states if s.identifier == "sleep"}
    passed = (
        kit.succeeded(run) and rec.latest_stream() is stream and stream.closed_at is None and len(acks) <= len(held)
    )
    answers = ", ".join(sorted(set(acks))) or "ignored"
    seen = (
        f"CancelBatch for {len(held)} states; the runtime answered {len(acks)} of them ({answers}); "
        f"{credit} Echo states: run {run.status} {finished_at - cancelled_at:.2f}s after the cancel; "
        f"Sleep states {sorted(str(s.value) for s in sleep_states)}; "
        f"stream {'kept' if rec.latest_stream() is stream else 'lost'}"
    )
    return Outcome("cancel", passed, expected, seen)
