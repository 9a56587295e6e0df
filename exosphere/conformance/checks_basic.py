"""Obligations a runtime meets on one healthy stream: registration, outputs (one, several, store writes), errors."""

from __future__ import annotations

from exosphere.conformance.context import CheckFailedError, KitContext, Outcome
from exosphere.conformance.graphs import ECHO, FAIL, FAN_ECHO, STORE, STORE_KEY
from exosphere.conformance.recording import Direction
from exosphere.conformance.spec import ERROR_TYPE, NODES, check_schema
from exosphere.models import RunStatus, StateStatus

__all__ = ["check_errors", "check_fan_out", "check_outputs", "check_registration", "check_store_writes"]

REGISTRATION = (
    "a Connect stream whose first message is Register (the kit's namespace, a runtime_id, max_concurrency >= 1, "
    "the nodes " + ", ".join(n.name for n in NODES) + " with their documented string fields), answered Registered"
)


async def check_registration(kit: KitContext, startup_timeout_s: float) -> Outcome:
    rec = kit.recorder

    def answered() -> bool:
        first = rec.streams.get(1)
        return first is not None and (first.registered is not None or first.closed_at is not None)

    if not await kit.wait(answered, startup_timeout_s):
        why = kit.runtime_exit() or ("no Connect stream" if 1 not in rec.streams else "no answer to a Register")
        return Outcome("registration", False, REGISTRATION, f"{why} within {startup_timeout_s:g}s")
    stream = rec.streams[1]
    first = next((e for e in rec.of(1) if e.direction is Direction.UP), None)
    problems = []
    if first is not None and first.kind != "register":
        problems.append(f"the first message was {first.kind}, not register")
    register = stream.register
    if register is None:
        return Outcome("registration", False, REGISTRATION, "; ".join([*problems, f"stream ended {stream.status}"]))
    if register.namespace != kit.namespace:
        problems.append(f"namespace {register.namespace!r}, expected {kit.namespace!r} (EXOSPHERE_NAMESPACE)")
    if not register.runtime_id:
        problems.append("no runtime_id (needed to recognise the runtime when it reconnects)")
    if register.max_concurrency < 1:
        problems.append(f"max_concurrency {register.max_concurrency}")
    hosted = {schema.name: schema for schema in register.nodes}
    for spec in NODES:
        if spec.name not in hosted:
            problems.append(f"node {spec.name} missing")
        else:
            problems.extend(check_schema(hosted[spec.name], spec))
    if stream.registered is None:
        problems.append(f"the scheduler refused it: {stream.status}")
    if problems:
        return Outcome("registration", False, REGISTRATION, "; ".join(problems))
    assert stream.registered is not None
    return Outcome(
        "registration",
        True,
        REGISTRATION,
        f"Registered session {stream.registered.session_id[:8]}, runtime_id {register.runtime_id!r}, "
        f"max_concurrency {register.max_concurrency}, sdk {register.sdk_version!r}, {len(register.nodes)} nodes",
    )


async def check_outputs(kit: KitContext) -> Outcome:
    text = 'héllo, conformance ✓ {"json": [1]}'
    expected = f"Echo(text={text!r}) returns one output {{'text': {text!r}}}; the run SUCCESS"
    run = await kit.run(ECHO, inputs={"text": text})
    outputs = run.state("echo").outputs if run.states else None
    passed = kit.succeeded(run) and outputs == [{"text": text}]
    return Outcome("outputs", passed, expected, kit.describe(run))


async def check_fan_out(kit: KitContext) -> Outcome:
    expected = "FanOut(count=3) returns 3 outputs item=0,1,2; 3 Echo states run on them; the run SUCCESS"
    run = await kit.run(FAN_ECHO, inputs={"count": "3"})
    fan = [s for s in run.states if s.identifier == "fan"]
    echoes = sorted(out.get("text", "") for s in run.states if s.identifier == "echo" for out in s.outputs)
    passed = (
        kit.succeeded(run)
        and len(fan) == 1
        and fan[0].outputs == [{"item": "0"}, {"item": "1"}, {"item": "2"}]
        and echoes == ["0", "1", "2"]
    )
    seen = f"run {run.status}: FanOut outputs {fan[0].outputs if fan else None}, Echo texts {echoes}"
    return Outcome("fan-out", passed, expected, seen)


async def check_store_writes(kit: KitContext) -> Outcome:
    value = "written by the runtime ✓"
    expected = (
        f"StoreWrite(key={STORE_KEY!r}, value={value!r}) writes the run's store; the next node reads it; run SUCCESS"
    )
    run = await kit.run(STORE, inputs={"key": STORE_KEY, "value": value})
    echo = [out.get("text") for s in run.states if s.identifier == "echo" for out in s.outputs]
    stored = run.store.get(STORE_KEY)
    passed = kit.succeeded(run) and stored == value and echo == [value]
    return Outcome(
        "store writes", passed, expected, f"run {run.status}: store {STORE_KEY}={stored!r}, Echo read {echo}"
    )


async def check_errors(kit: KitContext) -> Outcome:
    message = "conformance failure 42: ünïcode"
    expected = f"Fail(message={message!r}) answered errored, message {message!r}, type {ERROR_TYPE!r}; state ERRORED"
    run = await kit.run(FAIL, inputs={"message": message})
    if not run.states:
        raise CheckFailedError(f"run {run.status} without states")
    state = run.state("fail")
    wire = [r for _, r in kit.recorder.results() if r.state_id == state.state_id]
    outcomes = [r.WhichOneof("outcome") for r in wire]
    error = state.error or {}
    passed = (
        run.status is RunStatus.FAILED
        and state.status is StateStatus.ERRORED
        and outcomes == ["errored"]
        and wire[0].errored.message == message
        and wire[0].errored.type == ERROR_TYPE
    )
    seen = (
        f"run {run.status}, state {state.status}; on the wire {outcomes or 'no result'}"
        + (f" message {wire[0].errored.message!r} type {wire[0].errored.type!r}" if outcomes == ["errored"] else "")
        + f"; stored error type {error.get('type')!r}"
    )
    return Outcome("errors", passed, expected, seen)
