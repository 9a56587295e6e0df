"""CronScheduler against a real Engine over an InMemoryStore, with a fake clock: no sockets, no real waiting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

from exosphere.errors import GraphValidationError
from server.cron import CronScheduler
from server.engine import Engine
from server.models import CronSpec, FieldSpec, GraphNodeSpec, GraphSpec, NodeSchema, StoreConfigSpec
from server.secrets import SecretBox, load_or_create_key
from server.store import InMemoryStore
from tests.helpers.waiting import assert_eventually

NS = "cron-ns"
ECHO = NodeSchema(
    namespace=NS,
    name="Echo",
    inputs=(FieldSpec("text", required=True),),
    outputs=(FieldSpec("text", required=True),),
    secrets=(),
)


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC date."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class FakeClock:
    """Epoch seconds set by the test; ``sleep`` returns once the test moved the clock past its end."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = now
        self._moved.set()
        self._moved = asyncio.Event()

    def advance(self, seconds: float) -> None:
        self.set(self.now + seconds)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        end = self.now + delay
        while self.now < end:
            await self._moved.wait()


async def never(_: float) -> None:
    """A sleep that never ends: only tick() (and reload) drive the scheduler."""
    await asyncio.Event().wait()


def graph(name: str = "g", triggers: list[CronSpec] | None = None, **kwargs: object) -> GraphSpec:
    return GraphSpec(
        namespace=NS,
        name=name,
        nodes=[GraphNodeSpec(node_name="Echo", namespace=NS, identifier="echo", inputs={"text": "hi"})],
        triggers=triggers if triggers is not None else [CronSpec(expression="* * * * *")],
        **kwargs,
    )


async def new_engine(store: InMemoryStore) -> Engine:
    engine = Engine(store, secret_box=SecretBox(load_or_create_key(None)))
    engine.runtimes.nodes[NS, "Echo"] = ECHO  # as if a runtime had registered it (recovery compiles graphs with it)
    await engine.start()
    return engine


class Harness:
    """One engine + scheduler pair over a store that outlives them (a "restart" builds a new pair)."""

    def __init__(self, clock: FakeClock, sleep: Callable[[float], Awaitable[None]] = never) -> None:
        self.store = InMemoryStore()
        self.clock = clock
        self.sleep = sleep
        self.engine: Engine | None = None
        self.cron: CronScheduler | None = None

    async def up(self) -> CronScheduler:
        self.engine = await new_engine(self.store)
        self.cron = CronScheduler(self.engine, clock=self.clock, sleep=self.sleep)
        self.engine.on_graph_saved = self.cron.reload
        await self.cron.start()
        return self.cron

    async def down(self) -> None:
        assert self.engine is not None and self.cron is not None
        await self.cron.stop()
        await self.engine.stop()
        self.engine = self.cron = None

    async def restart(self) -> CronScheduler:
        await self.down()
        return await self.up()

    @property
    def eng(self) -> Engine:
        assert self.engine is not None
        return self.engine

    @property
    def sched(self) -> CronScheduler:
        assert self.cron is not None
        return self.cron

    def runs(self, name: str | None = "g") -> int:
        return len(self.eng.list_runs(NS, name, 1000, None))

    def run_ids(self) -> set[str]:
        return {r.run_id for r in self.eng.list_runs(NS, None, 1000, None)}

    async def tick(self) -> list[str]:
        """Fire what is due now; the run ids started. Counted from the store, not from tick()'s answer: the timer
        task wakes on every reload and may be the one that fires (it holds the same lock, so it is done by then)."""
        before = self.run_ids()
        await self.sched.tick()
        return sorted(self.run_ids() - before)

    async def at(self, when: float) -> list[str]:
        self.clock.set(when)
        return await self.tick()


T0 = ts(2025, 1, 6, 10, 0, 30)  # a Monday, half a minute past 10:00 UTC


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness(FakeClock(T0))
    await harness.up()
    try:
        yield harness
    finally:
        if harness.engine is not None:
            await harness.down()


async def test_fires_exactly_once_per_minute(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    assert await h.at(T0 + 20) == []  # 10:00:50: 10:00 was before the trigger existed
    assert h.runs() == 0
    assert len(await h.at(ts(2025, 1, 6, 10, 1))) == 1  # exactly on the due time
    assert await h.at(ts(2025, 1, 6, 10, 1, 0) + 0.5) == []
    assert await h.at(ts(2025, 1, 6, 10, 1, 59)) == []
    for minute in range(2, 7):
        assert len(await h.at(ts(2025, 1, 6, 10, minute, 3))) == 1
        assert await h.tick() == []  # ticking again at the same instant fires nothing
    assert h.runs() == 6
    assert h.sched.fired == 6


async def test_run_gets_the_triggers_inputs_and_store(h: Harness) -> None:
    trigger = CronSpec(expression="* * * * *", inputs={"text": "from-cron"}, store={"k": "v"})
    await h.eng.upsert_graph(graph(triggers=[trigger], store_config=StoreConfigSpec(required_keys=["k"])), None)
    [run_id] = await h.at(T0 + 60)
    run, states, _ = h.eng.get_run(run_id)
    assert run.store == {"k": "v"}
    assert states[0].inputs == {"text": "from-cron"}


async def test_restart_around_a_due_time_does_not_fire_twice(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    await h.at(ts(2025, 1, 6, 10, 1, 0))
    assert h.runs() == 1
    await h.restart()  # still 10:01:00: the run and its watermark were committed together
    await h.tick()
    await h.restart()
    assert h.runs() == 1
    h.clock.set(ts(2025, 1, 6, 10, 1, 59))
    await h.restart()
    assert h.runs() == 1
    h.clock.set(ts(2025, 1, 6, 10, 2, 0))
    await h.restart()  # down across 10:02: start() fires it
    assert h.runs() == 2
    await h.restart()
    await h.restart()
    assert h.runs() == 2
    assert len(await h.at(ts(2025, 1, 6, 10, 3, 1))) == 1
    assert h.runs() == 3


async def test_a_run_started_while_stopping_is_committed_with_its_watermark(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    h.clock.set(ts(2025, 1, 6, 10, 1))
    tick = asyncio.ensure_future(h.sched.tick())
    await asyncio.sleep(0)  # the run is created, its commit not yet done
    tick.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tick
    await h.restart()  # Engine.stop() commits the pending run and watermark together
    assert h.runs() == 1
    await h.tick()
    assert h.runs() == 1


async def test_downtime_over_five_due_times_fires_once(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    await h.at(ts(2025, 1, 6, 10, 1, 10))
    assert h.runs() == 1
    await h.down()
    h.clock.set(ts(2025, 1, 6, 10, 6, 40))  # 10:02 .. 10:06 passed while down
    with caplog.at_level(logging.WARNING, logger="server.cron"):
        await h.up()
    assert h.runs() == 2
    assert any("missed due times" in r.getMessage() for r in caplog.records)
    assert await h.tick() == []
    await h.restart()
    assert h.runs() == 2
    assert len(await h.at(ts(2025, 1, 6, 10, 7))) == 1
    assert h.runs() == 3


async def test_trigger_saved_then_down_across_a_due_time_fires_on_start(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)  # 10:00:30; its starting watermark is committed
    await asyncio.sleep(0)
    await h.down()
    h.clock.set(ts(2025, 1, 6, 10, 3, 5))
    await h.up()
    assert h.runs() == 1


async def test_new_trigger_does_not_fire_for_the_past(h: Harness) -> None:
    h.clock.set(ts(2025, 1, 6, 10, 59, 59))
    await h.eng.upsert_graph(graph(triggers=[CronSpec(expression="0 * * * *")]), None)  # hourly
    assert await h.tick() == []
    await h.restart()
    assert h.runs() == 0
    assert len(await h.at(ts(2025, 1, 6, 11, 0))) == 1


async def test_timezone_paris_weekdays_at_nine(h: Harness) -> None:
    h.clock.set(ts(2025, 3, 27, 12, 0))  # Thursday, the week of the change to summer time (Sunday 30 March)
    trigger = CronSpec(expression="0 9 * * 1-5", timezone="Europe/Paris")
    await h.eng.upsert_graph(graph(triggers=[trigger]), None)
    fired_at = []
    for _ in range(3):
        wakeup = h.sched.next_wakeup()
        assert wakeup is not None
        assert await h.at(wakeup - 1) == []
        assert len(await h.at(wakeup)) == 1
        fired_at.append(datetime.fromtimestamp(wakeup, UTC))
    assert fired_at == [
        datetime(2025, 3, 28, 8, 0, tzinfo=UTC),  # Friday 09:00 CET (UTC+1)
        datetime(2025, 3, 31, 7, 0, tzinfo=UTC),  # Monday 09:00 CEST (UTC+2); no weekend runs
        datetime(2025, 4, 1, 7, 0, tzinfo=UTC),
    ]
    assert h.runs() == 3


async def test_removing_the_trigger_stops_it(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    await h.at(ts(2025, 1, 6, 10, 1))
    await h.eng.upsert_graph(graph(triggers=[]), None)
    assert h.sched.triggers() == []
    assert await h.at(ts(2025, 1, 6, 10, 2)) == []
    await h.restart()
    assert await h.at(ts(2025, 1, 6, 10, 3)) == []
    assert h.runs() == 1
    # Put back later: it starts anew instead of catching up on the time it was gone.
    h.clock.set(ts(2025, 1, 6, 10, 5, 30))
    await h.eng.upsert_graph(graph(), secrets=None)
    assert await h.tick() == []
    assert len(await h.at(ts(2025, 1, 6, 10, 6))) == 1


async def test_deleting_the_graph_stops_it(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    await h.eng.upsert_graph(graph("other"), secrets=None)
    await h.at(ts(2025, 1, 6, 10, 1))
    await h.eng.delete_graph(NS, "g", force=True)
    assert [g for _, g, _ in h.sched.triggers()] == ["other"]
    assert len(await h.at(ts(2025, 1, 6, 10, 2))) == 1
    assert h.runs("other") == 2
    assert h.runs("g") == 1


async def test_editing_the_graph_keeps_the_schedule(h: Harness) -> None:
    await h.eng.upsert_graph(graph(), secrets=None)
    await h.at(ts(2025, 1, 6, 10, 1))
    changed = CronSpec(expression="*  *  * * *", inputs={"text": "new"})  # same schedule, other inputs
    await h.eng.upsert_graph(graph(triggers=[changed]), None)
    assert await h.tick() == []
    [run_id] = await h.at(ts(2025, 1, 6, 10, 2))
    assert h.eng.get_run(run_id)[1][0].inputs == {"text": "new"}


async def test_two_triggers_with_the_same_schedule_both_fire(h: Harness) -> None:
    triggers = [
        CronSpec(expression="* * * * *", inputs={"text": "a"}),
        CronSpec(expression="* * * * *", inputs={"text": "b"}),
    ]
    await h.eng.upsert_graph(graph(triggers=triggers), None)
    run_ids = await h.at(ts(2025, 1, 6, 10, 1))
    assert sorted(h.eng.get_run(r)[1][0].inputs["text"] for r in run_ids) == ["a", "b"]
    await h.restart()
    assert h.runs() == 2


async def test_a_run_that_cannot_start_is_logged_and_skipped(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    broken = graph("broken", store_config=StoreConfigSpec(required_keys=["tenant"]))  # its trigger sets no store
    await h.eng.upsert_graph(broken, secrets=None)
    await h.eng.upsert_graph(graph("fine"), secrets=None)
    with caplog.at_level(logging.ERROR, logger="server.cron"):
        assert len(await h.at(ts(2025, 1, 6, 10, 1))) == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "cron-ns/broken" in record.getMessage()
    assert "missing required store keys: ['tenant']" in record.getMessage()
    assert h.sched.failed == 1
    caplog.clear()
    assert await h.tick() == []  # the due time is recorded: no retry loop
    await h.restart()
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]
    assert h.runs("broken") == 0
    assert len(await h.at(ts(2025, 1, 6, 10, 2))) == 1  # the scheduler lives on
    assert h.runs("fine") == 2


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        (CronSpec(expression="61 * * * *"), "invalid cron expression '61 * * * *'"),
        (CronSpec(expression="* * * *"), "invalid cron expression '* * * *'"),
        (CronSpec(expression="* * * * *", timezone="Mars/Olympus"), "unknown timezone 'Mars/Olympus'"),
    ],
)
async def test_invalid_trigger_is_refused_at_upsert(h: Harness, trigger: CronSpec, message: str) -> None:
    with pytest.raises(GraphValidationError) as info:
        await h.eng.upsert_graph(graph(triggers=[trigger]), None)
    assert message in str(info.value)
    assert h.sched.triggers() == []


async def test_the_task_sleeps_until_the_next_due_time() -> None:
    clock = FakeClock(T0)
    h = Harness(clock, sleep=clock.sleep)
    await h.up()
    try:
        await h.eng.upsert_graph(graph(triggers=[CronSpec(expression="*/5 * * * *")]), None)  # next: 10:05
        # One sleep until the due time, not a poll every second.
        await assert_eventually(lambda: bool(clock.sleeps) and clock.sleeps[-1] == pytest.approx(4 * 60 + 30))
        clock.set(ts(2025, 1, 6, 10, 4, 59))
        await asyncio.sleep(0.01)
        assert h.runs() == 0
        clock.set(ts(2025, 1, 6, 10, 5))
        await assert_eventually(lambda: h.runs() == 1)
        # A graph saved meanwhile with an earlier due time wakes the task, which re-aims.
        await h.eng.upsert_graph(graph("soon", triggers=[CronSpec(expression="6 10 * * *")]), None)
        await assert_eventually(lambda: clock.sleeps[-1] == pytest.approx(60))
        clock.set(ts(2025, 1, 6, 10, 6))
        await assert_eventually(lambda: h.runs("soon") == 1)
        clock.set(ts(2025, 1, 6, 10, 10))
        await assert_eventually(lambda: h.runs() == 2)
        assert len(clock.sleeps) < 10
    finally:
        await h.down()


async def test_long_sleeps_are_capped_and_stop_is_idempotent() -> None:
    clock = FakeClock(T0)
    store = InMemoryStore()
    engine = await new_engine(store)
    cron = CronScheduler(engine, clock=clock, sleep=clock.sleep, max_sleep_s=120)
    engine.on_graph_saved = cron.reload
    await cron.start()
    await cron.start()  # no second task
    await engine.upsert_graph(graph(triggers=[CronSpec(expression="0 0 1 1 *")]), None)  # yearly
    await assert_eventually(lambda: bool(clock.sleeps) and clock.sleeps[-1] == 120)
    await cron.stop()
    await cron.stop()
    await engine.stop()
